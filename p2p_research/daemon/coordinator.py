"""The swarm side of a node: dedup before running, trust checks, verification and adoption.

Decisions come from the sans-IO `research.swarm.SwarmState` and `research.trust`; this module performs
them: it checks a received commit's whole lineage against the trust policy, re-runs peers' claims
through the engine (verifications, announced as signed receipts), adopts better baselines, tracks each
peer's reputation in the ledger, and resolves two nodes claiming the same experiment.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from p2p_research.config import NodeConfig
from p2p_research.daemon.messages import make_receipt
from p2p_research.net.boundary import Faults, contained
from p2p_research.research import negatives, speculation
from p2p_research.research.claims import ClaimBook
from p2p_research.research.io.context import ResearchContext
from p2p_research.research.io.engine import ResearchEngine
from p2p_research.research.io.objects import incomplete_ancestry
from p2p_research.research.io.trust import check_lineage
from p2p_research.research.ownership import Ownership
from p2p_research.research.speculation import Branch, Revert
from p2p_research.research.swarm import (
    Adopt,
    Ignore,
    PeerClaim,
    Reputation,
    SwarmPolicy,
    SwarmState,
    Verify,
)
from p2p_research.research.turns import EndTurn, Turn, Verified, claim_yield, confirms, defer_s
from p2p_research.store.ledger import Run
from p2p_research.wire import Claim, Result, Verification, WireError, decode_receipt
from p2p_research.wire.receipts import sign_receipt

log = logging.getLogger("p2p_research.swarm")

@dataclass
class CoordinatorDeps:
    """What the coordinator needs from the node, named: no reference back to the daemon.

    `engine` returns worker 0 (None until research starts), `engines` every worker; `publish` sends a wire message to the
    swarm; `dht_record` asks the DHT what it holds about an experiment; `claims` is shared with intake,
    which admits claims by the same book."""

    peer_id: str
    key_pair: Any
    ctx: ResearchContext
    config: NodeConfig
    engine: Callable[[], ResearchEngine | None]
    engines: Callable[[], list[ResearchEngine]]
    publish: Callable[[Any], Awaitable[None]]
    dht_record: Callable[[str], Awaitable[Any]]
    faults: Faults = field(default_factory=Faults)
    claims: ClaimBook = field(default_factory=ClaimBook)
    sparse: Callable[[], bool] = lambda: False  # research/flooding.py: whether confirmations go to replicas only
    owners: Ownership | None = None             # the peers heard recently (shared with the announcer); None: own
    # announces one of this node's own finished runs (the announcer's announce_result); the
    # coordinator holds back results kept on a speculative branch until the branch is verified
    announce_result: Callable[[Run], Awaitable[None]] | None = None


MAX_DHT_HINTS = 1024


def _receipt_seed(receipt: bytes) -> int | None:
    """The seed a DHT result record's receipt names (its signature was checked with the record), or None."""
    try:
        return decode_receipt(receipt).seed
    except (WireError, ValueError, TypeError):
        return None


class SwarmCoordinator:
    def __init__(self, deps: CoordinatorDeps) -> None:
        self.deps = deps
        self.peer_id = deps.peer_id
        cfg = deps.config
        self.trust = deps.ctx.trust()
        self.state = SwarmState(SwarmPolicy(deps.peer_id, cfg.verification.policy, 0.002,
                                            cfg.verification.tolerance, cfg.verification.refuted_threshold,
                                            cfg.verification.quorum, cfg.verification.replicas,
                                            vouch_after=cfg.verification.vouch_after,
                                            trusted=frozenset(cfg.trust.trusted_peers)))
        self.defer_s = cfg.verification.defer_s
        self.accepted: set[str] = set()
        self.following = False  # set once this node stops proposing: adopt by rank, not by margin
        #: the peers heard recently (claims, results), on the ring that assigns candidates to owners
        self.owners = deps.owners if deps.owners is not None else Ownership(deps.peer_id)
        self._first_result: OrderedDict[str, str] = OrderedDict()  # exp id -> first peer whose result completed
        #: negative reports read from the DHT that were only hints (exp id -> report), held against this
        #: node's run of the experiment like the ledger's (check_negatives); bounded, oldest first out
        self._dht_hints: OrderedDict[str, negatives.Report] = OrderedDict()
        self.stats = {"trust_rejected": 0, "verified_confirmed": 0, "verified_refuted": 0, "adopted": 0,
                      "ignored_peer_results": 0, "yielded": 0, "yield_refused": 0, "speculative_kept": 0,
                      "branches_dropped": 0, "negatives_reproduced": 0, "negatives_refuted": 0}
        #: speculation (research/speculation.py): the unverified claims the baseline rests on, and this
        #: node's results kept on that branch, announced once it is verified
        self.branch, self._held_runs = self._load_branch()
        self._load_reputation()
        self.faults: Faults = deps.faults
        #: claims that count here and the yield budget; shared with intake, which admits claims
        self.claims: ClaimBook = deps.claims

    @property
    def ctx(self) -> ResearchContext:
        return self.deps.ctx

    @property
    def engine(self) -> ResearchEngine | None:
        return self.deps.engine()

    # --- persistence ------------------------------------------------------------------------------
    def _load_reputation(self) -> None:
        saved = self.ctx.ledger.get_meta("reputation", {}) or {}
        for peer, r in saved.items():
            self.state.reputation[peer] = Reputation(**r)
        self.state.settled |= set(self.ctx.ledger.get_meta("settled", []) or [])

    def _save_reputation(self) -> None:
        self.ctx.ledger.set_meta("reputation", {p: vars(r) for p, r in self.state.reputation.items()})
        self.ctx.ledger.set_meta("settled", sorted(self.state.settled)[-5000:])

    def _load_branch(self) -> tuple[Branch, list[Run]]:
        """The speculative branch open when the node stopped, and its held results: its claims are re-run
        first, its held results stay held until then (research/speculation.py)."""
        saved = self.ctx.ledger.get_meta("speculation", None)
        branch = Branch.from_doc(saved.get("branch") if isinstance(saved, dict) else None)
        held = set(saved.get("held") or []) if isinstance(saved, dict) and branch.open else set()
        if not held:
            return branch, []
        runs = [r for r in self.ctx.ledger.runs(origin="local", kind="experiment") if r.run_id in held]
        log.info("a speculative branch was open when the node stopped: %d claim(s) to re-run, %d result(s) held",
                 len(branch.resting), len(runs))
        return branch, runs

    def _save_branch(self) -> None:
        self.ctx.ledger.set_meta("speculation", {"branch": self.branch.to_doc(),
                                                 "held": [r.run_id for r in self._held_runs]})

    def reputation_of(self, peer: str) -> dict[str, Any]:
        r = self.state.reputation.get(peer, Reputation())
        return {"confirmed": r.confirmed, "refuted": r.refuted, "earned": r.earned, "vouches": self.state.vouches(peer),
                "ignored": self.state.ignored(peer)}

    # --- trust ------------------------------------------------------------------------------------
    def accepted_commits(self) -> set[str]:
        ws, ledger = self.ctx.workspace, self.ctx.ledger
        acc = {ws.genesis} | {b.commit_id for b in ledger.baseline_history(self.ctx.protocol_id)}
        acc |= {r.commit_id for r in ledger.runs(origin="local", kind="experiment")}
        return acc | self.accepted

    def check_trust(self, commit: str, peer: str) -> tuple[bool, str]:
        ok, reason = check_lineage(self.ctx.workspace, commit, self.accepted_commits(), self.trust, peer)
        if ok:
            self.accepted.add(commit)
        return ok, reason

    def first_announcer(self, exp_id: str, peer: str) -> str:
        """Who found `exp_id` as far as this node can tell: the peer whose claim on it came first here
        (a copier sees the finder's claim or result before it can copy it), else the first peer whose
        result for it completed here (its commit checked against the id). Only the finder earns trust
        by a confirmation (a copy of another's result, re-signed, earns nothing)."""
        claimant = self.ctx.ledger.first_claimant(exp_id)
        if claimant is not None:
            return claimant
        first = self._first_result.setdefault(exp_id, peer)
        while len(self._first_result) > 20_000:
            self._first_result.popitem(last=False)
        return first

    def wants(self, exp_id: str) -> bool:
        """Whether a peer's kept result is still worth considering: neither settled nor pending."""
        return exp_id not in self.state.settled and not any(k[0] == exp_id for k in self.state.candidates)

    # --- intake callbacks -------------------------------------------------------------------------
    async def on_result(self, msg: Result, run: Run) -> None:
        """A peer's result whose commit is now complete locally."""
        r = msg.receipt
        self.state.note_peer(r.peer)
        self.note_heard(r.peer)
        if r.status not in ("kept", "baseline"):
            return
        if incomplete_ancestry(self.ctx.workspace, r.commit):
            log.info("%s's result %s: its lineage is not complete here yet; not a candidate", r.peer[:16], r.exp_id[:10])
            return
        ok, reason = self.check_trust(r.commit, r.peer) if r.status == "kept" else (True, "baseline")
        if not ok:
            self.stats["trust_rejected"] += 1
            log.warning("rejected %s's change %s: %s (never executed)", r.peer[:16], r.exp_id[:10], reason)
            self.ctx.ledger.note_peer_result_reason(r.exp_id, r.peer, f"rejected by trust policy: {reason}")
        if r.value is None or r.status != "kept":
            return
        claim = PeerClaim(r.exp_id, r.commit, r.peer, r.value, r.seed, run.received_at or time.time(),
                          first=self.first_announcer(r.exp_id, r.peer) == r.peer)
        ignore = self.state.on_peer_result(claim, ok, reason, r.status)
        if isinstance(ignore, Ignore) and "refuted too often" in ignore.reason:
            self.stats["ignored_peer_results"] += 1
            log.info("ignoring %s's result %s: %s", r.peer[:16], r.exp_id[:10], ignore.reason)

    async def on_claim(self, claim: Claim, ts: float | None = None) -> None:
        """Another node claimed an experiment: if I am running the same one and it wins, I yield.

        `ts` is the claim's time as this node's clock bounds it (intake's admission); the yield itself
        comes out of a budget (research.claims), so no peer can take more than ~1 % of this node's runs."""
        self.note_heard(claim.peer)
        self.state.note_peer(claim.peer)
        running = [e for e in self.deps.engines() or [self.engine] if e is not None
                   and e.progress.exp_id == claim.exp_id]
        eng = running[0] if running else None
        if eng is None or claim.peer == self.peer_id:
            return
        if self._yields_to(claim.exp_id, claim.peer, claim.ts if ts is None else ts, eng.progress.experiments_done):
            if eng.yield_current(claim.exp_id, f"yielded to {claim.peer[:16]}'s claim"):
                self.claims.note_yield(claim.peer)
                self.stats["yielded"] += 1
                log.info("yielding experiment %s to %s (simultaneous claim)", claim.exp_id[:10], claim.peer[:16])

    def _yields_to(self, exp_id: str, peer: str, ts: float, runs_finished: int,
                   claims: list[dict[str, Any]] | None = None) -> bool:
        """Whether this node's run of `exp_id` gives way to `peer`'s claim made at `ts` (as this node's
        clock bounds it): research/turns.claim_yield. `claims`: the ledger's claims on `exp_id`, where
        the caller has them already."""
        mine = [c for c in (self.ctx.ledger.claims(exp_id) if claims is None else claims) if c["peer"] == self.peer_id]
        if not mine:
            return False
        confirmed = self.state.reputation.get(peer, Reputation()).confirmed
        what = claim_yield((mine[0]["ts"], self.peer_id), (ts, peer), confirmed, runs_finished, self.claims)
        if what == "over budget":
            self.stats["yield_refused"] += 1
            log.info("not yielding %s to %s: over the yield budget", exp_id[:10], peer[:16])
        return what == "yield"

    def contested(self, exp_id: str, runs_finished: int) -> str | None:
        """Called as this node's run of `exp_id` starts, once its own claim is recorded: a peer's claim
        that came in after this node's proposer found the experiment unknown, but before the run could
        yield (the engine had no run to stop yet), and that wins. Why the run gives way, or None.
        Without this, two nodes whose claims crossed in the window both ran (seen under load)."""
        claims = self.ctx.ledger.claims(exp_id)
        for c in claims:
            if c["peer"] != self.peer_id and self._yields_to(exp_id, c["peer"], c["ts"], runs_finished, claims):
                self.claims.note_yield(c["peer"])
                self.stats["yielded"] += 1
                log.info("yielding experiment %s to %s (its claim came as the run started)", exp_id[:10],
                         c["peer"][:16])
                return f"yielded to {c['peer'][:16]}'s claim"
        return None

    async def on_verification(self, msg: Verification, from_peer: str) -> None:
        r = msg.receipt
        run = Run(exp_id=r.exp_id, commit_id=r.commit, protocol_id=r.protocol_id, kind="verification", status=r.status,
                  origin="peer", peer=r.peer, parent=r.parent, val_bpb=r.value, seed=r.seed, received_at=time.time(),
                  finished_at=r.ts, description=f"{r.status} {msg.target_peer[:16]}'s claim {msg.claimed_value}",
                  hardware=r.hardware)
        self.state.note_peer(r.peer)
        if self.ctx.ledger.add_peer_run(run, r.canonical_bytes(), msg.signature, msg.public_key):
            confirmed = confirms(r.status, r.value, msg.claimed_value, self.state.policy.tol)
            self.state.on_peer_verification(r.exp_id, r.peer, msg.target_peer, confirmed, msg.claimed_value)

    def on_presence(self, peer: str) -> None:
        """A member of the swarm is alive (network.announce = kept floods no claims): it keeps its share
        of the candidates and may be a verification replica."""
        self.note_heard(peer)
        self.state.note_peer(peer)

    # --- dedup --------------------------------------------------------------------------------------
    def note_heard(self, peer: str) -> None:
        self.owners.note(peer, time.time())

    def heard_peers(self) -> list[str]:
        """The peers heard from recently (claims, results, presence) on this protocol."""
        self.owners.expire(time.time())
        return list(self.owners.heard)

    def owns(self, exp_id: str) -> bool:
        """Whether this node owns `exp_id` among the nodes heard from recently (research/ownership.py):
        owners partition every baseline's candidates."""
        return self.owners.owns(exp_id, time.time(), self.state.ignored)

    def reports(self, exp_id: str) -> list[negatives.Report]:
        """Every report about `exp_id` this node holds: its ledger's, and a DHT record's that was a hint."""
        out = [negatives.Report("" if origin == "local" else peer, status, value, seed)
               for origin, peer, status, value, seed in self.ctx.ledger.reports(exp_id)]
        hint = self._dht_hints.get(exp_id)
        if hint is not None and all(r.peer != hint.peer for r in out):
            out.append(hint)
        return out

    def tried(self, exp_id: str, seed: int | None = None) -> negatives.Tried:
        """What this node's ledger proves about `exp_id` (research/negatives.py), for a worker at `seed`."""
        if not self.ctx.ledger.knows(exp_id):
            return negatives.Tried.NEW
        reports = self.reports(exp_id)
        if not reports:  # proposed here, or announced without a run yet
            return negatives.Tried.TRIED
        return negatives.tried(reports, self.state.vouches, self.state.ignored, seed)

    def check_negatives(self, exp_id: str, measured: float | None, seed: int) -> None:
        """This node ran `exp_id`: hold its value against the negative reports of unaccountable peers."""
        checked = negatives.check(self.reports(exp_id), measured, seed, self.state.policy.tol, self.state.vouches)
        for peer, claimed, ok in checked:  # a value each: check() judges no crash report and no failed run
            self.state.on_negative_checked(peer, ok)
            self.stats["negatives_reproduced" if ok else "negatives_refuted"] += 1
            if not ok:
                log.warning("%s reported %s val_bpb %.6f, and this node's run measured %.6f: refuted (%s)",
                            peer[:16], exp_id[:10], claimed, measured,
                            "now ignored" if self.state.ignored(peer) else "reputation lowered")
        if any(not ok for _, _, ok in checked):  # only a refutation changes a reputation
            self._save_reputation()

    async def is_known(self, exp_id: str, seed: int | None = None) -> negatives.Tried:
        """Known elsewhere: an active claim by another node, or a DHT record (late joiners, and every
        claim and negative result of a sparse swarm), a negative one counting as research/negatives.py
        says (a hint only, from a peer this node has no reason to trust)."""
        now = time.time()
        if any(c["peer"] != self.peer_id for c in self.ctx.ledger.claims(exp_id, active_at=now)):
            return negatives.Tried.TRIED
        rec = await self.deps.dht_record(exp_id)
        if rec is None or rec.peer == self.peer_id:
            return negatives.Tried.NEW if rec is None else negatives.Tried.TRIED
        if rec.state == "claim":
            return negatives.Tried.TRIED if rec.lease_until > now else negatives.Tried.NEW
        report = negatives.dht_report(rec.peer, rec.status, rec.value, _receipt_seed(rec.receipt))
        found = negatives.tried([report], self.state.vouches, self.state.ignored, seed)
        if found is negatives.Tried.HINT:  # held against this node's run, should it run the experiment
            self._dht_hints.pop(exp_id, None)
            self._dht_hints[exp_id] = report
            while len(self._dht_hints) > MAX_DHT_HINTS:
                self._dht_hints.popitem(last=False)
        return found

    # --- between experiments ----------------------------------------------------------------------
    def baseline_rank(self) -> tuple[float, str] | None:
        """The current baseline's place in the swarm's order: (announced value, experiment id).

        The announced value is what its measurer published: ours for our own baseline, the claimant's
        for an adopted one (our re-run of it may differ by noise, and would order nodes differently)."""
        eng = self.engine
        b = self.ctx.ledger.baseline(self.ctx.protocol_id)
        if eng is None or eng.loop is None or eng.loop.baseline_value is None:
            return None
        if b is None or b.commit_id != eng.loop.baseline_commit:
            return eng.loop.baseline_value, ""
        value = b.val_bpb
        if b.source_peer and b.source_peer != self.peer_id:
            claimed = self.ctx.ledger.peer_claimed_value(b.exp_id, b.source_peer)
            if claimed is not None:
                value = claimed
        return (value if value is not None else eng.loop.baseline_value), b.exp_id

    def rank_for(self, eng: ResearchEngine) -> tuple[float, str] | None:
        """The baseline's rank while this node follows: once it stopped proposing, or was told to (a
        drain, `-n` reached) even while a turn begun before is still going: that turn's remaining decisions
        adopt by rank and do not wait for replicas (a following node has no research to spend the wait on;
        a storm's turns of eight 15-s re-runs otherwise reached the swarm's best after the settle)."""
        stopping = eng.loop is not None and eng.loop.stopping
        return self.baseline_rank() if self.following or stopping else None

    def turn(self, eng: ResearchEngine) -> Turn:
        """A turn between `eng`'s runs (research/turns.py), on this node's swarm state."""
        return Turn(self.state, defer=lambda: defer_s(self.defer_s, eng.expected_seconds()),
                    margin=lambda: eng.margin, sparse=self.deps.sparse,
                    branch=lambda: self.branch.to_verify(self.state))

    # --- speculation (research/speculation.py) ------------------------------------------------------
    def speculation(self) -> PeerClaim | None:
        """The engine's hook: the unverified peer claim to build the next proposal on, if any."""
        eng = self.engine
        if eng is None or eng.loop is None or self.following:
            return None
        return speculation.choose(self.state, self.branch, eng.loop.baseline_value)

    def built_on(self, claim: PeerClaim, before_commit: str, before_value: float | None) -> None:
        """The engine's hook: an experiment built on `claim` was kept."""
        self.branch.built(claim, before_commit, before_value)
        self.stats["speculative_kept"] += 1
        self._save_branch()

    async def announce_own(self, run: Run) -> None:
        """The engine's on_result: a kept result that rests on an unverified claim waits for the branch."""
        if run.status == "kept" and self.branch.open:
            self._held_runs.append(run)
            self._save_branch()
            log.info("result %s is kept on a speculative branch: announced once %d claim(s) under it are verified",
                     run.exp_id[:10], len(self.branch.resting))
            return
        if self.deps.announce_result is not None:
            await self.deps.announce_result(run)

    async def _check_branch(self, eng: ResearchEngine) -> None:
        step = self.branch.check(self.state)
        held, release = self._held_runs, False
        if isinstance(step, Revert):
            self.stats["branches_dropped"] += 1
            log.warning("dropping the speculative branch: %s; back to %s (val_bpb %.6f)", step.reason,
                        step.commit[:7], step.value)
            eng.revert(step.commit, step.value, step.reason)
            for run in held:
                assert run.run_id is not None
                self.ctx.ledger.finish_run(run.run_id, "discarded", reason=f"its speculative branch was dropped: "
                                                                          f"{step.reason}"[:500])
                run.status = "discarded"
            release = True
        elif not self.branch.open and held:
            release = True
        if release:
            self._held_runs = []
            self._save_branch()
            for run in held:
                if self.deps.announce_result is not None:
                    await self.deps.announce_result(run)

    async def between(self, eng: ResearchEngine | None = None) -> list[tuple[str, str, str]]:
        """Verify and adopt the best pending peer result(s) before proposing anything new (on `eng`,
        the worker that asks; worker 0 by default). Returns the turn's decisions."""
        eng = eng or self.engine
        if eng is None or eng.loop is None:
            return []
        turn = self.turn(eng)
        await self._check_branch(eng)
        while True:
            action = turn.next_action(eng.loop.baseline_value, self.rank_for(eng), time.time())
            if isinstance(action, EndTurn):
                return turn.decisions
            # the boundary of one peer's candidate: whatever its commit makes our code raise, the
            # candidate is dropped (settled) and research goes on
            await contained(self.faults, action.claim.peer, "swarm.candidate", self._carry_out, turn, action, eng)
            self._save_reputation()
            await self._check_branch(eng)

    async def _carry_out(self, turn: Turn, action: Verify | Adopt, eng: ResearchEngine) -> None:
        try:
            if isinstance(action, Verify):
                await self.verify(turn, action.claim, eng)
            else:
                self.adopt(action, eng)
        except Exception:
            turn.drop(action)
            raise

    def adopt(self, decision: Adopt, eng: ResearchEngine) -> None:
        c = decision.claim
        eng.adopt(c.commit, decision.value, decision.reason, c.exp_id, c.peer)
        self.stats["adopted"] += 1
        self.ctx.ledger.set_meta("last_adoption", {"exp_id": c.exp_id, "peer": c.peer, "value": decision.value,
                                                   "announced_at": c.received_at, "adopted_at": time.time()})
        log.info("adopted %s from %s as baseline (val_bpb %.6f): %s", c.exp_id[:10], c.peer[:16],
                 decision.value, decision.reason)

    async def verify(self, turn: Turn, claim: PeerClaim, eng: ResearchEngine) -> Verified:
        """Re-run `claim` through `eng` (the harness measures it), judge it, and announce the verdict; an
        adoption that follows is the turn's next action."""
        assert eng.loop is not None
        log.info("verifying %s's claim %s (val_bpb %.6f)", claim.peer[:16], claim.exp_id[:10], claim.value)
        er = await eng.execute(claim.commit, "verification", f"verification of {claim.peer[:16]}'s result", claim.seed,
                               claim.exp_id)
        measured = er.outcome.summary.val_bpb if er.outcome and er.outcome.ok and er.outcome.summary else None
        done = turn.handle(measured, eng.loop.baseline_value, self.rank_for(eng))
        verdict = done.verdict
        self.branch.verdict(claim, verdict == "confirmed")
        self._save_branch()
        self.stats[f"verified_{verdict}"] += 1
        assert er.run.run_id is not None
        why = f" ({er.outcome.reason})" if measured is None and er.outcome is not None and er.outcome.reason else ""
        self.ctx.ledger.finish_run(er.run.run_id, verdict, reason=f"claimed {claim.value:.6f}, measured "
                                   f"{'crash' if measured is None else f'{measured:.6f}'}{why}"[:500])
        er.run.status = verdict
        (log.info if verdict == "confirmed" else log.warning)(
            "%s %s's claim %s: claimed %.6f, measured %s%s", verdict, claim.peer[:16], claim.exp_id[:10], claim.value,
            "crash" if measured is None else f"{measured:.6f}", why)
        if done.floods:
            await self.announce_verification(er.run, claim, verdict)
        return done

    async def announce_verification(self, run: Run, claim: PeerClaim, verdict: str) -> None:
        try:
            receipt = make_receipt(self.ctx, run, self.peer_id, status=verdict, target_peer=claim.peer,
                                   claimed_value=claim.value)
            sig = sign_receipt(receipt, self.deps.key_pair.private_key)
            msg = Verification(receipt=receipt, signature=sig, public_key=self.deps.key_pair.public_key.serialize())
            await self.deps.publish(msg)
        except Exception:  # noqa: BLE001 - announcing is best effort
            log.exception("could not announce a verification")
