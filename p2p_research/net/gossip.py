"""GossipSub topics of a swarm: validation, rate limiting, dedup and prompt draining.

Safety rules (each measured: docs/libp2p.md):
- spam protection is off (it throttles our own publishes at 10 msg/s); token buckets in the
  validator replace it, per originator key (who signed) *and* per forwarder (the connection that
  delivered it, which also gets a budget of originators it may introduce: keys cost nothing, so a
  connection publishing under a fresh key per message is still one connection);
- invalid content costs the forwarder score (:mod:`.peerscore`; over-budget messages are only dropped,
  and their verdict leaves libp2p's validation cache); a connection that keeps sending junk is
  disconnected, blacklisted in pubsub, refused on every protocol and not dialed for a doubling backoff;
- subscription queues hold 32 messages and drop silently: a task per topic drains them into our
  own large channel at once;
- gossip replays recent messages after a reconnect: a seen-set of message hashes makes delivery
  idempotent;
- a publish over 1 MiB, or one our own validator rejects, is dropped silently by libp2p: we check
  both before publishing and raise instead.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.lowlevel
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from ..wire import (
    BoardPost,
    Bundle,
    Claim,
    Message,
    Presence,
    Result,
    Verification,
    WireError,
    check_result,
    decode,
)
from ..wire.messages import MAX_BUNDLE
from . import libp2p_compat
from .framing import reset_quietly
from .peerscore import BUDGET_REASONS, ForwarderScores
from .ratelimit import PerPeerRateLimiter, RateLimitedLog
from .streams import StreamGuard, StreamLimits
from .topics import (
    MAX_SUBSCRIPTIONS_PER_PEER,
    TopicFilter,
    swarm_peer_counts,
    swarm_to_replace,
    swarm_weights,
    swarms_to_join,
    swarms_to_leave,
    topic_names,
)

log = logging.getLogger(__name__)

EXP_TYPES = (Claim, Result, Verification, Bundle, Presence)  # what a swarm's experiment topic carries

LIBP2P_RPC_CAP = 1024 * 1024  # libp2p silently drops a publish whose RPC exceeds this
PUBLISH_CAP = LIBP2P_RPC_CAP - 16 * 1024  # room for the envelope (from, seqno, signature, key, topic)
SEEN_CAPACITY = 100_000
MESH_WAIT = 3.0  # seconds; heartbeat is 1 s
OUTBOUND_HIGH_WATER = 16  # of libp2p's 32-slot per-peer outbound RPC queue
OUTBOUND_WAIT = 2.0
INCOMING_CAPACITY = 10_000
BATCH_WAIT_S = 2.0  # a result or verification waits at most this long for the sender's next claim
FORWARDER_RATE_FACTOR = 10  # a connection relays many originators: 10x one originator's budget
NEW_ORIGINATORS_PER_S = 2.0  # originators never seen before that one connection may introduce
NEW_ORIGINATORS_BURST = 128
KNOWN_ORIGINATORS = 20_000
BAN_CHECK_S = 5.0
FOLLOW_SWARMS_S = 2.0  # how often a relay looks at the swarms its peers announce
#: pubsub streams live as long as the connection; a peer opens one per protocol
PUBSUB_LIMITS = StreamLimits(per_peer=2, total=1024, deadline_s=None)


@dataclass
class Incoming:
    """A valid message from another peer."""

    message: Message
    from_peer: str  # gossip source: the originator's peer id (authenticated by the envelope signature)
    received_at: float
    swarm: str = ""  # the swarm whose topic carried it ("" when it came another way, e.g. catch-up)


def new_stats() -> dict[str, Any]:
    """Counters: published, received, duplicate, queue_full, rejected (a Counter by reason)."""
    return {"published": 0, "received": 0, "duplicate": 0, "queue_full": 0, "rejected": Counter(),
            "faults": Counter(), "bans": 0}


class Gossip:
    """Pubsub + GossipSub router for a swarm's two topics, with our validation on top.

    A research node publishes and listens in its own swarm only. With ``serve_any_swarm`` (a relay)
    it also joins the swarms its peers announce (:mod:`.topics` decides which), so it forwards,
    stores and serves their messages too.
    """

    def __init__(
        self,
        host: IHost,
        swarm_id: str,
        incoming: trio.MemorySendChannel[Incoming],
        *,
        rate_limit_per_s: float,
        rate_burst: int,
        stats: dict[str, Any],
        on_received_from: Callable[[str], None] | None = None,
        batch_wait_s: float = BATCH_WAIT_S,
        streams: StreamGuard | None = None,
        serve_any_swarm: bool = False,
    ) -> None:
        self.host = host
        self.my_id = host.get_id()
        self.swarm_id = swarm_id
        self.serve_any_swarm = serve_any_swarm
        self.exp_topic, self.board_topic = topic_names(swarm_id)
        self.topic_types: dict[str, tuple[type, ...]] = {}
        self.topic_swarm: dict[str, str] = {}
        #: joined swarms -> when a connected peer last used each (for leaving idle ones)
        self.swarms: dict[str, float] = {}
        self._drain_scopes: dict[str, trio.CancelScope] = {}
        self.topic_filter = TopicFilter(open=serve_any_swarm)
        #: whether a peer is a relay (from the peer exchange); set by the network
        self.is_relay: Callable[[str], bool] = lambda peer: False
        libp2p_compat.apply()  # idempotent; normally already done by make_host
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            # Every node reads each message once per mesh neighbour before dedup (each copy costs a
            # Noise decryption, Yamux framing and a protobuf parse), and on one machine CPU is the
            # scarce resource: a mesh degree of 4 (3..8) reads fewer copies than the default 6 (4..12)
            # and keeps a swarm of tens of nodes a few hops wide. (Measured with 35 nodes on 2 cores:
            # degree 3 (2..5) was worse, gossip latency p50 25 s against 15 s, as the extra hops
            # cost more than the copies saved.) A 2 s heartbeat halves the IHAVE traffic.
            degree=4,
            degree_low=3,
            degree_high=8,
            heartbeat_interval=2,
            spam_protection_enabled=False,
        )
        self.pubsub = Pubsub(host, self.router, allowed_topics=set(),
                             max_subscriptions_per_peer=MAX_SUBSCRIPTIONS_PER_PEER)
        # libp2p freezes allowed_topics into a frozenset; ours grows with the swarms this node joins
        # and, on a relay, admits any swarm-shaped topic (that is how it learns which swarms exist)
        self.pubsub.allowed_topics = self.topic_filter  # type: ignore[assignment]
        # libp2p drops a message whose signature fails before any validator: the guard tells us who
        # forwarded it, so that connection is scored like any other sender of rejected messages
        self.pubsub._p2p_on_bad_signature = self._bad_signature  # type: ignore[attr-defined]
        self.stats = stats
        if streams is None:
            streams = StreamGuard.standalone(host, stats)
        for protocol in self.router.get_protocols():
            streams.register(protocol, self._pubsub_stream, PUBSUB_LIMITS)
        self._incoming = incoming
        self._limiter = PerPeerRateLimiter(rate_limit_per_s, rate_burst)
        self._fwd_limiter = PerPeerRateLimiter(rate_limit_per_s * FORWARDER_RATE_FACTOR,
                                               rate_burst * FORWARDER_RATE_FACTOR)
        self._new_orig_limiter = PerPeerRateLimiter(NEW_ORIGINATORS_PER_S, NEW_ORIGINATORS_BURST)
        self._known_originators: OrderedDict[str, None] = OrderedDict()
        self.scores = ForwarderScores()
        self._rlog = RateLimitedLog(log)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._on_received_from = on_received_from
        self.batch_wait_s = batch_wait_s
        self._outbox: list[tuple[Message, bytes]] = []  # with each one's checked wire bytes
        self._send_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    # --- validation (runs inside libp2p's read loop: synchronous, never raises) --------------------

    def _reject(self, reason: str, source: str, detail: str, forwarder: str = "", msg: Any = None) -> bool:
        self.stats["rejected"][reason] += 1
        if reason in BUDGET_REASONS and msg is not None and self._nursery is not None:
            # libp2p caches every verdict for 5 minutes by message id: an over-budget verdict must not
            # make this node refuse the same message from an honest relay later
            try:
                self._nursery.start_soon(self._forget_verdict, self.pubsub._msg_id_constructor(msg))
            except Exception as e:  # noqa: BLE001 - best effort; the message is then lost on this path only
                log.debug("could not forget a verdict: %r", e)
        via = f" via {forwarder[:20]}" if forwarder and forwarder != source else ""
        self._rlog.log(logging.WARNING, f"{reason}:{source}", "rejected gossip from %s%s: %s (%s)", source, via,
                       reason, detail)
        if forwarder and forwarder != self.my_id.to_base58():
            self._score(forwarder, reason)
        return False

    def _bad_signature(self, forwarder: ID, msg: Any) -> None:
        """A message whose pubsub signature fails (libp2p_compat guard `bad_signature`)."""
        try:
            source = ID(msg.from_id).to_base58()
        except Exception:  # noqa: BLE001 - a made-up originator id
            source = "?"
        fwd = forwarder.to_base58() if isinstance(forwarder, ID) else str(forwarder)
        self._reject("bad_signature", source, "the message's pubsub signature does not verify", fwd)

    def _score(self, peer: str, reason: str) -> None:
        """Charge `peer` for one rejected message; ban it when that crosses the threshold."""
        ban = self.scores.penalize(peer, reason, time.monotonic())
        if ban is not None and self._nursery is not None:
            self._nursery.start_soon(self._ban, peer, ban, reason)

    async def _forget_verdict(self, msg_id: bytes) -> None:
        await trio.lowlevel.checkpoint()  # libp2p stores the verdict right after the validator returns
        try:
            self.pubsub.validation_cache._remove(msg_id)
            order = self.pubsub.validation_cache.access_order
            if msg_id in order:
                order.remove(msg_id)
        except Exception as e:  # noqa: BLE001 - another libp2p version: say it once in debug
            log.debug("validation cache not cleared: %r", e)

    def is_banned(self, peer: str) -> bool:
        return self.scores.banned(peer, time.monotonic())

    async def _ban(self, peer: str, seconds: float, reason: str) -> None:
        """Drop a connection that kept sending messages we reject, and refuse it for `seconds`."""
        self.stats["bans"] += 1
        log.warning("banned peer %s for %.0f s: it kept sending rejected gossip (last: %s)", peer, seconds, reason)
        pid = ID.from_base58(peer)
        self.pubsub.add_to_blacklist(pid)
        with trio.move_on_after(5):
            try:
                await self.host.disconnect(pid)
            except Exception as e:  # noqa: BLE001 - it may be gone already
                log.debug("disconnecting %s: %r", peer, e)

    async def _lift_bans(self) -> None:
        while True:
            await trio.sleep(BAN_CHECK_S)
            for peer in self.scores.expired_bans(time.monotonic()):
                self.pubsub.remove_from_blacklist(ID.from_base58(peer))
                log.info("ban of %s lifted", peer)

    def _introduces(self, src: str) -> bool:
        """Whether `src` is an originator this node has not accepted a message from yet."""
        if src in self._known_originators:
            self._known_originators.move_to_end(src)
            return False
        return True

    def _know(self, src: str) -> None:
        self._known_originators[src] = None
        if len(self._known_originators) > KNOWN_ORIGINATORS:
            self._known_originators.popitem(last=False)

    def _validator(self, topic: str) -> Callable[[ID, Any], bool]:
        allowed = self.topic_types[topic]

        def validate(forwarder: ID, msg: Any) -> bool:
            fwd = ""
            try:
                source = ID(msg.from_id)
                if source == self.my_id:
                    return True  # our own publish, checked before publishing
                src = source.to_base58()
                fwd = forwarder.to_base58()
                if forwarder != self.my_id:
                    if self._on_received_from is not None:
                        self._on_received_from(fwd)
                    # the connection's budgets first: keys cost nothing, connections do
                    if not self._fwd_limiter.allow(fwd):
                        return self._reject("forwarder_rate_limited", src, f"connection over "
                                            f"{self._fwd_limiter.rate}/s", fwd, msg)
                    if self._introduces(src) and not self._new_orig_limiter.allow(fwd):
                        return self._reject("new_originators", src, f"connection introduced over "
                                            f"{NEW_ORIGINATORS_PER_S}/s new keys", fwd, msg)
                if not self._limiter.allow(src):
                    return self._reject("rate_limited", src, f"over {self._limiter.rate}/s", fwd, msg)
                try:
                    m = decode(msg.data)
                except WireError as e:
                    reason = "obsolete_version" if "no longer accepted" in e.reason else "malformed"
                    return self._reject(reason, src, e.reason, fwd)
                inner = m.messages if isinstance(m, Bundle) else (m,)
                if not all(self._limiter.allow(src) for _ in inner[1:]):  # one token per bundled message
                    return self._reject("rate_limited", src, f"over {self._limiter.rate}/s", fwd, msg)
                if not isinstance(m, allowed):
                    return self._reject("wrong_topic", src, f"{m.TYPE} on {topic}", fwd)
                for one in inner:
                    problem = self._check_from(one, src)
                    if problem is not None:
                        return self._reject(problem[0], src, problem[1], fwd)
                self._know(src)
                return True
            except Exception as e:  # noqa: BLE001 - a validator that raises would break libp2p's read loop
                return self._reject("validator_error", "?", f"{type(e).__name__}: {e}", fwd)

        return validate

    @staticmethod
    def _check_from(m: Message, src: str) -> tuple[str, str] | None:
        """(reason, detail) when a message cannot have come from `src`: a claim or post in another
        peer's name, or a receipt whose signature does not verify."""
        if isinstance(m, (Claim, Presence)) and m.peer != src:
            return "peer_mismatch", f"{m.TYPE}.peer={m.peer}"
        if isinstance(m, BoardPost) and m.author != src:
            return "peer_mismatch", f"board.author={m.author}"
        if isinstance(m, (Result, Verification)):
            try:
                check_result(m)
            except WireError as e:
                return "bad_signature", e.reason
        return None

    # --- receiving -------------------------------------------------------------------------------

    def _seen_before(self, data: bytes) -> bool:
        h = hashlib.sha256(data).digest()
        if h in self._seen:
            self._seen.move_to_end(h)
            return True
        self._seen[h] = None
        if len(self._seen) > SEEN_CAPACITY:
            self._seen.popitem(last=False)
        return False

    # --- swarms ----------------------------------------------------------------------------------

    async def join(self, swarm_id: str, board: bool = True) -> bool:
        """Subscribe to a swarm's two topics (without `board`: its experiments topic only, as a research
        node follows a sibling protocol) with validators and drain them; False if already joined."""
        if swarm_id in self.swarms or self._nursery is None:
            return False
        self.swarms[swarm_id] = time.time()
        exp, board_topic = topic_names(swarm_id)
        for topic, types in ((exp, EXP_TYPES), (board_topic, (BoardPost,)))[:2 if board else 1]:
            self.topic_types[topic] = types
            self.topic_swarm[topic] = swarm_id
            self.topic_filter.joined.add(topic)
            self.pubsub.set_topic_validator(topic, self._validator(topic), False)
            sub = await self.pubsub.subscribe(topic)
            scope = trio.CancelScope()
            self._drain_scopes[topic] = scope
            self._nursery.start_soon(self._drain_in, scope, sub, swarm_id, name=f"gossip-drain {topic}")
        if swarm_id != self.swarm_id and board:  # a sibling's topic alone: its follower says why
            log.info("serving swarm %s (%d peer(s) use it)", swarm_id, self.swarm_peers().get(swarm_id, 0))
        return True

    async def leave(self, swarm_id: str) -> None:
        """Unsubscribe from a swarm this node no longer serves (never its own)."""
        if swarm_id == self.swarm_id or self.swarms.pop(swarm_id, None) is None:
            return
        for topic in topic_names(swarm_id):
            if topic not in self.topic_types:  # a sibling's board topic: never joined
                continue
            scope = self._drain_scopes.pop(topic, None)
            if scope is not None:
                scope.cancel()
            self.topic_filter.joined.discard(topic)
            self.topic_types.pop(topic, None)
            self.topic_swarm.pop(topic, None)
            self.pubsub.remove_topic_validator(topic)
            await self.pubsub.unsubscribe(topic)
        log.info("left swarm %s: no connected peer has used it for a while", swarm_id)

    def swarm_peers(self) -> dict[str, int]:
        """Connected peers per swarm they announced (joined or not)."""
        return swarm_peer_counts(self.pubsub.peer_topics)

    def _relay(self, peer: object) -> bool:
        try:
            return self.is_relay(peer.to_base58() if isinstance(peer, ID) else str(peer))
        except Exception:  # noqa: BLE001 - an unknown peer is not a relay
            return False

    async def follow_swarms(self) -> None:
        """A relay's task: join the swarms peers use (most-used first, up to the cap), leave idle ones."""
        while True:
            try:
                await self._follow_once()
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - libp2p's subscribe/unsubscribe; the node goes on
                self._rlog.log(logging.WARNING, "follow", "following the swarms peers use failed: %s: %s",
                               type(e).__name__, e)
            await trio.sleep(FOLLOW_SWARMS_S)

    async def _follow_once(self) -> None:
        # a swarm stays while a research node uses it; relays only repeat what their peers announce
        used = swarm_peer_counts(self.pubsub.peer_topics, lambda p: not self._relay(p))
        now = time.time()
        for s in self.swarms:
            if used.get(s, 0) > 0:
                self.swarms[s] = now
        for s in swarms_to_leave(self.swarms, used, self.swarms, now, keep=[self.swarm_id]):
            await self.leave(s)
        weights = swarm_weights(self.pubsub.peer_topics, self._relay)
        swap = swarm_to_replace(self.swarms, weights, keep=[self.swarm_id])
        if swap is not None:
            await self.leave(swap[0])
        for s in swarms_to_join(self.swarms, weights):
            await self.join(s)

    async def _drain_in(self, scope: trio.CancelScope, sub: Any, swarm_id: str) -> None:
        with scope:
            await self._drain(sub, swarm_id)

    async def _drain(self, sub: Any, swarm_id: str = "") -> None:
        """Move messages out of libp2p's 32-slot subscription queue as fast as they come."""
        while True:
            msg = await sub.get()
            source = ID(msg.from_id)
            if source == self.my_id:
                continue
            if self._seen_before(msg.data):
                self.stats["duplicate"] += 1
                continue
            try:
                m = decode(msg.data)
            except WireError as e:  # cannot happen after validation; be defensive
                self.stats["rejected"]["malformed"] += 1
                log.warning("undecodable message passed validation: %s", e.reason)
                continue
            now = time.time()
            for one in m.messages if isinstance(m, Bundle) else (m,):
                try:
                    self._incoming.send_nowait(Incoming(one, source.to_base58(), now, swarm_id))
                    self.stats["received"] += 1
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return  # the network is shutting down
                except trio.WouldBlock:
                    self.stats["queue_full"] += 1
                    self._rlog.log(logging.ERROR, "queue_full", "incoming queue full: dropped a %s", one.TYPE)

    async def _wait_for_mesh(self, topic: str) -> None:
        """Wait (briefly) for the mesh when peers are subscribed but no mesh exists yet.

        GossipSub sends a publish to mesh peers only; right after a connection the mesh is empty
        until the next heartbeat and the message would be lost for those peers (measured).
        """
        with trio.move_on_after(MESH_WAIT):
            while not self.router.mesh.get(topic) and self.pubsub.peer_topics.get(topic):
                await trio.sleep(0.05)

    # --- publishing ------------------------------------------------------------------------------

    def topic_for(self, msg: Message) -> str:
        """This node's own swarm's topic for a message (a relay publishes, e.g. a board post, only there)."""
        if isinstance(msg, BoardPost):
            return self.board_topic
        if isinstance(msg, EXP_TYPES):
            return self.exp_topic
        raise TypeError(f"not a wire message: {type(msg).__name__}")

    async def _pubsub_stream(self, stream: Any) -> None:
        """libp2p's pubsub handler lets a protobuf DecodeError (a malformed or truncated RPC from a peer)
        escape, which took the whole host down. Registered behind the stream guard (its boundary logs
        the fault and resets the stream); here the peer is also forgotten by pubsub and scored."""
        peer = stream.muxed_conn.peer_id
        if self.pubsub.is_peer_blacklisted(peer) or self.is_banned(peer.to_base58()):
            await reset_quietly(stream, grace=0.5)
            return
        try:
            await self.pubsub.stream_handler(stream)
        except Exception as e:
            self._handle_dead_peer(peer)
            if not _is_decode_error(e):
                raise  # a stream error of a departing peer; the guard decides whether it is a fault
            self.stats["rejected"]["malformed_rpc"] += 1
            self._score(peer.to_base58(), "malformed_rpc")
            raise

    def _handle_dead_peer(self, peer: ID) -> None:
        try:
            self.pubsub._handle_dead_peer(peer)
        except Exception as e:  # noqa: BLE001 - libp2p's bookkeeping of a peer that is gone anyway
            log.debug("forgetting %s: %r", peer, e)

    def _checked_wire(self, msg: Message) -> bytes:
        """Validate like a receiver would (WireError otherwise): libp2p would drop it silently."""
        data = msg.to_wire()  # WireError if invalid
        if len(data) > PUBLISH_CAP:  # unreachable with the wire caps; kept as the loud guard
            raise WireError(f"refusing to publish {len(data)} bytes: libp2p drops RPCs over 1 MiB silently")
        me = self.my_id.to_base58()
        for one in msg.messages if isinstance(msg, Bundle) else (msg,):
            problem = self._check_from(one, me)
            if problem is not None:
                raise WireError(f"{problem[1]}: not this node ({me[:16]}), peers would reject it")
        return data

    async def publish(self, msg: Message) -> None:
        """Validate like a receiver would, then publish; raise instead of libp2p's silent drops.

        Results and verifications wait up to `batch_wait_s` in an outbox; the next claim (or the
        timer) takes them along in one Bundle. Claims, the latency-critical part of dedup, and board
        posts leave at once."""
        data = self._checked_wire(msg)
        if isinstance(msg, (Result, Verification)) and self.batch_wait_s > 0 and self._nursery is not None:
            self._outbox.append((msg, data))
            if len(self._outbox) == 1:
                self._nursery.start_soon(self._flush_later, name="gossip-outbox")
            elif len(self._outbox) >= MAX_BUNDLE - 1:
                await self.flush()
            return
        if isinstance(msg, Claim) and self._outbox:
            await self.flush((msg, data))
            return
        async with self._send_lock:
            await self._send(msg, data)

    async def _flush_later(self) -> None:
        await trio.sleep(self.batch_wait_s)
        try:
            await self.flush()
        except Exception as e:  # noqa: BLE001 - the receipts stay in the ledger; catch-up serves them
            log.warning("could not publish queued messages: %s: %s", type(e).__name__, e)

    async def flush(self, extra: tuple[Message, bytes] | None = None) -> None:
        """Publish the outbox (plus `extra`, a message and its wire bytes) now: one message, or
        bundles within the size cap."""
        async with self._send_lock:
            batch, self._outbox = self._outbox, []
            if extra is not None:
                batch.append(extra)
            for group in _groups(batch):
                if len(group) == 1:
                    await self._send(*group[0])
                    continue
                bundle = Bundle(tuple(m for m, _ in group))  # type: ignore[arg-type]
                await self._send(bundle, bundle.to_wire())
                self.stats["bundled"] = self.stats.get("bundled", 0) + len(group)

    async def _send(self, msg: Message, data: bytes) -> None:
        topic = self.topic_for(msg)
        self._seen_before(data)
        await self._wait_for_mesh(topic)
        await self._wait_for_outbound_room()
        await self.pubsub.publish(topic, data)
        self.stats["published"] += 1
        # let the sender and drain tasks run: a tight publish loop otherwise fills libp2p's queues
        await trio.lowlevel.checkpoint()

    async def _wait_for_outbound_room(self) -> None:
        """Backpressure: libp2p's per-peer outbound queue holds 32 RPCs and drops the rest silently.

        Measured: 20 publishes in a tight loop put 32 RPCs in the queue and only 15 messages
        reached the peer. Wait (bounded) until every queue is at most half full.
        """
        with trio.move_on_after(OUTBOUND_WAIT):
            while any(len(q) > OUTBOUND_HIGH_WATER for q in list(self.pubsub.peer_queues.values())):
                await trio.sleep(0.005)


@asynccontextmanager
async def open_gossip(
    host: IHost,
    swarm_id: str,
    incoming: trio.MemorySendChannel[Incoming],
    *,
    rate_limit_per_s: float,
    rate_burst: int,
    stats: dict[str, Any],
    on_received_from: Callable[[str], None] | None = None,
    batch_wait_s: float = BATCH_WAIT_S,
    streams: StreamGuard | None = None,
    serve_any_swarm: bool = False,
) -> AsyncIterator[Gossip]:
    """Start pubsub and the router, subscribe to the swarm's topics with validators, drain them (and,
    with `serve_any_swarm`, follow the swarms peers use)."""
    g = Gossip(
        host, swarm_id, incoming, rate_limit_per_s=rate_limit_per_s, rate_burst=rate_burst,
        stats=stats, on_received_from=on_received_from, batch_wait_s=batch_wait_s, streams=streams,
        serve_any_swarm=serve_any_swarm,
    )  # fmt: skip
    async with background_trio_service(g.pubsub), background_trio_service(g.router):
        await g.pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            g._nursery = nursery
            if not serve_any_swarm:  # a relay joins its home's swarm too, but only once a peer uses it
                await g.join(swarm_id)
            nursery.start_soon(g._lift_bans, name="gossip-bans")
            if serve_any_swarm:
                nursery.start_soon(g.follow_swarms, name="gossip-swarms")
            try:
                yield g
            finally:
                g._nursery = None
                if g._outbox:  # best effort: what is queued is also in the ledger, which catch-up serves
                    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                        try:
                            await g.flush()
                        except Exception as e:  # noqa: BLE001 - the outbox is also in the ledger, which catch-up serves
                            log.debug("outbox not flushed at shutdown: %s", e)
                nursery.cancel_scope.cancel()


def _is_decode_error(e: BaseException) -> bool:
    """A protobuf or varint parse error: the peer sent bytes that are not a pubsub RPC."""
    from google.protobuf.message import DecodeError

    if isinstance(e, BaseExceptionGroup):
        return any(_is_decode_error(x) for x in e.exceptions)
    return isinstance(e, DecodeError) or type(e).__name__ in ("ParseError", "MessageTooLarge")


def _groups(batch: list[tuple[Message, bytes]]) -> list[list[tuple[Message, bytes]]]:
    """Split (message, wire bytes) pairs, in order, into groups whose bundle fits one gossip message."""
    budget = PUBLISH_CAP // 2  # room for bundle framing; inline objects are capped far below this
    groups: list[list[tuple[Message, bytes]]] = []
    size = 0
    for item in batch:
        n = len(item[1])
        if groups and len(groups[-1]) < MAX_BUNDLE and size + n <= budget:
            groups[-1].append(item)
            size += n
        else:
            groups.append([item])
            size = n
    return groups
