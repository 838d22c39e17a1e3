"""Reachability behind NAT with py-libp2p's circuit relay v2, DCUtR and AutoNAT (0.8.1), made safe.

What runs on every node (``NatTraversal``):
- the circuit relay STOP handler (accept connections relayed to us) and, on relay-capable nodes, the
  HOP service with limits (:data:`RELAY_LIMITS`): a relay serves reservations and circuits;
- an AutoNAT server that really dials back, and, off loopback, a client that asks up to three
  peers to dial it back and so learns whether it is public or private;
- when private: reservations on up to two relays among its peers, and ``/p2p-circuit`` addresses
  announced (identify, signed peer record, peer exchange);
- DCUtR: a relayed connection is upgraded to a direct one where the NATs allow (a direct dial, or a
  TCP hole punch), and the relayed one is then closed.

What 0.8.1 gets wrong, measured (see docs/security.md), and what this module does about it:
- its AutoNAT server dials back with ``host.connect``, which returns at once for a connected peer:
  every requester is told "reachable". :class:`DialBackAutoNAT` opens a new connection instead;
- a reservation is granted to the peer id named *in the request*: one peer could fill every slot
  under made-up ids. :class:`GuardedRelayProtocol` grants it to the connection's peer only;
- ``host.connect`` drops circuit addresses: :meth:`NatTraversal.dial` dials them through the relay;
- a transport with the CLIENT role reserves a slot before every dial: dialing uses a STOP-only one;
- the relay's and DCUtR's stream handlers are registered behind our stream guard (slots, boundary).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.host.autonat import AutoNATService
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import issue_and_cache_local_record
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.relay.circuit_v2.utils import write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service

from .addresses import remote_ip
from .framing import close_quietly
from .host import is_relayed, peerstore_addrs
from .identity import short_name
from .ratelimit import RateLimitedLog
from .reachability import (
    circuit_addr,
    dial_back_claims,
    judge,
    relay_dial_addr,
    relays_to_reserve,
    reservation_refusal,
)
from .streams import StreamGuard, StreamLimits

log = logging.getLogger(__name__)

#: what a relay grants: circuits live an hour and carry 256 MiB at most; 128 reservations in all
#: (one per connected peer: the connection limit bounds them too), 16 circuits per reserving peer
RELAY_LIMITS = RelayLimits(duration=3600, data=256 * 1024 * 1024, max_circuit_conns=16, max_reservations=128,
                           reservation_ttl=600)
#: circuit streams carry a relayed connection for its whole life: no deadline, bounded counts
HOP_LIMITS = StreamLimits(per_peer=8, total=256, deadline_s=None)
STOP_LIMITS = StreamLimits(per_peer=32, total=256, deadline_s=None)
# per peer: its own session, ours running concurrently (both ends drive one), and a retry; a single slot
# refused the peer's next attempt while a stalled one held it for its 30 s (seen under load)
DCUTR_LIMITS = StreamLimits(per_peer=3, total=16, deadline_s=30.0)
#: a peer still reached only through relays this long after DCUtR spent its attempts on it gets new ones
DCUTR_RETRY_S = 30.0
AUTONAT_LIMITS = StreamLimits(per_peer=1, total=4, deadline_s=20.0)
DIAL_BACK_TIMEOUT_S = 4.0
AUTONAT_QUERY_TIMEOUT_S = 15.0
AUTONAT_SERVERS = 3
AUTONAT_RECHECK_S = 300.0
CIRCUIT_DIAL_TIMEOUT_S = 15.0
DIRECT_FIRST_S = 3.0
DIRECT_FAILED_S = 60.0   # a peer whose direct addresses just failed is dialed through its relays at once
DIRECT_FAILED_MAX = 1024
MAX_RELAYED_TRIED = 2
RESERVATION_REFRESH_S = RELAY_LIMITS.reservation_ttl / 2  # renewed by us, under our timeouts
RESERVE_TIMEOUT_S = 15.0


class DialBackAutoNAT(AutoNATService):
    """AutoNAT whose server dials the requester back on a *new* connection (0.8.1 reuses the existing
    one and so answers "reachable" to everyone), closing it once the dial succeeded."""

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:  # type: ignore[override]
        net = self.host.get_network()
        for raw in addrs[:4]:
            try:
                addr = multiaddr.Multiaddr(raw)
            except Exception:  # noqa: BLE001 - the requester's bytes
                continue
            if "/p2p-circuit" in str(addr):
                continue
            conn = None
            try:
                with trio.fail_after(DIAL_BACK_TIMEOUT_S):
                    conn = await net.dial_addr(addr, peer_id)
                return bytes(raw)
            except Exception:  # noqa: BLE001 - unreachable: that is the answer
                continue
            finally:
                if conn is not None:
                    await close_quietly(conn)
        return None


class GuardedRelayProtocol(CircuitV2Protocol):
    """Circuit relay v2 whose reservations belong to the connection's peer, whatever the request says,
    are bounded per address and subnet (`reachability.reservation_refusal`), and end when the reserving
    peer is no longer connected. py-libp2p 0.8.1 counted a disconnected peer's reservation against its
    limit until the reservation's TTL ran out: 127 reservations by made-up identities kept an honest
    newcomer behind NAT out (RESOURCE_LIMIT_EXCEEDED) after the sybils had gone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserved_from: dict[ID, str | None] = {}  # reserving peer -> the address it reserved from
        self.refused_by_address = 0
        self._rlog = RateLimitedLog(log, interval=10.0)

    def drop_disconnected(self) -> int:
        """End the reservations of peers no longer connected; how many ended."""
        rm = self.resource_manager
        gone = [p for p in list(rm._reservations) if not rm._is_peer_connected(p)]
        for p in gone:
            rm._reservations.pop(p, None)
        for p in [p for p in self.reserved_from if p not in rm._reservations]:
            del self.reserved_from[p]
        return len(gone)

    async def _handle_reserve(self, stream: Any, msg: Any) -> None:
        peer = stream.muxed_conn.peer_id
        msg.peer.id = peer.to_bytes()
        self.drop_disconnected()
        if not self.resource_manager.has_reservation(peer):
            ip = remote_ip(stream)
            why = reservation_refusal(ip, [self.reserved_from.get(p) for p in self.resource_manager._reservations])
            if why is not None:
                self.refused_by_address += 1
                self._rlog.log(logging.INFO, f"reserve:{ip}", "relay reservation refused to %s: %s",
                               short_name(peer.to_base58()), why)
                await write_delimited_msg(stream, HopMessage(
                    type=HopMessage.STATUS, status=to_proto_status(StatusCode.RESOURCE_LIMIT_EXCEEDED)))
                return
            self.reserved_from[peer] = ip
        await super()._handle_reserve(stream, msg)


def punch_again(relayed_since: dict[Any, float], attempts: dict[Any, int], now: float,
                retry_s: float = DCUTR_RETRY_S, most: int = MAX_HOLE_PUNCH_ATTEMPTS) -> list[Any]:
    """Peers whose hole punch budget DCUtR spent and that are still reached through relays only, for
    `retry_s` since: their budget is reset so DCUtR tries again. py-libp2p resets it only when the peer
    disconnects; a pair whose three attempts failed (seen in the NAT test on a loaded machine: each
    DCUtR stream over the relayed connection was refused within the same minute) otherwise stays
    relayed for as long as it stays connected."""
    return [pid for pid, since in relayed_since.items() if attempts.get(pid, 0) >= most and now - since >= retry_s]


class NatTraversal:
    """AutoNAT, relay reservations, circuit dials and DCUtR for one host. ``active`` is False on a node
    that listens on loopback only (nobody outside could reach it anyway): then only the STOP handler
    and the AutoNAT server run."""

    def __init__(self, host: IHost, streams: StreamGuard, *, relay_service: bool | None, active: bool,
                 on_addrs_changed: Callable[[], None] | None = None) -> None:
        """`relay_service`: True relays from the start, False never, None once AutoNAT finds this node
        public (as kubo does: a node others can dial helps those who cannot)."""
        self.host = host
        self.streams = streams
        self.relay_service = bool(relay_service)
        self._relay_when_public = relay_service is None
        self.active = active
        self.on_addrs_changed = on_addrs_changed
        self.protocol = GuardedRelayProtocol(host, limits=RELAY_LIMITS, allow_hop=self.relay_service)
        # reserving needs the CLIENT role; dialing must not have it (it would reserve before each dial)
        self._reserver = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
        self._dialer = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP))
        self.autonat = DialBackAutoNAT(host, serve=False)  # type: ignore[arg-type]
        self.dcutr = DCUtRProtocol(host, dial_timeout=3)
        self.verdicts: dict[str, tuple[bool, float]] = {}
        self.circuits: dict[str, str] = {}        # relay peer id -> our address through it
        self.refused: dict[str, float] = {}       # relay peer id -> when it refused or failed a reservation
        self._reserved_at: dict[str, float] = {}  # relay peer id -> when our reservation was last granted
        self._direct_failed: dict[ID, float] = {}  # peer -> when a dial of its direct addresses last failed
        self.stats = {"upgraded": 0, "relayed_dials": 0, "reservations": 0, "dial_backs_asked": 0, "punch_retries": 0}
        self._status = "unknown" if active else "local"
        self._nursery: trio.Nursery | None = None
        original = host.get_addrs

        def get_addrs() -> list[multiaddr.Multiaddr]:
            """Listen addresses plus relayed ones: identify and the signed peer record announce both."""
            return [*original(), *(multiaddr.Multiaddr(c) for c in self.circuits.values())]

        self._listen_addrs = original
        host.get_addrs = get_addrs  # type: ignore[method-assign]

    # --- views -----------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """local (loopback only) / unknown / public / private."""
        return self._status

    def view(self) -> dict[str, Any]:
        return {"status": self._status, "relayed": bool(self.circuits), "relayed_addrs": sorted(self.circuits.values()),
                "relay_service": self.relay_service, "dial_backs": len(self.verdicts),
                "reachable_by": sum(1 for ok, _ in self.verdicts.values() if ok),
                "reservations_held": self._reservations_held(),
                "reservations_refused_by_address": self.protocol.refused_by_address, **self.stats}

    def _reservations_held(self) -> int:
        try:
            if self.relay_service:
                self.protocol.drop_disconnected()
            return len(self.protocol.resource_manager._reservations) if self.relay_service else 0
        except Exception:  # noqa: BLE001 - another libp2p version
            return 0

    # --- running ---------------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.protocol):
            await self.protocol.event_started.wait()
            # re-register libp2p's handlers behind the guard (the service registered them bare)
            if self.relay_service:
                self.streams.register(HOP_PROTOCOL_ID, self.protocol._handle_hop_stream, HOP_LIMITS)
            self.streams.register(STOP_PROTOCOL_ID, self.protocol._handle_stop_stream, STOP_LIMITS)
            self.streams.register(AUTONAT_PROTOCOL_ID, self.autonat.handle_stream, AUTONAT_LIMITS)
            if not self.active:
                task_status.started()
                await trio.sleep_forever()
            async with background_trio_service(self.dcutr):
                await self.dcutr.event_started.wait()
                self.streams.register(DCUTR_PROTOCOL_ID, self.dcutr._handle_dcutr_stream, DCUTR_LIMITS)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._autonat_loop, name="nat-autonat")
                    nursery.start_soon(self._reservation_loop, name="nat-reservations")
                    nursery.start_soon(self._prune_relayed_loop, name="nat-prune")
                    task_status.started()
                    await trio.sleep_forever()

    async def dial(self, info: PeerInfo, timeout: float = 10.0) -> None:
        """Connect to a peer: its direct addresses first, then through a relay (``/p2p-circuit``)."""
        direct = [a for a in info.addrs if "/p2p-circuit" not in str(a)]
        relayed = [a for a in info.addrs if "/p2p-circuit" in str(a)][:MAX_RELAYED_TRIED]
        error: BaseException | None = None
        # one deadline for the whole dial: peer exchange hands out many candidates, dialed one by one
        failed_at = self._direct_failed.get(info.peer_id)
        # a peer first heard of with its direct addresses only (before it held a relay slot) was dialed
        # there for the whole timeout; once its relayed ones arrive, they go first for a while
        skip_direct = bool(relayed) and failed_at is not None and trio.current_time() - failed_at < DIRECT_FAILED_S
        with trio.fail_after(timeout + (CIRCUIT_DIAL_TIMEOUT_S * len(relayed) if relayed else 0)):
            if (direct or not relayed) and not skip_direct:
                try:  # a peer that has relayed addresses is probably behind NAT: its direct ones get less time
                    await self._connect_direct(info.peer_id, direct, DIRECT_FIRST_S if relayed else timeout)
                    return
                except Exception as e:  # noqa: BLE001 - try the relays next
                    error = e
            for a in relayed:
                try:
                    with trio.fail_after(CIRCUIT_DIAL_TIMEOUT_S):
                        await self._dialer.dial(multiaddr.Multiaddr(f"{a}/p2p/{info.peer_id.to_base58()}"))
                    self.stats["relayed_dials"] += 1
                    return
                except Exception as e:  # noqa: BLE001 - one relay's address failing: the next is tried, the last error raised
                    error = e
            if skip_direct and direct:  # its relays failed (a made-up one, say): the direct ones get their try
                try:
                    await self._connect_direct(info.peer_id, direct, timeout)
                    return
                except Exception as e:  # noqa: BLE001 - every address failed: the last error is raised
                    error = e
        raise error if error is not None else ConnectionError("no address to dial")

    async def _connect_direct(self, pid: ID, direct: list[multiaddr.Multiaddr], limit: float) -> None:
        """Connect to `pid` at its direct addresses within `limit`, and remember a failure (`dial`)."""
        started = trio.current_time()
        try:
            with trio.fail_after(limit):
                await self.host.connect(PeerInfo(pid, direct))
        except trio.Cancelled:
            # stopped by the caller (peers.py stops a direct-only dial when a relayed address arrives):
            # as good as failed once it had the time a peer with relays gets
            if trio.current_time() - started >= DIRECT_FIRST_S:
                self._note_direct_failed(pid)
            raise
        except Exception:
            self._note_direct_failed(pid)
            raise
        self._direct_failed.pop(pid, None)

    def _note_direct_failed(self, pid: ID) -> None:
        self._direct_failed.pop(pid, None)
        self._direct_failed[pid] = trio.current_time()
        while len(self._direct_failed) > DIRECT_FAILED_MAX:  # the oldest first (insertion order)
            del self._direct_failed[next(iter(self._direct_failed))]

    # --- AutoNAT ---------------------------------------------------------------------------------

    def _direct_peers_with(self, protocol: str) -> list[ID]:
        out = []
        ps = self.host.get_peerstore()
        for pid, conns in list(self.host.get_network().connections.items()):
            if not any(not is_relayed(c) for c in conns):
                continue
            try:
                if protocol in (ps.get_protocols(pid) or []):
                    out.append(pid)
            except Exception:  # noqa: BLE001 - not identified yet
                continue
        return out

    def _observed(self) -> list[str]:
        mgr = getattr(self.host, "_observed_addr_manager", None)
        try:
            return [str(a) for a in mgr.addrs(min_observers=1)] if mgr is not None else []
        except Exception:  # noqa: BLE001 - private API of 0.8.1
            return []

    async def _autonat_loop(self) -> None:
        while True:
            servers = self._direct_peers_with(AUTONAT_PROTOCOL_ID)
            random.shuffle(servers)
            claims = dial_back_claims([str(a) for a in self._listen_addrs()], self._observed())
            # the servers are asked side by side: behind NAT each dial-back waits out its timeout
            # (DIAL_BACK_TIMEOUT_S), and asked one after another two of them took 8 s to say so
            async with trio.open_nursery() as nursery:
                for pid in servers[:AUTONAT_SERVERS]:
                    nursery.start_soon(self._ask_dial_back, pid, claims)
            status = judge(self.verdicts, time.time())
            if status != self._status:
                reached = sum(1 for ok, _ in self.verdicts.values() if ok)
                log.info("reachability: %s (%d of %d peer(s) could dial back %s)", status, reached,
                         len(self.verdicts), ", ".join(claims) or "-")
                self._status = status
                if status == "public" and self._relay_when_public and not self.relay_service:
                    await self._offer_relay_service()
            # no peer to ask yet (the first round runs before the bootstrap peers are identified): look
            # again in a second, not five; the verdict came 9 s after start where one dial-back takes 4
            await trio.sleep(AUTONAT_RECHECK_S if status != "unknown" else 5.0 if servers else 1.0)

    async def _ask_dial_back(self, pid: ID, claims: list[str]) -> None:
        """One AutoNAT server's verdict on `claims`, into `verdicts` (a failed request is no verdict)."""
        try:
            self.stats["dial_backs_asked"] += 1
            code, _ = await self.autonat.query_server(
                pid, [multiaddr.Multiaddr(c).to_bytes() for c in claims], timeout=AUTONAT_QUERY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - the peer left or cannot serve: ask another later
            log.debug("dial-back request to %s failed: %r", pid, e)
            return
        if code in (AutoNATMessage.OK, AutoNATMessage.E_DIAL_ERROR):
            self.verdicts[pid.to_base58()] = (code == AutoNATMessage.OK, time.time())

    async def _offer_relay_service(self) -> None:
        """Start relaying for peers behind NAT (with RELAY_LIMITS) and tell connected peers at once."""
        self.protocol.allow_hop = True
        self.streams.register(HOP_PROTOCOL_ID, self.protocol._handle_hop_stream, HOP_LIMITS)
        self.relay_service = True
        log.info("public: offering relay service to peers behind NAT (at most %d reservations)",
                 RELAY_LIMITS.max_reservations)
        await self._push_identify()

    async def _push_identify(self) -> None:
        """Tell connected peers our protocols and addresses now (identify push), best effort."""
        push = getattr(self.host, "_push_identify_to_all_peers", None)
        if push is None:
            return
        with trio.move_on_after(10):
            try:
                await push()
            except Exception as e:  # noqa: BLE001 - peers learn it at their next identify anyway
                log.debug("identify push failed: %r", e)

    # --- reservations ----------------------------------------------------------------------------

    async def _reservation_loop(self) -> None:
        while True:
            await trio.sleep(2.0)
            connected = self.host.get_network().connections
            changed = False
            for rid in list(self.circuits):
                if ID.from_base58(rid) not in connected:
                    log.info("relay %s left: no longer reachable through it", short_name(rid))
                    del self.circuits[rid]
                    self._reserved_at.pop(rid, None)
                    changed = True
            # a reservation lapses unless renewed (a relay that restarted or forgot us would leave a dead
            # address announced): renew each one ourselves, under our own timeout
            for rid, at in list(self._reserved_at.items()):
                if rid in self.circuits and time.time() - at >= RESERVATION_REFRESH_S:
                    if not await self._reserve(rid):
                        self.circuits.pop(rid, None)
                        self._reserved_at.pop(rid, None)
                        changed = True
            offering = [p.to_base58() for p in self._direct_peers_with(HOP_PROTOCOL_ID)]
            for rid in relays_to_reserve(self._status, offering, self.circuits, self.refused, time.time(),
                                         seed=self.host.get_id().to_base58()):
                changed |= await self._reserve(rid)
            if changed:
                self._announce()
                await self._push_identify()

    async def _reserve(self, rid: str) -> bool:
        pid = ID.from_base58(rid)
        stream = None
        ok = False
        try:
            with trio.fail_after(RESERVE_TIMEOUT_S):
                stream = await self.host.new_stream(pid, [HOP_PROTOCOL_ID])
                assert self._nursery is not None
                ok = await self._reserver.reserve(stream, pid, self._nursery)
        except Exception as e:  # noqa: BLE001 - refused or gone: try another relay
            log.debug("reservation on %s failed: %r", rid, e)
        finally:
            if stream is not None:
                await close_quietly(stream)
        addr = relay_dial_addr(peerstore_addrs(self.host, pid), self._connected_ip(pid)) if ok else None
        if not ok or addr is None:
            self.refused[rid] = time.time()
            log.info("relay %s refused a reservation; trying others", short_name(rid))
            return False
        renewal = rid in self.circuits
        self.circuits[rid] = circuit_addr(addr, rid, self.host.get_id().to_base58())
        self._reserved_at[rid] = time.time()
        if not renewal:
            self.stats["reservations"] += 1
            log.info("reachable through relay %s: %s", short_name(rid), self.circuits[rid])
        return True

    def _connected_ip(self, pid: ID) -> str | None:
        """The IP of our direct connection to a peer (its remote address), when there is one."""
        for c in self.host.get_network().connections.get(pid, []) or []:
            if is_relayed(c):
                continue
            try:
                for a in c.get_transport_addresses():
                    ip = next((a.value_for_protocol(p) for p in ("ip4", "ip6")
                               if p in [x.name for x in a.protocols()]), None)
                    if ip:
                        return ip
            except Exception:  # noqa: BLE001 - a connection being torn down
                continue
        return None

    def _announce(self) -> None:
        """Re-sign the peer record at once (a cached one would carry the old addresses) and tell peers."""
        try:
            issue_and_cache_local_record(self.host)
        except Exception as e:  # noqa: BLE001 - a record not re-signed now is re-signed at the next change
            log.debug("peer record not re-signed: %r", e)
        if self.on_addrs_changed is not None:
            self.on_addrs_changed()

    # --- DCUtR -----------------------------------------------------------------------------------

    async def _prune_relayed_loop(self) -> None:
        """Once a peer is reached directly, close the relayed connection (it costs the relay), and count
        the upgrade: also when DCUtR or the peer closed the relayed one first. A peer that stays
        relayed-only after DCUtR spent its attempts gets new ones 30 s later (`punch_again`)."""
        relayed_only: dict[ID, float] = {}  # peer -> since when it is reached through relays only
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            conns_by_peer = dict(self.host.get_network().connections.items())
            for pid in list(relayed_only):
                if pid not in conns_by_peer:
                    relayed_only.pop(pid)  # gone: nothing was upgraded
            for pid, conns in conns_by_peer.items():
                relayed = [c for c in conns if is_relayed(c)]
                direct = len(conns) - len(relayed)
                if relayed and not direct:
                    relayed_only.setdefault(pid, now)
                    continue
                if direct and pid in relayed_only:
                    relayed_only.pop(pid)
                    self.stats["upgraded"] += 1
                    log.info("peer %s: direct connection established (was relayed)", short_name(pid.to_base58()))
                for c in relayed if direct else []:
                    await close_quietly(c)
            attempts = getattr(self.dcutr, "_hole_punch_attempts", None)  # py-libp2p 0.8.1 (net/libp2p_compat/pin.py)
            if isinstance(attempts, dict):
                for pid in punch_again(relayed_only, attempts, now):
                    attempts.pop(pid, None)
                    relayed_only[pid] = now
                    self.stats["punch_retries"] += 1
                    log.info("peer %s: still relayed after %d hole punch attempts; trying again",
                             short_name(pid.to_base58()), MAX_HOLE_PUNCH_ATTEMPTS)
