"""Catch-up and anti-entropy: a peer sends the signed results it knows, as Result messages.

Two uses. A late joiner or a restarted node asks its first peers for everything (`/1.0.0`: the server
writes at once). A running node repairs what gossip lost (libp2p drops RPCs silently when a peer falls
behind, measured at ~3 % of deliveries on a saturated machine): every ANTI_ENTROPY_S it asks one
random connected peer for the results that finished since its last successful sync, minus a margin
for gossip latency, that it does not have (`/1.1.0`: the requester first writes one msgpack frame
`{"since": <unix time>, "have": <8-byte keys>}`, a key being the first 8 bytes of the sha256 of a
signed receipt; the server sends only the others, so a sync costs what gossip lost, not what it
delivered). The request may name one `"protocol"`: a relay stores many swarms' results and a
research node wants its own only. A full catch-up is the same request from time 0.

Receipts are signed by the node that measured them, independent of the gossip envelope, so any peer can
relay them and the receiver checks each one exactly as if it had come over gossip. Objects are not
inlined: the receiver fetches what it needs (the best lineage first) through the object protocol.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgpack
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p_research.net.framing import FrameError, frame, read_frame, reset_quietly, write_all
from p2p_research.net.gossip import Incoming
from p2p_research.net.streams import StreamLimits
from p2p_research.research.catchup_plan import CatchUpPlan
from p2p_research.research.siblings import SIBLING_STATUSES
from p2p_research.store.ledger import Ledger
from p2p_research.wire import Claim, Result, WireError, check_result, decode, decode_receipt

log = logging.getLogger("p2p_research.catchup")

CATCHUP_PROTOCOL = TProtocol("/p2p-research/catchup/1.0.0")
SINCE_PROTOCOL = TProtocol("/p2p-research/catchup/1.1.0")
#: 1.1.0 plus an optional "protocol" in the request (a relay stores many); nodes of the previous version
#: speak 1.1.0 only, and its request carries no "protocol" (their strings were capped at 16 bytes)
PROTOCOL_SINCE = TProtocol("/p2p-research/catchup/1.2.0")
MAX_FRAME = 64 * 1024
KEY_BYTES = 8
MAX_HAVE = 8192
MAX_REQUEST = KEY_BYTES * MAX_HAVE + 256
MAX_RESULTS = 5000
MAX_CLAIMS = 64            # a node's own live claims in one catch-up (its workers run a few at once)
TIMEOUT_S = 20.0           # per step (open, each frame): measured, a full catch-up of ~430 results
                           # on a saturated machine takes longer than 30 s in all
ANTI_ENTROPY_S = 30.0      # between two syncs with a connected peer (research/catchup_plan.py chooses)
FETCH_DEADLINE_S = 300.0   # one whole catch-up or sync, however steadily a peer drips frames
#: served behind the stream guard: one at a time per peer; a full catch-up may take minutes under load
CATCHUP_LIMITS = StreamLimits(per_peer=1, total=8, deadline_s=FETCH_DEADLINE_S)
SINCE_LIMITS = StreamLimits(per_peer=1, total=8, deadline_s=FETCH_DEADLINE_S)


def receipt_key(receipt: bytes) -> bytes:
    return hashlib.sha256(receipt).digest()[:KEY_BYTES]


def results_from_ledger(ledger: Ledger, protocol_id: str | None, since: float | None = None,
                        skip: frozenset[bytes] = frozenset(),
                        statuses: frozenset[str] | None = None) -> list[bytes]:
    """Signed results to serve; `statuses` limits them (a sparse node serves what it would flood)."""
    out = []
    unsendable = 0
    for receipt, sig, pub, _desc in ledger.signed_runs(protocol_id, MAX_RESULTS, since, statuses):
        if skip and receipt_key(receipt) in skip:
            continue
        try:
            # the description travels inside the signed receipt: a relay cannot rewrite it
            msg = Result(receipt=decode_receipt(receipt), signature=sig, public_key=pub, objects=[], objects_total=0)
            out.append(msg.to_wire())
        except WireError as e:
            unsendable += 1
            log.debug("skipping an unsendable receipt: %s", e)
    if unsendable and not _warned_unsendable:
        _warned_unsendable.append(unsendable)
        log.warning("catch-up: %d receipt(s) in the ledger cannot be served (signed under wire version 1, "
                    "before descriptions were signed); peers learn those results only from their finders",
                    unsendable)
    return out


_warned_unsendable: list[int] = []


def own_claims(ledger: Ledger, peer_id: str, protocol_id: str, now: float) -> list[bytes]:
    """This node's own live claims, as it announced them: a node that joins after the announcement
    hears of them in its catch-up (gossip does not replay), so it does not run the same experiment.
    Only its own: the stream's peer is authenticated, a relayed claim would not be."""
    out = []
    for c in ledger.claims(active_at=now):
        if c["peer"] != peer_id or c["protocol_id"] != protocol_id:
            continue
        try:
            out.append(Claim(exp_id=c["exp_id"], protocol_id=c["protocol_id"], parent=c["parent"], peer=c["peer"],
                             lease_until=c["lease_until"], description=c["description"], ts=c["ts"],
                             semantic_id=c["semantic_id"] or "").to_wire())
        except WireError as e:
            log.debug("skipping an unsendable claim: %s", e)
    return out[:MAX_CLAIMS]


class CatchUp:
    """`protocol_id` is what this node wants and serves by default: its own protocol, or None (a
    relay) for every protocol it stores."""

    def __init__(self, host, ledger: Ledger, protocol_id: str | None,
                 deliver: Callable[[Incoming], Awaitable[bool | None]],
                 serves: Callable[[], frozenset[str] | None] = lambda: None) -> None:
        self.host = host
        #: the result statuses this node serves (None: all): under network.announce = kept, only what it
        #: floods, else anti-entropy would carry every result to every node after all
        self.serves = serves
        self.ledger = ledger
        self.protocol_id = protocol_id
        self.deliver = deliver
        self.received = 0
        self.completed = 0  # catch-ups that ran to the end (even with nothing to send)
        self.syncs = 0       # anti-entropy syncs that ran to the end
        self.repaired = 0    # results first learned from an anti-entropy sync (gossip had lost them)
        self._fetched = 0
        self.plan = CatchUpPlan(time.time())  # whom to ask, and from when (replaced when `run` starts)

    async def handle(self, stream) -> None:
        await self._serve(stream, None)

    async def handle_since(self, stream) -> None:
        """`/1.1.0`: read the requester's `{"since": t}`, then serve like `/1.0.0` from t on."""
        try:
            with trio.fail_after(10):
                req = msgpack.unpackb(await read_frame(stream, MAX_REQUEST), raw=False, max_map_len=4,
                                      max_array_len=0, max_str_len=64, max_bin_len=KEY_BYTES * MAX_HAVE,
                                      max_ext_len=0)
            since = req.get("since") if isinstance(req, dict) else None
            if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
                raise ValueError(f"bad request {req!r:.80}")
            have = req.get("have", b"")
            if not isinstance(have, bytes) or len(have) % KEY_BYTES or len(have) > KEY_BYTES * MAX_HAVE:
                raise ValueError(f"bad 'have' ({type(have).__name__}, {len(have) if isinstance(have, bytes) else '?'})")
            skip = frozenset(have[i:i + KEY_BYTES] for i in range(0, len(have), KEY_BYTES))
            protocol = req.get("protocol", self.protocol_id)
            if protocol is not None and not isinstance(protocol, str):
                raise ValueError(f"bad 'protocol' ({type(protocol).__name__})")
            kept = req.get("kept", False) is True  # a sibling protocol's node wants its kept changes only
        except Exception as e:  # noqa: BLE001 - a malformed request only costs its sender the stream
            log.info("catch-up: rejected a request: %s", e)
            await reset_quietly(stream)
            return
        await self._serve(stream, float(since), skip, protocol, kept)

    async def _serve(self, stream, since: float | None, skip: frozenset[bytes] = frozenset(),
                     protocol: str | None = None, kept: bool = False) -> None:
        if protocol is None and since is None:
            protocol = self.protocol_id  # /1.0.0 asks for no protocol: what this node lives in
        served = self.serves()
        if kept:  # kept results and the baselines they were judged against (their gain)
            served = SIBLING_STATUSES if served is None else served & SIBLING_STATUSES
        frames = results_from_ledger(self.ledger, protocol, since, skip, served)
        if not since and not kept and served is None and protocol is not None and protocol == self.protocol_id:
            # a full catch-up (a node joining): also what this node is running now (only there: an
            # older node logs each claim as "not a result", once at its start, not at every sync);
            # a node that floods only kept results keeps its claims in the DHT, as it announces them
            frames += own_claims(self.ledger, self.host.get_id().to_base58(), protocol, time.time())
        try:
            for data in [*frames, b""]:
                with trio.fail_after(TIMEOUT_S):  # per frame: a slow but live requester gets everything
                    await write_all(stream, frame(data))
        except Exception as e:  # noqa: BLE001 - the requester may vanish mid-stream
            log.debug("catch-up serving failed: %s", e)
        finally:
            try:
                await stream.close()
            except Exception:  # noqa: BLE001 - closing a stream the requester may have broken
                pass

    async def fetch_from(self, peer_id: str, since: float | None = None) -> int:
        """Ask one peer for everything it knows (or what finished since `since`); returns how many valid
        results were delivered. A full catch-up counts as done with that peer only once it ran to the end
        (a refused or failed one is tried again, at most CATCHUP_TRIES times)."""
        n = 0
        completed_before = self.completed
        try:
            with trio.fail_after(FETCH_DEADLINE_S):
                n = await self._fetch(peer_id, since)
        except (FrameError, trio.TooSlowError, Exception) as e:  # noqa: BLE001 - best effort; gossip continues
            log.warning("catch-up from %s failed after %d results: %s", peer_id[:16], self._fetched, _why(e))
            n = self._fetched
        self.received += n
        if since is None:
            self.plan.on_catchup(peer_id, self.completed > completed_before)
        if n and since is None:
            log.info("caught up from %s: %d results", peer_id[:16], n)
        return n

    async def fetch_sibling(self, peer_id: str, protocol: str, since: float | None = None) -> int:
        """Ask one peer for the kept results of a sibling protocol it lives in (and the baselines they
        were judged against): all of them when this node starts to follow that protocol (its ideas from
        before then), later those that finished since `since` (what gossip lost). Counts as no
        catch-up of this node's own swarm. Returns how many were delivered."""
        try:
            with trio.fail_after(FETCH_DEADLINE_S):
                n = await self._fetch(peer_id, since, sibling=protocol)
        except (FrameError, trio.TooSlowError, Exception) as e:  # noqa: BLE001 - best effort; gossip continues
            log.info("sibling catch-up of %s from %s failed after %d results: %s", protocol[:12], peer_id[:16],
                     self._fetched, _why(e))
            return self._fetched
        if n:
            log.info("caught up on %d kept result(s) of sibling protocol %s from %s", n, protocol[:12], peer_id[:16])
        return n

    async def _fetch(self, peer_id: str, since: float | None, sibling: str | None = None) -> int:
        """One catch-up (`since` None) or sync with one peer, or (`sibling`) a catch-up of a sibling
        protocol's kept results; per-step timeouts inside the caller's overall deadline (a peer
        dripping frames cannot hold this task for long)."""
        self._fetched = n = 0
        with trio.fail_after(TIMEOUT_S):
            stream = await self.host.new_stream(ID.from_base58(peer_id), [PROTOCOL_SINCE, SINCE_PROTOCOL])
        ok = False
        try:
            if sibling is not None and stream.get_protocol() != PROTOCOL_SINCE:
                raise FrameError("the peer cannot name a protocol in a catch-up (an older version)")
            protocol = sibling or self.protocol_id
            have = b"".join(sorted({receipt_key(r) for r, _, _, _ in
                                    self.ledger.signed_runs(protocol, MAX_HAVE, since)}))
            req: dict = {"since": since or 0.0, "have": have}
            if protocol is not None and stream.get_protocol() == PROTOCOL_SINCE:
                req["protocol"] = protocol
            if sibling is not None:
                req["kept"] = True
            with trio.fail_after(TIMEOUT_S):
                await write_all(stream, frame(msgpack.packb(req)))
            for _ in range(MAX_RESULTS + 1):
                with trio.fail_after(TIMEOUT_S):
                    data = await read_frame(stream, MAX_FRAME)
                if not data:
                    break
                try:
                    msg = decode(data)
                    if isinstance(msg, Claim) and sibling is None:
                        if msg.peer != peer_id:  # a peer serves its own claims only (own_claims)
                            raise WireError("a claim of another peer")
                        await self.deliver(Incoming(msg, peer_id, time.time()))
                        continue
                    if not isinstance(msg, Result):
                        raise WireError("not a result")
                    check_result(msg)
                except WireError as e:
                    log.warning("catch-up from %s: rejected an entry: %s", peer_id[:16], e.reason)
                    continue
                if await self.deliver(Incoming(msg, peer_id, time.time())) and since is not None:
                    self.repaired += 1
                n += 1
                self._fetched = n
            if sibling is not None:
                pass  # not a catch-up of this node's own swarm: `joined` and the plan must not count it
            elif since is None:
                self.completed += 1
            else:
                self.syncs += 1
            ok = True
        finally:
            if ok:
                with trio.move_on_after(2):
                    try:
                        await stream.close()
                    except Exception:  # noqa: BLE001 - everything was read already
                        pass
            else:
                await reset_quietly(stream)
        return n

    async def run(self, connected: Callable[[], list[str]], max_peers: int = 3,
                  interval: Callable[[], float] = lambda: ANTI_ENTROPY_S) -> None:
        """Catch up from the first few peers as they connect (idempotent: duplicates are ignored), then
        sync with one connected peer every `interval()` seconds; `self.plan` decides whom, and since when."""
        plan = self.plan = CatchUpPlan(time.time(), max_peers)
        while plan.catching_up(time.time()):
            for pid in plan.catchup_peers(connected()):  # refused ones do not count; each is tried twice
                if not plan.catching_up(time.time()):
                    break
                await self.fetch_from(pid)
            await trio.sleep(1.0)
        while True:  # the first sync asks from the start on (the plan's `last_sync` is unset until then)
            await trio.sleep(interval())
            choice = plan.next_sync(connected(), time.time())
            if choice is None:
                continue
            peer, since = choice
            t = time.time()
            before = self.syncs
            await self.fetch_from(peer, since=since)
            plan.on_sync(peer, t, self.syncs > before)


def _why(e: BaseException) -> str:
    """A failure in words: trio's TooSlowError (the deadline) and some of libp2p's errors carry no message,
    and a log line that ended in ': ' said nothing."""
    if isinstance(e, trio.TooSlowError):
        return f"timed out (each step waits {TIMEOUT_S:.0f} s, the whole {FETCH_DEADLINE_S:.0f} s)"
    return str(e) or type(e).__name__
