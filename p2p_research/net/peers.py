"""Peer management: bootstrap with backoff, peer exchange, connection tracking, latency.

Peer exchange (``/p2p-research/peers/1.0.0``): the dialer sends one frame
``{"addrs": [its own bootstrap addresses]}``; the responder answers ``{"peers": [<= 32 bootstrap
addresses of its other connected peers]}``. A swarm joined through one bootstrap node thus grows
into a mesh instead of staying a star: a node below ``target_peers`` connections asks its peers
and dials the addresses it learns.

Against eclipse (a node whose every connection ends at one attacker): addresses are what an attacker
cannot make for free, so the candidates a node keeps and the connections it dials count per /24
(IPv4) or /48 (IPv6) subnet (net/addresses.py; 127.0.0.1 is exempt). A subnet holds at most
``CANDIDATES_PER_SUBNET`` of the candidates, so one peer's answers cannot push every other address out,
and this node dials a candidate only while fewer than ``CONNECTIONS_PER_SUBNET`` of its connections are
in that subnet, least represented subnets first: an attacker that hands out a hundred addresses of its
own /24 gets two of this node's connections, not all of them. Relayed addresses count in their relay's
subnet and DNS names in their domain (``addr_subnet``): identities behind one relay, or names under one
wildcard domain, cost no address, so each holds no more candidates than a subnet.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from .addresses import EXEMPT, key_of, remote_ip, subnet_of
from .dialerror import causes, explain
from .framing import FrameError, frame, pack, read_exact, read_frame, reset_quietly, unpack_small
from .host import full_addrs, is_relayed, parse_peer_addr, peerstore_addrs
from .identity import short_name
from .ratelimit import RateLimitedLog
from .streams import StreamGuard, StreamLimits

log = logging.getLogger(__name__)

PEERS_PROTOCOL = TProtocol("/p2p-research/peers/1.0.0")
#: libp2p's own ping reports whole milliseconds (0 on loopback); ours times one 8-byte echo.
PING_PROTOCOL = TProtocol("/p2p-research/ping/1.0.0")
MAX_EXCHANGE = 32
ADDRS_PER_PEER = 3  # in an exchange: a direct address and up to two relayed ones
REMEMBERED_MAX = 16  # peers kept across restarts (daemon/known_peers.py)
REMEMBERED_RETRIES_S = (5.0, 20.0, 60.0, 0.0)  # a remembered peer is dialed four times at most per run
ABOUT_KEYS = ("swarm", "protocol", "budget", "role")
DIAL_TIMEOUT = 10.0
EXCHANGE_TIMEOUT = 5.0
BACKOFF_START = 1.0
BACKOFF_CAP = 30.0
POLL_INTERVAL = 1.0
DISCOVERY_INTERVAL = 3.0
PING_INTERVAL = 10.0
#: own addresses sent in an exchange (the receiver keeps as many)
OWN_ADDRS_SENT = 8
CANDIDATES_PER_SUBNET = 16
DIALS_AT_ONCE = 4  # exchanged peers dialed at once (_dial_candidates)
CONNECTIONS_PER_SUBNET = 2


@dataclass
class PeerState:
    """What this node knows about one connected peer."""

    peer_id: str
    name: str
    addrs: list[str]
    direction: str  # "inbound" | "outbound" | "unknown"
    connected_since: float  # unix seconds (observed to within POLL_INTERVAL)
    latency_ms: float | None = None
    agent_version: str | None = None
    messages_received: int = 0  # first deliveries of gossip messages forwarded by this peer
    bootstrap: bool = False
    about: dict[str, str] | None = None  # its swarm, protocol and budget, from the peer exchange
    connection: str = "direct"  # "direct" | "relayed" (through a circuit relay)


def own_exchange_addrs(addrs: list[str]) -> list[str]:
    """The addresses a node tells a peer it asks: its relayed ones first (behind NAT they are the only
    ones that reach it, and a host listening on every interface has more direct ones than fit), then
    the direct ones, OWN_ADDRS_SENT in all."""
    relayed = [a for a in addrs if "/p2p-circuit" in a]
    return (relayed + [a for a in addrs if "/p2p-circuit" not in a])[:OWN_ADDRS_SENT]


def exchange_addrs(addrs: list[str]) -> list[str]:
    """What a peer exchange hands out for one peer: its first direct address and its relayed ones
    (a peer behind NAT is reachable only through those), at most ADDRS_PER_PEER."""
    direct = [a for a in addrs if "/p2p-circuit" not in a][:1]
    relayed = [a for a in addrs if "/p2p-circuit" in a]
    return (direct + relayed)[:ADDRS_PER_PEER]


@dataclass
class _Candidate:
    info: PeerInfo
    failures: int = 0
    next_try: float = 0.0
    subnet: str | None = None   # of the address it is dialed at first (None: exempt)


def addr_subnet(addr: Any, exempt: frozenset[str] = EXEMPT) -> str | None:
    """The group a candidate's address counts in for CANDIDATES_PER_SUBNET: the subnet its IP is in; for a
    relayed address, the relay's subnet ("relay:..."); for a DNS name, its last two labels ("dns:...");
    None where exempt (127.0.0.1, a local simulation's, also as a relay). Relayed and DNS addresses cost
    an attacker no address of their own (identities behind one relay, names under one wildcard domain), so
    each relay and each domain holds no more candidates than one subnet."""
    text = str(addr)
    if "/p2p-circuit" in text:
        try:
            relay = addr_subnet(multiaddr.Multiaddr(text.split("/p2p-circuit", 1)[0]), exempt)
        except Exception:  # noqa: BLE001 - a malformed relay part: one group for all of them
            return "relay:?"
        return None if relay is None else f"relay:{relay}"
    for proto in ("ip4", "ip6"):
        try:
            ip = addr.value_for_protocol(proto)
        except Exception:  # noqa: BLE001 - the multiaddr has no such part
            continue
        if ip:
            key = key_of(str(ip), exempt)
            return None if key is None else subnet_of(key)
    for proto in ("dns", "dns4", "dns6", "dnsaddr"):
        try:
            name = addr.value_for_protocol(proto)
        except Exception:  # noqa: BLE001 - the multiaddr has no such part
            continue
        if name:
            return "dns:" + ".".join(str(name).lower().rstrip(".").split(".")[-2:])
    return text


def conn_subnet(conn: Any, exempt: frozenset[str] = EXEMPT) -> str | None:
    """The group a live connection counts in for CONNECTIONS_PER_SUBNET, as `addr_subnet` groups
    candidates: the subnet of the address its other end is at; for a relayed connection, its relay's
    ("relay:..."), so identities behind one relay hold no more of this node's connections than one
    subnet (relayed connections were not counted at all); None where exempt."""
    if is_relayed(conn):
        try:
            circuits = [a for a in conn.get_transport_addresses() if "/p2p-circuit" in str(a)]
        except Exception:  # noqa: BLE001 - a connection being torn down
            circuits = []
        return addr_subnet(circuits[0], exempt) if circuits else "relay:?"
    ip = remote_ip(getattr(conn, "muxed_conn", conn))
    key = key_of(ip, exempt)
    return None if key is None else subnet_of(key)


@dataclass
class PeerManager:
    host: IHost
    bootstrap: list[PeerInfo]
    target_peers: int = 6
    _peers: dict[str, PeerState] = field(default_factory=dict)
    _announced: dict[str, list[str]] = field(default_factory=dict)  # peer -> its self-announced addrs
    _candidates: dict[str, _Candidate] = field(default_factory=dict)
    _asked: set[str] = field(default_factory=set)
    _msg_counts: dict[str, int] = field(default_factory=dict)
    _px_backoff: dict[str, float] = field(default_factory=dict)  # peer -> trio time before asking again
    subnet_refusals: int = 0  # exchanged addresses not kept: their subnet had CANDIDATES_PER_SUBNET already
    streams: StreamGuard | None = None  # registers our handlers behind slots, deadlines and a boundary
    is_banned: Any = field(default=lambda peer: False)  # peer id -> bool: not dialed while banned
    about: dict[str, str] = field(default_factory=dict)  # this node's swarm, protocol, budget (sent in exchanges)
    _abouts: dict[str, dict[str, str]] = field(default_factory=dict)
    #: connects to a peer (direct addresses, then relayed ones); the network sets the NAT-aware one
    dialer: Any = None
    #: peers this node knew from its last run (daemon/known_peers.py): dialed at start, whatever the
    #: bootstrap list holds, so a bootstrap list that is all an attacker's does not decide alone who this
    #: node meets again
    remembered: list[PeerInfo] = field(default_factory=list)
    #: addresses no subnet limit counts (127.0.0.1, and the machines of one's own cluster: net/addresses.py)
    exempt: frozenset[str] = EXEMPT

    def __post_init__(self) -> None:
        self.my_id = self.host.get_id()
        self._bootstrap_ids = {b.peer_id.to_base58() for b in self.bootstrap}
        self._rlog = RateLimitedLog(log, interval=30.0)
        self._changed = trio.Event()
        self._dialing: dict[str, str | None] = {}  # exchanged peers being dialed -> the subnet each counts in
        self._dial_scopes: dict[str, trio.CancelScope] = {}  # their dials, while only direct addresses are tried
        self._dialed_since_round = False

    # --- state -----------------------------------------------------------------------------------

    def peers(self) -> list[PeerState]:
        return sorted(self._peers.values(), key=lambda p: p.connected_since)

    def connected_ids(self) -> list[str]:
        return [p.to_base58() for p in self.host.get_connected_peers()]

    def note_message_from(self, peer_id: str) -> None:
        self._msg_counts[peer_id] = self._msg_counts.get(peer_id, 0) + 1
        st = self._peers.get(peer_id)
        if st is not None:
            st.messages_received += 1

    def _addrs_of(self, pid: ID) -> list[str]:
        s = pid.to_base58()
        return list(self._announced.get(s) or peerstore_addrs(self.host, pid))

    def _refresh(self) -> None:
        conns: dict[ID, Any] = dict(self.host.get_network().connections)
        now = time.time()
        current = {pid.to_base58(): pid for pid in conns}
        for gone in set(self._peers) - set(current):
            log.info("peer %s left (%s)", short_name(gone), gone)
            del self._peers[gone]
            self._asked.discard(gone)
        for s, pid in current.items():
            st = self._peers.get(s)
            if st is None:
                direction = "unknown"
                try:
                    direction = str(conns[pid][0].direction.name).lower()
                except Exception:  # noqa: BLE001 - a connection closing while it is read: direction unknown
                    pass
                st = PeerState(
                    peer_id=s, name=short_name(s), addrs=[], direction=direction, connected_since=now,
                    messages_received=self._msg_counts.get(s, 0), bootstrap=s in self._bootstrap_ids,
                )  # fmt: skip
                st.about = self._abouts.get(s)
                self._peers[s] = st
                log.info("peer connected: %s (%s, %s)", st.name, s, direction)
            st.addrs = self._addrs_of(pid)
            st.connection = "direct" if any(not is_relayed(c) for c in conns[pid]) else "relayed"

    # --- loops -----------------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """All peer-management tasks; cancel the enclosing scope to stop them."""
        if self.streams is None:
            self.streams = StreamGuard.standalone(self.host)
        self.streams.register(PEERS_PROTOCOL, self._handle_exchange, StreamLimits(per_peer=1, total=32,
                                                                                  deadline_s=EXCHANGE_TIMEOUT + 2))
        self.streams.register(PING_PROTOCOL, self._handle_ping, StreamLimits(per_peer=1, total=64, deadline_s=7.0))
        async with trio.open_nursery() as nursery:
            for b in self.bootstrap:
                nursery.start_soon(self._keep_bootstrap, b, name=f"bootstrap {b.peer_id}")
            if self.remembered:
                log.info("dialing %d peer(s) remembered from the last run", len(self.remembered))
            for r in self.remembered:
                nursery.start_soon(self._reach_remembered, r, name=f"remembered {r.peer_id}")
            nursery.start_soon(self._poll_loop, name="peers-poll")
            nursery.start_soon(self._discovery_loop, name="peers-discovery")
            nursery.start_soon(self._ping_loop, name="peers-ping")
            task_status.started()

    def role_of(self, peer: str) -> str:
        """What a peer said it is in the peer exchange ("relay", "research" or "")."""
        return (self._abouts.get(peer) or {}).get("role", "")

    def readvertise(self) -> None:
        """This node's addresses changed (e.g. a relayed one): tell every peer in the next exchange."""
        self._asked.clear()
        self._changed.set()

    async def _dial(self, info: PeerInfo) -> None:
        if self.is_banned(info.peer_id.to_base58()):
            raise ConnectionRefusedError("the peer is banned for a while (it kept sending rejected gossip)")
        if self.dialer is not None:  # relayed addresses need the circuit transport
            await self.dialer(info, DIAL_TIMEOUT)
            return
        with trio.fail_after(DIAL_TIMEOUT):
            await self.host.connect(info)

    async def _reach_remembered(self, info: PeerInfo) -> None:
        """Dial a peer remembered from the last run a few times (it may be gone for good, unlike a
        bootstrap peer a user named), whether or not the bootstrap peers already filled the target."""
        for wait in REMEMBERED_RETRIES_S:
            if info.peer_id in self.host.get_network().connections:
                return
            try:
                await self._dial(info)
                log.info("connected to remembered peer %s", short_name(info.peer_id.to_base58()))
                self._changed.set()
                return
            except Exception as e:  # noqa: BLE001 - any failure: retry later, then forget it for this run
                log.debug("dialing remembered peer %s failed: %r", info.peer_id, e)
            await trio.sleep(wait)

    def good_peers(self, limit: int = REMEMBERED_MAX) -> list[str]:
        """Peers worth dialing again after a restart, longest connected first: they completed a peer
        exchange and said they are of this node's swarm (or relays), are not banned, and have an address
        to dial; at most CONNECTIONS_PER_SUBNET of one subnet (or relay, or domain), so one subnet cannot
        fill the list. As full multiaddrs (/p2p/<id> last)."""
        mine = self.about.get("swarm")
        out: list[str] = []
        groups: Counter[str] = Counter()
        for st in self.peers():
            about = st.about or {}
            if not about or self.is_banned(st.peer_id):
                continue
            if mine and about.get("role") != "relay" and about.get("swarm") != mine:
                continue
            # in bootstrap form (/p2p/<id> last): announced ones were parsed as such, the peerstore's written so
            addr = next((a for a in st.addrs if "/p2p-circuit" not in a), st.addrs[0] if st.addrs else None)
            if addr is None:
                continue
            group = addr_subnet(multiaddr.Multiaddr(addr), self.exempt)
            if group is not None and groups[group] >= CONNECTIONS_PER_SUBNET:
                continue
            if group is not None:
                groups[group] += 1
            out.append(addr)
            if len(out) >= limit:
                break
        return out

    async def _keep_bootstrap(self, info: PeerInfo) -> None:
        """Dial a bootstrap peer with exponential backoff; redial whenever the connection drops."""
        backoff = BACKOFF_START
        pid = info.peer_id
        while True:
            if pid in self.host.get_network().connections:
                backoff = BACKOFF_START
                await trio.sleep(POLL_INTERVAL * 2)
                continue
            # libp2p refuses for 60 s to dial a peer whose addresses all failed once (its negative
            # cache): a bootstrap peer that restarted was reached a minute late. This loop's own
            # backoff paces the retries of the few peers a user named, so the cache is cleared for them.
            unblock = getattr(self.host.get_network(), "unblock_peer", None)
            if unblock is not None:
                unblock(pid)
            try:
                await self._dial(info)
                log.info("connected to bootstrap peer %s", pid)
                backoff = BACKOFF_START
                self._changed.set()
            except Exception as e:  # noqa: BLE001 - TooSlowError, SwarmException, OSError...: retry later
                why = explain(e)
                log.debug("dialing bootstrap peer %s failed: %r (causes: %s)", pid, e,
                          " <- ".join(repr(c)[:200] for c in causes(e)))
                where = f"{info.addrs[0]}/p2p/{pid}" if info.addrs else str(pid)
                if why.startswith("peer id mismatch"):
                    self._rlog.log(logging.WARNING, f"boot:{pid}", "bootstrap %s: %s; retrying in %.0f s",
                                   where, why, backoff)
                else:
                    self._rlog.log(logging.WARNING, f"boot:{pid}", "bootstrap %s unreachable: %s; retrying in %.0f s",
                                   where, why, backoff)
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_CAP)

    async def _poll_loop(self) -> None:
        while True:
            self._refresh()
            await trio.sleep(POLL_INTERVAL)

    async def _discovery_loop(self) -> None:
        """Ask newly connected peers (and all peers while below target) for more peers; dial them.

        While below target and nothing new turns up, the interval backs off from
        DISCOVERY_INTERVAL to BACKOFF_CAP, so a small swarm is not polled every few seconds forever.
        """
        interval = DISCOVERY_INTERVAL
        async with trio.open_nursery() as dials:  # candidates' dials run beside the rounds
            while True:
                with trio.move_on_after(interval):
                    await self._changed.wait()
                self._changed = trio.Event()
                self._refresh()
                before = (len(self._candidates), len(self.host.get_network().connections))
                below = len(self._peers) < self.target_peers
                now = trio.current_time()
                to_ask = [
                    p for p in list(self._peers)
                    if (below or p not in self._asked) and self._px_backoff.get(p, 0) <= now
                ]  # fmt: skip
                random.shuffle(to_ask)
                for s in to_ask:
                    await self._exchange_with(ID.from_base58(s))
                    if len(self.host.get_network().connections) >= self.target_peers:
                        break
                self._dial_candidates(dials)
                after = (len(self._candidates), len(self.host.get_network().connections))
                found, self._dialed_since_round = after != before or self._dialed_since_round, False
                interval = DISCOVERY_INTERVAL if found else min(interval * 2, BACKOFF_CAP)

    async def _exchange_with(self, pid: ID) -> None:
        s = pid.to_base58()
        self._asked.add(s)
        stream = None
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT):
                stream = await self.host.new_stream(pid, [PEERS_PROTOCOL])
                await stream.write(frame(pack({"addrs": own_exchange_addrs(full_addrs(self.host)),
                                               "about": self.about})))
                reply = unpack_small(await read_frame(stream, 64 * 1024))
            if isinstance(reply, dict):
                self._note_about(s, reply.get("about"))
            addrs = reply.get("peers") if isinstance(reply, dict) else None
            if not isinstance(addrs, list):
                raise FrameError("reply without a peer list")
            for a in addrs[:MAX_EXCHANGE * ADDRS_PER_PEER]:
                self._add_candidate(a)
            with trio.move_on_after(1):
                await stream.close()
        except Exception as e:  # noqa: BLE001 - peer gone, old version without the protocol, malformed reply
            self._px_backoff[s] = trio.current_time() + BACKOFF_CAP
            self._rlog.log(logging.DEBUG, f"px:{s}", "peer exchange with %s failed: %r", s, e)
            if stream is not None:
                await reset_quietly(stream)

    def _add_candidate(self, addr: Any) -> None:
        if not isinstance(addr, str):
            return
        try:
            info = parse_peer_addr(addr)
        except ValueError:
            return
        s = info.peer_id.to_base58()
        if info.peer_id == self.my_id:
            return
        if s not in self._candidates:
            subnet = addr_subnet(info.addrs[0], self.exempt)
            same = [(c.failures, k) for k, c in self._candidates.items() if subnet is not None and c.subnet == subnet]
            if len(same) >= CANDIDATES_PER_SUBNET:
                # a full subnet makes room only by dropping a candidate that failed to answer: made-up
                # addresses of a subnet must not keep its honest peers out for as long as they are retried
                failures, worst = max(same)
                if failures == 0:
                    self.subnet_refusals += 1
                    return
                del self._candidates[worst]
            self._candidates[s] = _Candidate(info, subnet=subnet)
            if len(self._candidates) > 1000:
                self._candidates.pop(next(iter(self._candidates)))
        else:  # a peer's addresses arrive one string each: direct ones and relayed ones, up to 8
            known = self._candidates[s].info
            if len(known.addrs) < 8 and str(info.addrs[0]) not in {str(a) for a in known.addrs}:
                known.addrs.append(info.addrs[0])
                scope = self._dial_scopes.get(s)
                if scope is not None and "/p2p-circuit" in str(info.addrs[0]):
                    # its dial tries direct addresses only (a home behind NAT, heard of before it held
                    # a relay slot) and would wait out DIAL_TIMEOUT: stop it, dial again with this one
                    scope.cancel()

    def _connections_by_subnet(self) -> Counter[str]:
        by_subnet: Counter[str] = Counter()
        for conn_list in list(self.host.get_network().connections.values()):
            subnets = {conn_subnet(c, self.exempt) for c in conn_list[:1]} - {None}
            by_subnet.update(subnets)  # type: ignore[arg-type]
        return by_subnet

    def _dial_candidates(self, nursery: trio.Nursery) -> None:
        """Start dials of exchanged peers in `nursery`, the least represented subnets first, at most
        DIALS_AT_ONCE in flight, and return. Awaited one after another, an address that does not answer
        (a home's direct address behind NAT) held every other candidate and the next exchanges for its
        whole DIAL_TIMEOUT: two homes behind NAT met 15-20 s after both held a relay slot (the NAT
        test). A dial in flight counts for its subnet and towards the target, as a connection does."""
        conns = self.host.get_network().connections
        now = trio.current_time()
        by_subnet = self._connections_by_subnet()
        by_subnet.update(sub for sub in self._dialing.values() if sub is not None)
        items = list(self._candidates.items())
        random.shuffle(items)
        items.sort(key=lambda kv: by_subnet[kv[1].subnet] if kv[1].subnet is not None else 0)  # least represented first
        for s, c in items:
            if len(self._dialing) >= DIALS_AT_ONCE or len(conns) + len(self._dialing) >= self.target_peers:
                return
            if s in self._dialing or c.info.peer_id in conns or c.next_try > now:
                continue
            if c.subnet is not None:
                if by_subnet[c.subnet] >= CONNECTIONS_PER_SUBNET:
                    continue
                by_subnet[c.subnet] += 1
            self._dialing[s] = c.subnet
            nursery.start_soon(self._dial_candidate, s, c, name=f"dial {short_name(s)}")

    async def _dial_candidate(self, s: str, c: _Candidate) -> None:
        tried = {str(a) for a in c.info.addrs}
        scope = trio.CancelScope()
        if not any("/p2p-circuit" in a for a in tried):
            self._dial_scopes[s] = scope
        try:
            with scope:
                await self._dial(PeerInfo(c.info.peer_id, list(c.info.addrs)))
            if scope.cancelled_caught:  # it learnt a relayed address meanwhile (_add_candidate): at once again
                c.next_try = trio.current_time()
                self._changed.set()
                return
            c.failures = 0
            log.info("connected to exchanged peer %s", short_name(s))
            self._dialed_since_round = True  # a new peer: the next round comes soon, as one that dialed it
            self._changed.set()
        except Exception as e:  # noqa: BLE001 - dialing an exchanged peer: any failure backs off and retries
            c.failures += 1
            c.next_try = trio.current_time() + min(BACKOFF_CAP * 4, BACKOFF_START * 2**c.failures)
            self._rlog.log(logging.DEBUG, f"cand:{s}", "dial of exchanged peer %s (%s) failed: %r", s,
                           ", ".join(sorted(tried)), e)
            if c.failures > 8 and self._candidates.get(s) is c:
                del self._candidates[s]
            elif {str(a) for a in c.info.addrs} - tried:  # it learnt an address (a relayed one) meanwhile
                c.next_try = trio.current_time()  # at most 8 times: a candidate keeps 8 addresses
                self._changed.set()
        finally:
            self._dialing.pop(s, None)
            self._dial_scopes.pop(s, None)

    def _note_about(self, peer: str, value: Any) -> None:
        """A peer's swarm, protocol and budget as it says them (peer input: strings, bounded), and one
        line, once, when its protocol differs from ours: its results will not count here."""
        if not isinstance(value, dict):
            return
        about = {k: v for k, v in value.items() if k in ABOUT_KEYS and isinstance(v, str) and len(v) <= 80
                 and v.isprintable()}
        if not about:
            return
        first = peer not in self._abouts
        if len(self._abouts) >= 1024 and first:
            self._abouts.pop(next(iter(self._abouts)))
        self._abouts[peer] = about
        st = self._peers.get(peer)
        if st is not None:
            st.about = about
        mine, theirs = self.about.get("protocol"), about.get("protocol")
        if first and mine and theirs and theirs != mine:
            log.info("peer %s (%s) runs another protocol (budget %s; ours %s): its results do not count here",
                     short_name(peer), peer, about.get("budget", "?"), self.about.get("budget", "?"))

    async def _handle_exchange(self, stream: INetStream) -> None:
        try:
            remote = stream.muxed_conn.peer_id
            with trio.fail_after(EXCHANGE_TIMEOUT):
                req = unpack_small(await read_frame(stream, 64 * 1024))
                if isinstance(req, dict):
                    self._note_about(remote.to_base58(), req.get("about"))
                own = req.get("addrs") if isinstance(req, dict) else None
                if isinstance(own, list):
                    good = []
                    for a in own[:OWN_ADDRS_SENT]:
                        try:
                            if isinstance(a, str) and parse_peer_addr(a).peer_id == remote:
                                good.append(a)
                        except ValueError:
                            pass
                    if good:
                        self._announced[remote.to_base58()] = good
                        for a in exchange_addrs(good):
                            self._add_candidate(a)
                out: list[str] = []
                for pid in list(self.host.get_network().connections):
                    if pid == remote:
                        continue
                    out += exchange_addrs(self._addrs_of(pid))
                    if len(out) >= MAX_EXCHANGE * ADDRS_PER_PEER:
                        break
                await stream.write(frame(pack({"peers": out, "about": self.about})))
            with trio.move_on_after(1):
                await stream.close()
        except Exception as e:  # noqa: BLE001 - a peer's exchange stream: whatever it does ends that stream only
            log.debug("peer exchange request failed: %r", e)
            await reset_quietly(stream)

    async def ping(self, pid: ID, timeout: float = 5.0) -> float:
        """Round-trip time in milliseconds of one 8-byte echo on an already negotiated stream."""
        stream = None
        try:
            with trio.fail_after(timeout):
                stream = await self.host.new_stream(pid, [PING_PROTOCOL])
                payload = random.randbytes(8)
                t0 = time.perf_counter()
                await stream.write(payload)
                echo = await read_exact(stream, 8)
                rtt = (time.perf_counter() - t0) * 1000.0
                if echo != payload:
                    raise FrameError("ping echo mismatch")
            with trio.move_on_after(1):
                await stream.close()
            stream = None
            return rtt
        finally:
            if stream is not None:
                await reset_quietly(stream)

    async def _handle_ping(self, stream: INetStream) -> None:
        try:
            with trio.fail_after(5):
                await stream.write(await read_exact(stream, 8))
            with trio.move_on_after(1):
                await stream.close()
        except Exception:  # noqa: BLE001 - a peer's ping stream: whatever it does ends that stream only
            await reset_quietly(stream)

    async def _ping_loop(self) -> None:
        """Measure latency with libp2p ping: new peers within ~1 s, then every PING_INTERVAL."""
        last: dict[str, float] = {}
        while True:
            now = trio.current_time()
            for s in list(self._peers):
                st = self._peers.get(s)
                if st is None or now - last.get(s, -PING_INTERVAL) < PING_INTERVAL:
                    continue
                last[s] = now
                try:
                    st.latency_ms = await self.ping(ID.from_base58(s))
                except Exception as e:  # noqa: BLE001 - a ping that fails leaves the latency unknown
                    self._rlog.log(logging.DEBUG, f"ping:{s}", "ping %s failed: %r", s, e)
            for s in set(last) - set(self._peers):
                del last[s]
            await trio.sleep(POLL_INTERVAL)
