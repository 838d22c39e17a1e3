"""What a node does with valid messages from peers: claims, results (with their git objects), posts.

The network layer already checked schema, size, rate and signatures. Here each message is recorded
idempotently (gossip replays messages after reconnects) with its provenance, and a result's commit is
completed in the local repo: the objects that came with the result first (whole ones, and changed blobs
rebuilt from their delta against the parent's blob when this node has it), then whatever is still
missing fetched from the announcer over the object protocol, every object checked against its id
before it is written.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

import trio

from p2p_research.net.boundary import Faults, PeerTasks, contained
from p2p_research.net.network import Incoming, Network
from p2p_research.net.ratelimit import RateLimitedLog
from p2p_research.research.claims import ClaimBook
from p2p_research.research.ids import experiment_id
from p2p_research.research.io.context import ResearchContext
from p2p_research.research.io.objects import incomplete_ancestry
from p2p_research.research.io.workspace import RawObject, WorkspaceError
from p2p_research.research.semantic import semantic_id
from p2p_research.research.siblings import SIBLING_STATUSES
from p2p_research.store.ledger import Run
from p2p_research.wire import BoardPost, Claim, Presence, Result, Verification, WireError

log = logging.getLogger("p2p_research.intake")

MAX_FETCH_ROUNDS = 256
FETCH_RETRY_S = (5.0, 20.0, 60.0)  # pauses before fetching a kept commit again after every source failed
MAX_RETRYING = 32
FETCH_FALLBACK_PEERS = 3   # connected peers asked when the announcer cannot serve a commit
FETCH_TIMEOUT_S = 15.0
MAX_PROTOCOLS = 64  # protocols a relay stores results of (its own included)


class Intake:
    def __init__(self, ctx: ResearchContext, net: Network, self_peer: str, *, any_protocol: bool = False) -> None:
        self.ctx = ctx
        self.net = net
        self.self_peer = self_peer
        #: a relay keeps every swarm's results (to serve them); a research node only its protocol's
        self.any_protocol = any_protocol
        #: protocols seen on each swarm's topic (a relay's `status` names them; bounded by the swarm cap)
        self.swarm_protocols: dict[str, set[str]] = {}
        self._protocols: set[str] | None = None  # protocols stored here (a relay's bound), read lazily
        #: whether a protocol is a sibling this node follows (research/siblings.py; set by the daemon)
        self.is_sibling: Callable[[str], bool] = lambda protocol: False
        self.fetch_limit = trio.CapacityLimiter(4)
        self._retrying: set[str] = set()  # kept commits waiting to be fetched again
        # code keys of peers' experiments: only a node whose proposer is an agent asks about them
        self.code_keys = ctx.config.research.enabled and ctx.config.research.proposer == "command"
        self.stats = {"claims": 0, "results": 0, "duplicates": 0, "posts": 0, "fetched_objects": 0,
                      "fetch_failures": 0, "not_fetched": 0, "rejected": 0, "delta_objects": 0, "delta_fallbacks": 0,
                      "claims_refused": 0, "rejected_by": Counter()}
        self.on_result = None        # async callback(Result, Run) once a result's commit is complete
        self.on_claim = None         # async callback(Claim)
        self.on_verification = None  # async callback(Verification, from_peer)
        self.on_presence = None      # callback(peer): a member of this swarm is alive
        self.wants = None            # callback(exp_id) -> bool: would the coordinator still consider it?
        self._reoffered: set[str] = set()
        self._rlog = RateLimitedLog(log)
        #: which peers' claims count here (shared with the coordinator, which yields by it)
        self.claims = ClaimBook()
        #: where a peer's message that makes our code raise ends (counted in the network's stats)
        self.faults: Faults = getattr(net, "faults", None) or Faults()

    def _tasks(self, where: trio.Nursery | PeerTasks) -> PeerTasks:
        return where if isinstance(where, PeerTasks) else PeerTasks(where, self.faults)

    async def run(self, nursery: trio.Nursery | PeerTasks) -> None:
        """Handle every incoming message, each inside its own fault boundary; the work a message starts
        (completing a commit, the coordinator's callbacks) runs in contained tasks too."""
        tasks = self._tasks(nursery)
        async for inc in self.net.incoming:
            await contained(self.faults, inc.from_peer, "intake", self.handle, inc, tasks)

    def note_code_key(self, exp_id: str, commit: str) -> None:
        """Record a peer experiment's code key once its files are here, so an agent's reworded copy of
        it is known (research/semantic.py)."""
        if not self.code_keys:
            return
        ws = self.ctx.workspace
        try:
            if ws.is_complete(commit) and self.ctx.experiment_id_of(commit) == exp_id:
                self.ctx.ledger.set_semantic_id(exp_id, semantic_id(self.ctx.protocol_id, ws.files_of(commit)))
        except WorkspaceError:
            pass

    def reject(self, inc: Incoming, reason: str, category: str) -> None:
        self.refuse(inc.from_peer, type(inc.message).__name__, reason, category)

    def refuse(self, peer: str, what: str, reason: str, category: str, level: int = logging.WARNING) -> None:
        """Count (by category, shown in `status`) and log (rate-limited, with the peer) a refusal."""
        self.stats["rejected"] += 1
        self.stats["rejected_by"][category] += 1
        self._rlog.log(level, f"{what}:{peer}:{category}", "rejected %s from %s: %s", what, peer[:16], reason)

    def _room_for(self, protocol: str) -> bool:
        """A relay stores at most MAX_PROTOCOLS protocols: made-up ones cannot fill its disk without end."""
        if self._protocols is None:
            self._protocols = set(self.ctx.ledger.protocol_summary())
        if protocol in self._protocols:
            return True
        if len(self._protocols) >= MAX_PROTOCOLS:
            return False
        self._protocols.add(protocol)
        return True

    def _note_swarm(self, inc: Incoming, protocol: str) -> None:
        if inc.swarm:
            seen = self.swarm_protocols.setdefault(inc.swarm, set())
            if len(seen) < 8:
                seen.add(protocol)

    async def accept_claim(self, msg: Claim, received_at: float) -> str | None:
        """A peer's claim, from gossip or found in the DHT (a sparse swarm's contest, daemon/announcer.py):
        admitted by the claim book, with its time and lease as this node's clock bounds them, recorded,
        and passed on (the coordinator yields a run by it). Why it was refused, or None."""
        adm = self.claims.admit(msg.peer, msg.exp_id, msg.ts, msg.lease_until, received_at)
        if not adm.accepted:
            self.stats["claims_refused"] += 1
            return adm.reason
        self.ctx.ledger.add_claim(msg.exp_id, msg.peer, msg.protocol_id, msg.parent, adm.lease_until,
                                  msg.description, adm.ts, msg.semantic_id)
        self.stats["claims"] += 1
        if self.on_claim is not None:
            await self.on_claim(msg, adm.ts)
        return None

    async def handle(self, inc: Incoming, nursery: trio.Nursery | PeerTasks) -> None:
        msg = inc.message
        if isinstance(msg, Claim):
            self._note_swarm(inc, msg.protocol_id)
            if msg.protocol_id != self.ctx.protocol_id:
                if self.any_protocol:  # a relay forwards claims (gossip did); dedup is the DHT's job
                    return None
                if self._sibling_traffic(msg.protocol_id):
                    return None
                return self.reject(inc, "claim under another protocol", "other_protocol")
            refused = await self.accept_claim(msg, inc.received_at)
            if refused:
                return self.reject(inc, f"claim {msg.exp_id[:10]}: {refused}", "claim_refused")
        elif isinstance(msg, Result):
            await self.handle_result(inc, msg, nursery)
        elif isinstance(msg, BoardPost):
            if self.ctx.ledger.add_post(msg.author, msg.name, msg.text, msg.ts, "peer"):
                self.stats["posts"] += 1
        elif isinstance(msg, Verification):
            if msg.receipt.protocol_id != self.ctx.protocol_id:
                if self.any_protocol or self._sibling_traffic(msg.receipt.protocol_id):
                    return None
                return self.reject(inc, "verification under another protocol", "other_protocol")
            if self.on_verification is not None:
                await self.on_verification(msg, inc.from_peer)
        elif isinstance(msg, Presence):
            if msg.protocol_id != self.ctx.protocol_id:
                if self.any_protocol or self._sibling_traffic(msg.protocol_id):
                    return None
                return self.reject(inc, "presence under another protocol", "other_protocol")
            self.stats["presence"] = self.stats.get("presence", 0) + 1
            if self.on_presence is not None:
                self.on_presence(msg.peer)

    def _sibling_traffic(self, protocol: str) -> bool:
        """A sibling's claims, verifications and presence come with its topic; they concern its own
        swarm only, and are counted, not refused."""
        if not self.is_sibling(protocol):
            return False
        self.stats["sibling_ignored"] = self.stats.get("sibling_ignored", 0) + 1
        return True

    async def handle_result(self, inc: Incoming, msg: Result, nursery: trio.Nursery | PeerTasks) -> None:
        tasks = self._tasks(nursery)
        r = msg.receipt
        self._note_swarm(inc, r.protocol_id)
        foreign = r.protocol_id != self.ctx.protocol_id
        sibling = foreign and not self.any_protocol and self.is_sibling(r.protocol_id)
        if foreign and not self.any_protocol and not sibling:
            return self.reject(inc, f"result under another protocol ({r.protocol_id[:12]})", "other_protocol")
        if sibling and r.status not in SIBLING_STATUSES:  # honest traffic of a topic joined: counted, logged quietly
            return self.refuse(inc.from_peer, "Result", f"a {r.status} result of sibling protocol {r.protocol_id[:12]}: "
                               "only kept changes cross protocols", "sibling_not_kept", level=logging.DEBUG)
        if foreign and not sibling and not self._room_for(r.protocol_id):
            return self.reject(inc, f"this relay already stores {MAX_PROTOCOLS} protocols", "too_many_protocols")
        if r.peer == self.self_peer:
            return
        ledger, ws = self.ctx.ledger, self.ctx.workspace
        kind = "baseline" if r.status == "baseline" else "experiment"
        run = Run(exp_id=r.exp_id, commit_id=r.commit, protocol_id=r.protocol_id, kind=kind, status=r.status,
                  origin="peer", peer=r.peer, parent=r.parent, val_bpb=r.value, seed=r.seed,
                  training_seconds=r.training_seconds, memory_gb=r.memory_gb, finished_at=r.ts,
                  received_at=inc.received_at, description=msg.description, hardware=r.hardware)
        receipt_bytes = r.canonical_bytes()
        if not ledger.add_peer_run(run, receipt_bytes, msg.signature, msg.public_key):
            self.stats["duplicates"] += 1
            # A kept result recorded before a restart is in the ledger but not among the coordinator's
            # candidates (they live in memory): offer it again, once per process, when it is replayed.
            if r.status == "kept" and r.exp_id not in self._reoffered and self.wants is not None and self.wants(r.exp_id):
                self._reoffered.add(r.exp_id)
                tasks.start_soon(inc.from_peer, "intake.commit", self.complete_commit, inc.from_peer, r.commit,
                                 r.exp_id, msg, run, True)
            return
        if sibling:  # an idea to try here (research/io/ideas.py); its number stays with its protocol
            self.stats["sibling_results"] = self.stats.get("sibling_results", 0) + 1
        else:
            self.claims.on_result(r.peer, r.exp_id)
        ledger.add_experiment(r.exp_id, r.protocol_id, r.parent, r.tree, r.commit, msg.description, "peer", r.peer,
                              inc.received_at)
        self.stats["results"] += 1
        log.info("result from %s: %s %s val_bpb %s%s", r.peer[:16], r.exp_id[:10], r.status, r.value,
                 f" (sibling protocol {r.protocol_id[:12]})" if sibling else "")
        inline = [RawObject(o.oid, o.kind, o.data) for o in msg.objects] + self.resolve_deltas(inc, msg)
        if inline:
            try:
                ws.write_objects(inline)
            except WorkspaceError as e:
                self.reject(inc, f"inline objects: {e}", "bad_objects")
        self.note_code_key(r.exp_id, r.commit)
        # Only a kept result can become a baseline; the commit of any other is completed from what came
        # inline, never fetched: under load, fetches for hundreds of discarded results queued ahead of
        # the one result every node needed (measured: a best result adopted 140 s late).
        tasks.start_soon(inc.from_peer, "intake.commit", self.complete_commit, inc.from_peer, r.commit, r.exp_id, msg,
                         run, r.status == "kept")

    async def _fetch_from(self, source: str, commit: str) -> bool:
        """Fetch the commit's missing ancestry from one peer (what arrives is kept even on failure)."""
        ws = self.ctx.workspace
        wanted = incomplete_ancestry(ws, commit)
        rounds = 0
        try:
            while wanted and rounds < MAX_FETCH_ROUNDS:
                rounds += 1
                with trio.fail_after(FETCH_TIMEOUT_S):
                    objs = await self.net.fetch_objects(source, wanted)
                got = {o.oid for o in objs}
                try:
                    ws.write_objects([RawObject(o.oid, o.kind, o.data) for o in objs])
                except WorkspaceError as e:  # the peer served objects that do not parse: nothing written
                    self.refuse(source, "objects", str(e), "bad_objects")
                    raise
                self.stats["fetched_objects"] += len(objs)
                lacking = [w for w in wanted if w not in got]
                if lacking:
                    raise WorkspaceError(f"peer does not have {len(lacking)} object(s), e.g. {lacking[0]}")
                wanted = incomplete_ancestry(ws, commit)
            return not wanted
        except (WorkspaceError, trio.TooSlowError, Exception) as e:  # noqa: BLE001 - a peer may vanish
            self.stats["fetch_failures"] += 1
            log.info("could not complete commit %s from %s: %s", commit[:7], source[:16], e)
            return False

    def resolve_deltas(self, inc: Incoming, msg: Result) -> list[RawObject]:
        """Rebuild a result's delta-encoded blobs from their bases in the local repo (checked ids).

        A missing base is normal (this node lacks the parent commit's objects); a delta that does not
        rebuild to its declared id is the announcer's fault and is rejected with the reason. Either
        way the blob stays missing and :meth:`complete_commit` fetches it whole.
        """
        ws = self.ctx.workspace
        out: list[RawObject] = []
        for d in msg.deltas:
            try:
                if ws.has_object(d.oid):
                    continue
                base = ws.read_object(d.base)
                if base is None:
                    self.stats["delta_fallbacks"] += 1
                    log.info("delta %s from %s: base %s not here; fetching it whole", d.oid[:10],
                             inc.from_peer[:16], d.base[:10])
                    continue
                if base.kind != 3:
                    raise WireError(f"base {d.base[:10]} is not a blob")
                obj = d.apply(base.data)
            except WireError as e:
                self.stats["delta_fallbacks"] += 1
                self.reject(inc, f"delta {d.oid[:10]}: {e.reason}", "bad_delta")
                continue
            except Exception as e:  # noqa: BLE001 - never let one peer's delta stop the result
                self.stats["delta_fallbacks"] += 1
                self.reject(inc, f"delta {d.oid[:10]}: {type(e).__name__}: {e}", "bad_delta")
                continue
            out.append(RawObject(obj.oid, obj.kind, obj.data))
            self.stats["delta_objects"] += 1
        return out

    async def complete_commit(self, peer: str, commit: str, exp_id: str, msg: Result | None = None,
                              run: Run | None = None, fetch: bool = True) -> bool:
        """Fetch whatever the commit still lacks, from `peer` (the announcer) and, failing that, from up
        to FETCH_FALLBACK_PEERS connected peers (they hold the commit once they have processed the
        result, and need no new connection); set its experiment ref when complete."""
        ws = self.ctx.workspace
        if not fetch and incomplete_ancestry(ws, commit):
            self.stats["not_fetched"] += 1
            return False
        try:
            for attempt, pause in enumerate((*FETCH_RETRY_S, None)):
                async with self.fetch_limit:
                    others = [p.peer_id for p in self.net.peers() if p.peer_id not in (peer, self.self_peer)]
                    random.shuffle(others)
                    sources = [peer, *others[:FETCH_FALLBACK_PEERS]]
                    for source in sources:
                        if not incomplete_ancestry(ws, commit):
                            break
                        if await self._fetch_from(source, commit):
                            break
                if not incomplete_ancestry(ws, commit):
                    break
                if pause is None or (commit not in self._retrying and len(self._retrying) >= MAX_RETRYING):
                    log.warning("could not complete commit %s of %s from %d peer(s) in %d tries; it stays a partial "
                                "result", commit[:7], exp_id[:10], len(sources), attempt + 1)
                    return False
                # a kept result is what peers adopt and build on: a stream that failed to open under load
                # (measured: once, on a busy machine) must not leave it partial for good; at most
                # MAX_RETRYING commits wait at once, so a peer announcing objects it never serves costs
                # no more than before
                self._retrying.add(commit)
                await trio.sleep(pause)
        finally:
            self._retrying.discard(commit)
        if ws.is_complete(commit) and not incomplete_ancestry(ws, commit):
            try:
                protocol = run.protocol_id if run is not None else self.ctx.protocol_id
                if ws.tree_of(commit) and experiment_id(protocol, ws.tree_of(commit)) != exp_id:
                    log.warning("commit %s does not match experiment id %s; not referenced", commit[:7], exp_id[:10])
                    return False
                ws.set_experiment_ref(exp_id, commit)
                self.note_code_key(exp_id, commit)
            except WorkspaceError as e:
                log.warning("commit %s: %s", commit[:7], e)
                return False
            if (self.on_result is not None and msg is not None and run is not None
                    and run.protocol_id == self.ctx.protocol_id):  # a relay only stores other swarms' results
                try:
                    await self.on_result(msg, run)
                except Exception:  # noqa: BLE001 - one peer's result must never take the node down
                    log.exception("processing %s's result %s failed", peer[:16], exp_id[:10])
            return True
        return False
