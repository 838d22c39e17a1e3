"""Guards for faults in py-libp2p 0.8.1 that a newer upstream release addresses; PyPI serves only 0.8.1.

1. ``multistream``: multistream-select reads every message with a varint length prefix and no cap
   (``MultiselectCommunicator.read`` -> ``read_delim`` -> ``read_varint_prefixed_bytes``). The first
   negotiation (choosing the security protocol) runs on the raw TCP connection, so a stranger with
   no key at all can send ``/multistream/1.0.0\\n`` and a length of 2^33 and have the node buffer
   what follows (measured: +200 MB in 0.3 s from one connection), or a length of 2^40 and raise a
   raw ``MemoryError`` out of the read. The same read negotiates every inbound stream. The guard
   replaces the method: a message is at most :data:`MAX_MULTISTREAM_MESSAGE` bytes and one
   negotiation reads at most :data:`MAX_MULTISTREAM_MESSAGES` messages (libp2p answers ``na`` to
   every unknown proposal until its 10 s timeout); a violation is the ``MultiselectCommunicatorError``
   libp2p already handles by resetting that connection or stream.
2. ``pubsub teardown``: blacklisting a peer (our bans do, `net/peerscore.py`) starts
   ``Pubsub._teardown_if_connected``, which awaits ``stream.reset()`` and then ``del self.peers[peer]``.
   If the peer's connection closes meanwhile, libp2p's own dead-peer handler has already removed it,
   the ``del`` raises ``KeyError`` inside pubsub's service manager, and that takes the host (and the
   node) down: a peer that gets itself banned and disconnects at the right moment crashed the daemon
   (seen once in `test_hostile_peers.py` under a full test run). The guard replaces the method with one
   that removes the entry only if it is still there.
3. ``gossip_control``: gossipsub's IHAVE and IWANT carry any number of message ids (only the 1 MiB RPC
   cap bounds them: about 25,000 ids). For an IHAVE, libp2p decodes every id, looks each up in
   the seen cache and asks back for all it lacks in one IWANT; for an IWANT, it looks each up in the
   message cache. libp2p rate-limits IHAVE and IWANT RPCs per peer (10 a second per topic), not their
   length. The guard keeps the first :data:`MAX_IHAVE_IDS` ids of an IHAVE and :data:`MAX_IWANT_IDS`
   of an IWANT (go-libp2p's ``GossipSubMaxIHaveLength`` is 5,000) and counts what it drops; an honest
   node's IHAVE holds the ids of a few heartbeats' messages (tens here).
4. ``inbound_per_address``: the swarm accepts inbound connections up to one cap for the whole node
   (``Swarm._inbound_limiter``), whoever makes them. Identities are free, so one host could take them
   all. The guard wraps ``Swarm.upgrade_inbound_raw_conn``: a connection from an address that holds
   :data:`INBOUND_PER_ADDRESS` live inbound connections (or handshakes in progress) already, or from a
   /24 (/48) that holds :data:`INBOUND_PER_SUBNET`, is closed before any handshake (net/addresses.py
   has the rule, and why 127.0.0.1 is exempt), and counted. It counts the swarm's live connections at
   each new one rather than holding a slot for its handler: libp2p's inbound handler lives until the
   swarm stops, whatever becomes of its connection. For the same reason libp2p's own cap counted every
   inbound connection a node had *ever* accepted: its handler takes a token of ``_inbound_limiter``
   (``max_connections``, 300) and gives it back only when the swarm stops, so a daemon that had
   accepted 300 connections over its life refused every further one, with none open (measured with a
   cap of 3: connections 4, 5 and 6 refused, none live). The guard lifts that limiter and holds the same
   cap over the *live* inbound connections and handshakes (``inbound_refused_full`` counts refusals).
5. ``publish_per_rpc``: pubsub starts a task for every message of an RPC (``push_msg``, through its
   service manager: about 1.7 ms of CPU each here) and checks its signature, however many messages an
   RPC carries (about 4,800 small ones fit in the 1 MiB cap). Measured against a daemon: RPCs of 4,800
   messages with made-up signatures cost it 15.8 CPU-s per two, and libp2p drops them before any
   validator, so no score or ban follows; ten such RPCs of signed junk kept its `status` waiting 15 s.
   The guard keeps the first :data:`MAX_PUBLISH_PER_RPC` messages of an RPC and drops the rest before
   any task starts (counted; logged once every 30 s per peer). It hooks the one call pubsub's read loop
   makes with the parsed RPC before it walks the messages (``maybe_consume_signed_record``, the
   sender's signed record). An honest peer's RPC carries one published message, or the few an IWANT
   asked for.
6. ``bad_signature``: pubsub checks each message's signature before any topic validator and drops a
   bad one with a debug line, so a connection could send them without end and never be scored or
   banned (about 0.04 CPU-s of the node per MiB). The guard tells the pubsub's owner which connection
   forwarded it (``Pubsub._p2p_on_bad_signature(forwarder, msg)``, set by net/gossip.py, which scores the
   connection as for any rejected message): ``push_msg`` notes its forwarder in a context variable and
   the wrapped ``signature_validator`` reads it when a signature fails.
7. ``yamux_write_timeout``: a yamux connection writes every frame under one lock, the read loop's own
   replies (window updates, pings, resets) included, and a frame waits as long as the peer leaves its
   socket unread. Two nodes that both write more than the kernel's buffers hold (a catch-up each way,
   pubsub's replay of recent messages to a new peer) end with both read loops waiting to write: neither
   reads again, and the connection is wedged for good. A peer can do the same on purpose by reading
   nothing. Whatever then writes to that peer waits with it, and libp2p resets a stream it gave up on
   inside a shielded scope (``BasicHost.new_stream``'s cleanup), which no timeout of ours reaches: a
   DHT lookup bounded at 3 s held a daemon's research for 70 s, until the node was stopped (seen in the
   two-machine cluster test under load; both nodes' task dumps showed every writer of that connection
   in ``Yamux._write_frame``). The guard replaces that method: a frame waits for the lock as long as
   the connection keeps writing frames, and when none has been written for :data:`YAMUX_WRITE_TIMEOUT_S`
   (30 s; go-yamux's ``ConnectionWriteTimeout``, the same safety valve, is 10 s) while it waits, or the frame
   being written takes over :data:`YAMUX_FRAME_SEND_S`, the connection is closed without another
   write: every waiting writer fails, and the peer is dialled afresh as any lost peer is (counted:
   ``yamux_write_timeouts``). 10 s, as go-yamux, closed 325-358 connections in a 35-daemon run on
   two cores (the first of them on any frame that waited 10 s, its queue included), and nodes missed
   the best baseline after the settle; 30 s closed 123 (docs/libp2p.md has the figures).
8. ``yamux_whole_writes``: ``YamuxStream.write`` sends a message as frames of at most 64 KiB, and
   holds the stream's lock only while it builds each frame: between two frames of one message another
   task writing to the same stream sends its own. Pubsub writes to a peer's one stream from several
   tasks (its read loop's replies, the heartbeat, publishes), each RPC as one ``write``, so an RPC over
   64 KiB beside another write reached the peer interleaved and undecodable (seen: the node's IWANT of
   5,000 ids, about 110 KB, in `test_hostile_peers.py`; the peer's py-libp2p failed to parse it three
   times in a row beside a loaded suite). go-yamux writes a message under one lock. The guard holds a
   lock of the stream's own for the whole of each ``write``.
9. QUIC peer-id spoofing: our hosts speak TCP only (``make_host`` builds no QUIC transport; a test
   checks that the host's transports are TCP alone), so the fault cannot reach them.

:func:`apply` installs the guard once per process, only on libp2p :data:`EXPECTED_LIBP2P` and only when
what it replaces exists (otherwise a warning, nothing changed), like :mod:`.rpc_cost`.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
from typing import Any

import trio

from ..addresses import EXEMPT, AddressSlots, remote_ip
from ..ratelimit import RateLimitedLog
from . import counters
from .pin import EXPECTED_LIBP2P, libp2p_version

log = logging.getLogger(__name__)
_rlog = RateLimitedLog(log, interval=30.0)

#: longest protocol id line we read (libp2p's own ids are under 64 bytes; an `ls` reply is never read
#: by our hosts)
MAX_MULTISTREAM_MESSAGE = 1024
MAX_MULTISTREAM_MESSAGES = 32

#: message ids one IHAVE or IWANT may make this node look at (go-libp2p: GossipSubMaxIHaveLength = 5000)
MAX_IHAVE_IDS = 5000
MAX_IWANT_IDS = 5000

#: inbound connections one address, and one subnet, may hold (guard 4): a household or an office
#: behind one address runs a few nodes; a host with a hundred identities gets eight
INBOUND_PER_ADDRESS = 8
INBOUND_PER_SUBNET = 16

#: published messages one RPC may carry (guard 5)
MAX_PUBLISH_PER_RPC = 256
#: how long a connection may write no frame while one waits before it counts as wedged (guard 7). go-yamux's
#: ConnectionWriteTimeout is 10 s; 35 daemons on two cores stall that long without being wedged (docs/libp2p.md).
#: `P2P_YAMUX_WRITE_TIMEOUT_S` (seconds, or `off`) sets it for a process and the daemons it starts, for
#: A/B measurements (docs/libp2p.md).
YAMUX_WRITE_TIMEOUT_S = 30.0
#: longest one frame (at most a 256 KiB window) may take to be written once it holds the connection
YAMUX_FRAME_SEND_S = 60.0


def _yamux_write_timeout_from_env() -> float | None:
    raw = os.environ.get("P2P_YAMUX_WRITE_TIMEOUT_S", "").strip().lower()
    if not raw:
        return YAMUX_WRITE_TIMEOUT_S
    if raw == "off":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        log.warning("P2P_YAMUX_WRITE_TIMEOUT_S=%r is neither a number of seconds nor 'off': %g s it is", raw,
                    YAMUX_WRITE_TIMEOUT_S)
        return YAMUX_WRITE_TIMEOUT_S
    return value

_applied: dict[str, bool] = {}


class _InboundRefused(Exception):
    """Raised out of the upgrade of a refused connection: libp2p's handler then closes it and returns,
    giving its own inbound token back (a normal return would keep the handler, and the token, until the
    swarm stops)."""


def _inbound_ips(swarm: Any) -> list[str | None]:
    """The addresses of the swarm's live inbound connections (relayed ones are left out: they carry
    the relay's address)."""
    from ..host import is_relayed  # net/host.py imports this package: not at module level

    out: list[str | None] = []
    for conns in list(swarm.connections.values()):
        for conn in conns if isinstance(conns, list) else [conns]:
            if "inbound" not in str(getattr(conn, "direction", "")).lower() or is_relayed(conn):
                continue
            out.append(remote_ip(getattr(conn, "muxed_conn", conn)))
    return out


def _live_inbound_cap_factory(original: Any) -> Any:
    def init(self: Any) -> None:
        """libp2p's connection management, with its inbound limiter lifted: its cap is kept and held over
        the live inbound connections instead (guard 4, `_inbound_per_address_factory`)."""
        original(self)
        limiter = getattr(self, "_inbound_limiter", None)
        if limiter is not None and math.isfinite(limiter.total_tokens):
            self._p2p_inbound_cap = int(limiter.total_tokens)
            self._inbound_limiter = trio.CapacityLimiter(math.inf)

    init._p2p_original = original  # type: ignore[attr-defined]
    return init


def _inbound_per_address_factory(original: Any) -> Any:
    async def upgrade(self: Any, raw_conn: Any, maddr: Any) -> Any:
        """libp2p's upgrade of an inbound connection whose address and subnet have room, while the node
        holds fewer live inbound connections than its cap (guard 4): the live inbound connections and
        the handshakes in progress are counted, so a slot is free again as soon as its connection closes."""
        ip = remote_ip(raw_conn)
        pending = self.__dict__.get("_p2p_handshakes")
        if pending is None:
            pending = self._p2p_handshakes = []
        live = [*_inbound_ips(self), *pending]
        cap = self.__dict__.get("_p2p_inbound_cap")
        if cap is not None and len(live) >= cap:
            counters.current().inbound_refused_full += 1
            _rlog.log(logging.INFO, "inbound:full", "refused an inbound connection from %s: the node holds its %d "
                      "inbound connections", ip, cap)
            raise _InboundRefused(f"the node holds its {cap} inbound connections")
        exempt = self.__dict__.get("_p2p_exempt", EXEMPT)  # the network's `exempt_addresses`, set per swarm
        why = AddressSlots.holding(live, INBOUND_PER_ADDRESS, INBOUND_PER_SUBNET, exempt).refusal(ip)
        if why is not None:
            counters.current().inbound_refused_by_address += 1
            _rlog.log(logging.INFO, f"inbound:{ip}", "refused an inbound connection from %s: %s", ip, why)
            raise _InboundRefused(why)
        pending.append(ip)
        try:
            return await original(self, raw_conn, maddr)
        finally:
            pending.remove(ip)

    upgrade._p2p_original = original  # type: ignore[attr-defined]
    return upgrade


#: (pubsub, forwarder) of the push_msg under way, for the signature check it makes (guard 6)
_pushing: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar("p2p_pubsub_push", default=None)


def _noting_push_factory(original: Any) -> Any:
    async def push_msg(self: Any, msg_forwarder: Any, msg: Any) -> None:
        """libp2p's push_msg, with its pubsub and forwarder noted for the signature check (guard 6)."""
        token = _pushing.set((self, msg_forwarder))
        try:
            return await original(self, msg_forwarder, msg)
        finally:
            _pushing.reset(token)

    push_msg._p2p_original = original  # type: ignore[attr-defined]
    return push_msg


def _scored_signature_factory(original: Any) -> Any:
    def signature_validator(msg: Any) -> bool:
        """libp2p's signature check; a failure is reported to the pubsub's owner with its forwarder."""
        ok = original(msg)
        noted = None if ok else _pushing.get()
        on_bad = getattr(noted[0], "_p2p_on_bad_signature", None) if noted is not None else None
        if on_bad is not None:
            try:
                on_bad(noted[1], msg)
            except Exception as e:  # noqa: BLE001 - a report must not break libp2p's push
                log.debug("bad-signature report failed: %r", e)
        return ok

    signature_validator._p2p_original = original  # type: ignore[attr-defined]
    return signature_validator


def _bounded_publish_factory(utils: Any) -> Any:
    def consume(rpc: Any, host: Any, peer_id: Any) -> bool:
        """libp2p's check of the sender's signed record, on an RPC cut to MAX_PUBLISH_PER_RPC published
        messages first (guard 5). The check itself is looked up in `libp2p.pubsub.utils` at each call,
        so rpc_cost's cache applies whichever of the two was installed first."""
        publish = getattr(rpc, "publish", None)
        if publish is not None and len(publish) > MAX_PUBLISH_PER_RPC:
            n = len(publish)
            del publish[MAX_PUBLISH_PER_RPC:]
            counters.current().publish_dropped += n - MAX_PUBLISH_PER_RPC
            _rlog.log(logging.INFO, f"publish:{peer_id}", "an RPC of %s carried %d published messages: the first "
                      "%d kept", peer_id, n, MAX_PUBLISH_PER_RPC)
        return utils.maybe_consume_signed_record(rpc, host, peer_id)

    consume._p2p_guard = "publish_per_rpc"  # type: ignore[attr-defined]
    return consume


def _bounded_control_factory(original: Any, limit: int) -> Any:
    async def handle(self: Any, msg: Any, sender_peer_id: Any) -> None:
        """libp2p's handler on at most `limit` of the control message's ids (guards 3)."""
        n = len(msg.messageIDs)
        if n > limit:
            counters.current().control_ids_dropped += n - limit
            kept = type(msg)()
            kept.CopyFrom(msg)
            del kept.messageIDs[limit:]
            msg = kept
        await original(self, msg, sender_peer_id)

    handle._p2p_original = original  # type: ignore[attr-defined]
    return handle


async def _safe_teardown_if_connected(self: Any, peer_id: Any) -> None:
    """``Pubsub._teardown_if_connected`` without the race: close their stream and forget them, whether or
    not another task forgot them while the reset was awaited."""
    stream = self.peers.get(peer_id)
    if stream is not None:
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - as upstream: the stream may be gone already
            pass
        if self.peers.get(peer_id) is stream:
            del self.peers[peer_id]
    self._forget_all_subscriptions(peer_id)


def _guarded_read_factory(original: Any) -> Any:
    from libp2p.exceptions import ParseError
    from libp2p.io.exceptions import IOException
    from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError
    from libp2p.utils.varint import read_varint_prefixed_bytes_limited

    async def read(self: Any) -> str:
        """multistream-select message, at most MAX_MULTISTREAM_MESSAGE bytes, MAX_MULTISTREAM_MESSAGES
        per communicator (one negotiation)."""
        count = getattr(self, "_p2p_reads", 0) + 1
        self._p2p_reads = count
        if count > MAX_MULTISTREAM_MESSAGES:
            counters.current().multistream_refused += 1
            raise MultiselectCommunicatorError("too many multistream-select messages")
        try:
            data = await read_varint_prefixed_bytes_limited(self.read_writer, MAX_MULTISTREAM_MESSAGE)
        except (ParseError, IOException) as e:
            counters.current().multistream_refused += 1
            raise MultiselectCommunicatorError(f"multistream-select read refused: {e}") from e
        if not data.endswith(b"\n"):
            raise MultiselectCommunicatorError("multistream-select message is not newline-terminated")
        try:
            return data[:-1].decode()
        except UnicodeDecodeError as e:
            raise MultiselectCommunicatorError("multistream-select message is not UTF-8") from e

    read._p2p_original = original  # type: ignore[attr-defined]
    return read


def _bounded_write_frame_factory(original: Any) -> Any:
    from libp2p.stream_muxer.exceptions import MuxedConnUnavailable

    async def close_wedged(self: Any, why: str) -> None:
        if getattr(self, "_p2p_write_timed_out", False):
            return
        self._p2p_write_timed_out = True
        owner = getattr(self, "_p2p_counters", None)  # stamped when the connection was made
        (owner if owner is not None else counters.current()).yamux_write_timeouts += 1
        peer = str(getattr(self, "peer_id", "?"))
        _rlog.log(logging.WARNING, f"yamux-write:{peer}", "closing the connection to %s: %s (the peer reads nothing)",
                  peer[:16], why)
        try:  # no GO_AWAY: it would wait behind the same full buffers
            await self.secured_conn.close()
        except Exception as e:  # noqa: BLE001 - closing a dead connection may fail in any way; it is gone either way
            log.debug("closing a wedged yamux connection: %r", e)

    async def _write_frame(self: Any, data: bytes) -> None:
        """``Yamux._write_frame`` (one frame under the connection's write lock) that gives up on a
        connection that makes no progress, and closes it then.

        A frame waits for the lock as long as other frames of the connection keep being written: a slow
        reader is not a dead one (35 daemons on two cores wait many seconds for each other, and closing
        on the first frame that queued 10 s closed hundreds of connections in a 5-minute run). When
        no frame has been written for YAMUX_WRITE_TIMEOUT_S while this one waits, the connection is
        wedged. The frame being written is given YAMUX_FRAME_SEND_S (it is at most one 256 KiB window);
        cut short, it leaves the stream of frames unreadable, so that closes the connection too. Each
        deadline is a scope of its own, so it holds inside a caller's shield."""
        lock = self._write_lock
        while True:
            with trio.move_on_after(YAMUX_WRITE_TIMEOUT_S) as waiting:
                await lock.acquire()
            if not waiting.cancelled_caught:
                break
            if trio.current_time() - getattr(self, "_p2p_written_at", -math.inf) >= YAMUX_WRITE_TIMEOUT_S:
                await close_wedged(self, f"no frame was written for {YAMUX_WRITE_TIMEOUT_S:.0f} s")
                raise MuxedConnUnavailable(f"no yamux frame was written for {YAMUX_WRITE_TIMEOUT_S:.0f} s")
        try:
            with trio.move_on_after(YAMUX_FRAME_SEND_S) as sending:
                await self.secured_conn.write(data)
            if sending.cancelled_caught:
                await close_wedged(self, f"a frame took over {YAMUX_FRAME_SEND_S:.0f} s to be written")
                raise MuxedConnUnavailable(f"a yamux frame took over {YAMUX_FRAME_SEND_S:.0f} s to be written")
            self._p2p_written_at = trio.current_time()
        finally:
            lock.release()
        await trio.lowlevel.checkpoint()

    _write_frame._p2p_original = original  # type: ignore[attr-defined]
    return _write_frame


def _install_yamux_write_timeout() -> None:
    global YAMUX_WRITE_TIMEOUT_S
    from libp2p.stream_muxer.yamux.yamux import Yamux

    if not callable(getattr(Yamux, "_write_frame", None)) or "_write_lock" not in Yamux.__init__.__code__.co_names:
        raise AttributeError("Yamux._write_frame or its _write_lock is missing")
    timeout = _yamux_write_timeout_from_env()
    if timeout is None:
        raise RuntimeError("turned off by P2P_YAMUX_WRITE_TIMEOUT_S=off")
    YAMUX_WRITE_TIMEOUT_S = timeout
    if not hasattr(Yamux._write_frame, "_p2p_original"):
        Yamux._write_frame = _bounded_write_frame_factory(Yamux._write_frame)
        Yamux.__init__ = _counted_init_factory(Yamux.__init__)


def _counted_init_factory(original: Any) -> Any:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        """``Yamux.__init__``, and the counters of the host it is made for: a connection is made in its
        host's task (a dial or a listener's upgrade), but a wedge may be found in any task that writes to
        it, identify's among them, which libp2p starts as trio system tasks, outside every host's
        context (where `counters.current()` is UNATTRIBUTED: a loaded test once lost its count there)."""
        original(self, *args, **kwargs)
        self._p2p_counters = counters.current()

    init._p2p_original = original  # type: ignore[attr-defined]
    return init


def _whole_write_factory(original: Any) -> Any:
    async def write(self: Any, data: bytes) -> None:
        """``YamuxStream.write``, one message at a time per stream: its frames go out back to back."""
        lock = getattr(self, "_p2p_whole_write_lock", None)
        if lock is None:  # made on first use; no checkpoint between the look and the set
            lock = self._p2p_whole_write_lock = trio.Lock()
        async with lock:
            await original(self, data)

    write._p2p_original = original  # type: ignore[attr-defined]
    return write


def _install_yamux_whole_writes() -> None:
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    if not hasattr(YamuxStream.write, "_p2p_original"):
        YamuxStream.write = _whole_write_factory(YamuxStream.write)


def _install_multistream() -> None:
    from libp2p.protocol_muxer import multiselect_communicator as mc

    mc.MultiselectCommunicator.read = _guarded_read_factory(mc.MultiselectCommunicator.read)


def _install_pubsub_teardown() -> None:
    from libp2p.pubsub.pubsub import Pubsub

    if not hasattr(Pubsub, "_teardown_if_connected") or not hasattr(Pubsub, "_forget_all_subscriptions"):
        raise AttributeError("Pubsub._teardown_if_connected or _forget_all_subscriptions is missing")
    Pubsub._teardown_if_connected = _safe_teardown_if_connected


def _install_gossip_control() -> None:
    from libp2p.pubsub.gossipsub import GossipSub

    for name, limit in (("handle_ihave", MAX_IHAVE_IDS), ("handle_iwant", MAX_IWANT_IDS)):
        setattr(GossipSub, name, _bounded_control_factory(getattr(GossipSub, name), limit))


def _install_publish_per_rpc() -> None:
    import libp2p.pubsub.pubsub as pubsub_module
    import libp2p.pubsub.utils as pubsub_utils

    if not callable(getattr(pubsub_utils, "maybe_consume_signed_record", None)) or \
            not callable(getattr(pubsub_module, "maybe_consume_signed_record", None)):
        raise AttributeError("maybe_consume_signed_record is missing")
    pubsub_module.maybe_consume_signed_record = _bounded_publish_factory(pubsub_utils)


def _install_bad_signature() -> None:
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.pubsub.pubsub import Pubsub

    if not callable(getattr(pubsub_module, "signature_validator", None)):
        raise AttributeError("libp2p.pubsub.pubsub.signature_validator is missing")
    Pubsub.push_msg = _noting_push_factory(Pubsub.push_msg)
    pubsub_module.signature_validator = _scored_signature_factory(pubsub_module.signature_validator)


def _install_inbound_per_address() -> None:
    from libp2p.network.swarm import Swarm

    if not callable(getattr(Swarm, "_init_connection_management", None)):
        raise AttributeError("Swarm._init_connection_management is missing")
    Swarm.upgrade_inbound_raw_conn = _inbound_per_address_factory(Swarm.upgrade_inbound_raw_conn)
    Swarm._init_connection_management = _live_inbound_cap_factory(Swarm._init_connection_management)


#: (name in the registry, what the warning calls it, how it is installed), in the order they go in
_INSTALLS = (
    ("multistream", "multistream-select guard", _install_multistream),
    ("pubsub_teardown", "pubsub teardown guard", _install_pubsub_teardown),
    ("gossip_control", "gossip control guard", _install_gossip_control),
    ("publish_per_rpc", "published messages per RPC guard", _install_publish_per_rpc),
    ("bad_signature", "bad-signature scoring", _install_bad_signature),
    ("inbound_per_address", "inbound connections per address guard", _install_inbound_per_address),
    ("yamux_write_timeout", "yamux write timeout", _install_yamux_write_timeout),
    ("yamux_whole_writes", "whole yamux writes", _install_yamux_whole_writes),
)


def apply() -> dict[str, bool]:
    """Install the guards (idempotent); returns which are active."""
    if "multistream" in _applied:
        return dict(_applied)
    version = libp2p_version()
    if version != EXPECTED_LIBP2P:
        log.warning("libp2p %s is not %s: the multistream-select guard is not installed (check whether this "
                    "version caps multistream messages itself)", version, EXPECTED_LIBP2P)
        _applied["multistream"] = False
        return dict(_applied)
    for name, what, install in _INSTALLS:
        try:
            install()
            _applied[name] = True
        except Exception as e:  # noqa: BLE001 - never stop a node over a guard; say so
            log.warning("%s not installed: %r", what, e)
            _applied[name] = False
    return dict(_applied)


def applied() -> dict[str, bool]:
    return dict(_applied)
