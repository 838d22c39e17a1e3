"""A virtual node: the daemon's research and swarm decisions, driven in virtual time.

The decisions are the project's own: `research.loop.ResearchLoop` (keep or discard, baselines),
`research.swarm.SwarmState` (verification replicas, quorum, adoption, following by rank),
`research.claims` (claim ties and the yield budget), `research.ownership` (who proposes what),
`research.mutate.choose_changes` (the built-in proposer's mutations) and `research.combine` (which
wins combine, knob by knob). What the daemon does with I/O (git commits, training, gossip) is replaced
by its cost in time: a run takes `cost_s` and scores the surrogate objective of its constants, a
message reaches each node when the world's network model says. The turn between experiments (verify
and adopt, its cap, deferral, claim leases and yields) is `research.turns.Turn`, the one the daemon's
coordinator takes; then propose (a combination this node owns, else a mutation, preferring owned ones),
claim, run, announce, in the engine's order.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from p2p_research.research import flooding, speculation
from p2p_research.research import genesis as G
from p2p_research.research import loop as L
from p2p_research.research.claims import ClaimBook, claim_winner
from p2p_research.research.constants import apply_scalar_changes
from p2p_research.research.io.combine import MAX_CANDIDATES as MAX_WINS_COMBINED
from p2p_research.research.io.combine import Win, candidates, merge_knobs, stack_knobs
from p2p_research.research.io.surrogate import noisy_value
from p2p_research.research.life import Life, TakeTurn
from p2p_research.research.mutate import draw_changes, prepare_choices, step_scale
from p2p_research.research.negatives import Hints, Report, Tried, dht_report, tried
from p2p_research.research.pick import BUILTIN_TRIES, Merges, drive, owned_first, owned_only
from p2p_research.research.searchspace import SearchSpace
from p2p_research.research.speculation import Branch, Revert
from p2p_research.research.swarm import PeerClaim, SwarmPolicy, SwarmState, Verify
from p2p_research.research.turns import (
    ADOPTION_POLL_S,
    EndTurn,
    Turn,
    claim_lease_s,
    claim_yield,
    confirms,
    defer_s,
    liar_value,
)
from p2p_research.sim.des.world import Message, Proc, Process, World, peer_name
from p2p_research.store.status import COMPLETED

DHT_LOOKUPS_PER_PROPOSAL = flooding.DHT_LOOKUPS_SPARSE
MAX_WINS = 200             # store/ledger.py kept_wins: the best 200


def exp_id_of(constants: dict) -> str:
    """Content addressing: the same constants are the same experiment, whoever proposes them."""
    return hashlib.sha1(repr(sorted(constants.items())).encode()).hexdigest()


def commit_of(exp_id: str, parent: str) -> str:
    return hashlib.sha1(f"{exp_id}:{parent}".encode()).hexdigest()


@dataclass
class Shared:
    """What every virtual node shares: the search space, the objective, and the commits made so far."""

    space: SearchSpace
    genesis: dict
    budget_tokens: int
    cost_s: float
    margin: float
    verification: str
    combine: bool = True
    shared_genesis: bool = True     # research.genesis = shared: most nodes experiment before measuring it
    window_end: float = math.inf    # nodes stop proposing at this time and follow the swarm
    settle_end: float = math.inf
    family: str = "default"         # the surrogate's landscape (research/io/surrogate.py)
    constants: dict[str, dict] = field(default_factory=dict)   # commit -> constants
    parent: dict[str, str] = field(default_factory=dict)        # commit -> parent commit
    exp_of: dict[str, str] = field(default_factory=dict)        # commit -> experiment id
    values: dict[tuple[str, int], float | None] = field(default_factory=dict)
    _mutations: dict[tuple, tuple[dict, str]] = field(default_factory=dict)

    GENESIS = "0" * 40

    def __post_init__(self) -> None:
        self.constants[self.GENESIS] = dict(self.genesis)
        self.parent[self.GENESIS] = ""
        self.exp_of[self.GENESIS] = exp_id_of(self.genesis)

    def value(self, commit: str, seed: int) -> float | None:
        key = (commit, seed)
        if key not in self.values:
            self.values[key] = noisy_value(self.constants[commit], seed, self.budget_tokens, self.family)
        return self.values[key]

    def mutated(self, baseline: str, consts: dict, changes: dict) -> tuple[dict, str]:
        """The constants of `baseline` with `changes`, and their experiment id (cached: nodes on one
        baseline draw the same few hundred candidates again and again)."""
        key = (baseline, tuple(sorted((k, repr(v)) for k, (_, v) in changes.items())))
        hit = self._mutations.get(key)
        if hit is None:
            new = {**consts, **apply_scalar_changes(consts, {n: v for n, (_, v) in changes.items()})}
            hit = self._mutations[key] = (new, exp_id_of(new))
            if len(self._mutations) > 500_000:
                self._mutations.clear()
        return hit

    def commit(self, constants: dict, parent: str) -> tuple[str, str]:
        exp = exp_id_of(constants)
        c = commit_of(exp, parent)
        if c not in self.constants:
            self.constants[c], self.parent[c], self.exp_of[c] = constants, parent, exp
        return exp, c


@dataclass
class Stats:
    """What one node did, for the report."""

    runs: list[dict[str, Any]] = field(default_factory=list)          # every local run
    baselines: list[tuple[float, float]] = field(default_factory=list)  # (t, value) each time it improved
    adoptions: list[dict[str, Any]] = field(default_factory=list)
    dedup: dict[str, int] = field(default_factory=lambda: {"known_in_ledger": 0, "claimed_elsewhere": 0,
                                                           "negatives_hinted": 0, "negatives_checked": 0})
    yielded: int = 0
    yield_refused: int = 0   # a later claim whose yield the budget refused (research/claims.py): both run
    dht_lookups: int = 0
    speculative: int = 0   # proposals built on a peer result not yet verified here
    dropped_branches: int = 0  # speculative branches dropped when the claim under them was refuted
    gaps: list[float] = field(default_factory=list)


class VirtualNode:
    def __init__(self, world: World, shared: Shared, index: int, seed: int, liar: bool = False,
                 solo: bool = False, policy: dict[str, Any] | None = None) -> None:
        self.world, self.shared, self.index = world, shared, index
        self.name = peer_name(index) if not solo else "solo"
        self.seed, self.liar, self.solo = seed, liar, solo
        self.rng = random.Random(seed * 1_000_003)
        irng = random.Random(f"interests:{seed}")
        self.interests = {n: irng.lognormvariate(0.0, 1.2) for n in sorted(shared.space.params)}
        self.flooding = world.announce == "all" and not solo
        # as the engine: a node that hears peers' measurements (flooding) mostly leaves the genesis to them
        # (a liar lies about every experiment, so it needs the genesis value before its first)
        measure_first = G.measures_first(self.name, Shared.GENESIS, shared.shared_genesis and self.flooding and not liar)
        self.loop = L.ResearchLoop(Shared.GENESIS, None, shared.margin, measure_first=measure_first)
        p = policy or {}
        self.state = SwarmState(SwarmPolicy(self.name, shared.verification, shared.margin, None,
                                            p.get("refuted_threshold", 2), p.get("quorum", 2), p.get("replicas", 3),
                                            vouch_after=p.get("vouch_after", 1)))
        if not solo:  # every node hears every node (its claims, or its presence): one shared view of the swarm
            self.state.peers, self.state.ring = world.peers, world.ring
        self.claims = ClaimBook()
        self.stats = Stats()
        self.local: set[str] = set()           # experiment ids this node ran or claimed
        self.heard: set[str] = set()           # experiment ids of flooded results delivered here
        self.wins: list[Win] = []
        self._ptr = 0
        self._waiting: list[tuple[float, Message]] = []
        self._ancestry: tuple[str, list[str]] = ("", [])
        self._merged: Merges[str, dict] = Merges()
        self._choices: tuple[str, Any] = ("", None)
        self.baseline_source = -1               # node index whose result the baseline is (-1: own)
        self.rank_value: float | None = None    # the announced value of the baseline (following)
        self.baseline_exp = ""
        self.following = False
        self.proc: Proc | None = None
        self.running: tuple[str, Message, float] | None = None  # exp id, own claim, finish time
        self.last_run_end: float | None = None
        self._lookups_left = 0
        self._contested: set[str] = set()  # experiments whose claim this node re-flooded in a contest
        self._held: tuple[L.RunExperiment, float | None] | None = None  # the run whose verdict waits
        self.trace: list[tuple[float, list[tuple[str, str, str]]]] | None = None  # each turn's decisions, if asked
        self.branch = Branch()                  # speculation: what the baseline rests on (research/speculation.py)
        self._built_on: dict[str, PeerClaim] = {}  # proposal commit -> the unverified claim it was built on
        self._before: tuple[str, float | None] = ("", None)  # the baseline before the last experiment's verdict
        self._unannounced: list[tuple[str, str, float | None]] = []  # kept on an open branch, held
        self._proposals = 0
        self._hints = Hints(False, self.stats.dedup)  # this proposal's hinted candidates (research/negatives.py)

    # --- the process ------------------------------------------------------------------------------
    def start(self, at: float) -> None:
        self.proc = self.world.spawn(self.life(), at)
        if not self.flooding and not self.solo:
            self.world.spawn(self.presence(), at)

    def presence(self) -> Process:
        """announce=kept: claims no longer tell every node who is active, so each node floods a small
        presence message every `flooding.presence_interval` (ownership and replicas need the members)."""
        w = self.world
        while w.t < self.shared.settle_end:
            if w.down_until(self.index, w.t) is None:
                w.publish(Message(0, "presence", self.index, w.t))
            yield flooding.presence_interval(w.n - 1)

    def life(self) -> Process:
        sh, w = self.shared, self.world
        life = Life(self.loop, turns=True)
        while True:
            until = w.down_until(self.index, w.t)
            if until is not None:  # killed: back after the restart, from the ledger's state
                yield until - w.t
                continue
            action = life.next_step()
            if isinstance(action, TakeTurn):
                if w.t >= sh.window_end:
                    yield from self.follow()
                    return
                yield from self.between()
                life.turn_taken(action)
                continue
            if isinstance(action, L.Done):
                if w.t >= sh.window_end:
                    yield from self.follow()
                return
            if isinstance(action, L.MeasureBaseline):
                self._run_started()
                yield sh.cost_s
                value = sh.value(action.commit, self.seed)
                self._run_ended("baseline", action.commit, value)
                held = self.loop.handle(L.BaselineMeasured(action.commit, value))
                if value is not None:
                    self._note_baseline(value, -1, sh.exp_of[action.commit], value)
                    self._publish("baseline", sh.exp_of[action.commit], action.commit, "baseline", value)
                self._decided(held)
                continue
            if isinstance(action, L.AwaitBaseline):
                deadline = w.t + G.await_s(sh.cost_s)
                while G.still_waiting(value := self.learned(action.commit), w.t, deadline, self.researchers()):
                    yield min(0.25, deadline - w.t)
                if value is None:
                    self.loop.handle(L.BaselineUnavailable(action.commit))
                else:
                    self._decided(self.loop.handle(L.BaselineLearned(action.commit, value)))
                continue
            if isinstance(action, L.Propose):
                self._lookups_left = DHT_LOOKUPS_PER_PROPOSAL if not self.flooding else 0
                cost = w.net.own_work_s
                w.own_work(w.t, cost)
                yield w.cpu_wait(w.t, cost)
                proposal, lookup_s = self.propose(action.baseline_commit)
                if lookup_s:
                    yield lookup_s
                if proposal is None:
                    self.loop.handle(L.ProposalSkipped("no unknown experiment"))
                    continue
                exp, commit, description = proposal
                self.loop.handle(L.Proposed(exp, commit, description))
                continue
            if isinstance(action, L.RunExperiment):
                yield from self.experiment(action)

    def experiment(self, action: L.RunExperiment) -> Process:
        sh, w = self.shared, self.world
        claim = self._publish("claim", action.exp_id, action.commit)
        self.local.add(action.exp_id)
        finish = w.t + sh.cost_s
        assert self.proc is not None
        self.proc.interrupted = False
        self.running = (action.exp_id, claim, finish)
        self._watch_claims(action.exp_id, claim, finish)
        self._contest(action.exp_id, claim, finish)
        self._run_started()
        yield sh.cost_s
        self.running = None
        if self.proc.interrupted:
            self.proc.interrupted = False
            self.loop.handle(L.ExperimentAborted(action.exp_id))
            self._run_ended("aborted", action.commit, None, action.description)
            return
        value = measured = sh.value(action.commit, self.seed)
        if self.liar and self.loop.baseline_value is not None:
            value = liar_value(self.loop.baseline_value, action.exp_id)
        if self.loop.baseline_value is None and (learned := self.learned(self.loop.baseline_commit)) is not None:
            self.loop.handle(L.BaselineLearned(self.loop.baseline_commit, learned))
        self._run_ended("running", action.commit, value, action.description)
        self.stats.runs[-1]["measured"] = measured  # a liar's claim may differ: the report tells lies from luck
        self._held = (action, value)
        self._before = (self.loop.baseline_commit, self.loop.baseline_value)
        self._decided(self.loop.handle(L.ExperimentFinished(action.exp_id, action.commit, value)))

    def _decided(self, verdict: L.Verdict | None) -> None:
        """Record and announce an experiment's verdict (when it ends, or once the genesis value is known)."""
        if verdict is None or self._held is None:
            return
        sh = self.shared
        action, value = self._held
        assert verdict.exp_id == action.exp_id
        self._held = None
        for r in reversed(self.stats.runs):
            if r["exp_id"] == action.exp_id and r["status"] == "running":
                r["status"] = verdict.status
                break
        on = self._built_on.pop(action.commit, None)
        if verdict.status == "kept" and value is not None:
            if on is not None:
                self.branch.built(on, *self._before, len(self.stats.baselines))
            self._note_baseline(value, -1, action.exp_id, value)
            self.wins.append(Win(action.exp_id, action.commit, sh.parent[action.commit], value, action.description))
        if verdict.status == "kept" and self.branch.open:  # announced once the claims under it are verified
            self._unannounced.append((action.exp_id, action.commit, value))
        else:
            self._publish("result", action.exp_id, action.commit, verdict.status, value)

    def learned(self, commit: str) -> float | None:
        """The genesis value that peers' measurements delivered here agree on (research/genesis.py)."""
        w = self.world
        measured = {peer_name(m.peer): m.value for m in w.results.get(self.shared.exp_of[commit], ())
                    if m.kind == "baseline" and m.value is not None and m.peer != self.index
                    and w.delivery(m, self.index) <= w.t}
        return G.agreed_value(measured, G.agree_tol(self.shared.margin))

    def researchers(self) -> int:
        """Other nodes of the protocol this one hears (the daemon's `Node.researchers`): in the model every
        node hears every member of the swarm, a solo node none."""
        return 0 if self.solo else sum(1 for p in self.state.peers if p != self.name)

    def follow(self) -> Process:
        """Done proposing: adopt by rank until the settle ends, so the swarm converges on one baseline."""
        self.following = True
        while self.world.t < self.shared.settle_end:
            yield from self.between()
            yield ADOPTION_POLL_S

    # --- between experiments: verify and adopt ------------------------------------------------------
    def between(self) -> Process:
        """A turn between runs (research/turns.py), its re-runs spent in virtual time."""
        sh, w = self.shared, self.world
        self.pull()
        self._check_branch()
        defer = defer_s(None, sh.cost_s)
        turn = Turn(self.state, defer=lambda: defer, sparse=lambda: not self.flooding,
                    branch=lambda: self.branch.to_verify(self.state))
        while True:
            action = turn.next_action(self.loop.baseline_value, self._rank(), w.t)
            if isinstance(action, EndTurn):
                break
            if isinstance(action, Verify):
                c = action.claim
                self._run_started()
                yield sh.cost_s
                measured = sh.value(c.commit, c.seed)
                self._run_ended("verification", c.commit, measured, target=c.peer)
                done = turn.handle(measured, self.loop.baseline_value, self._rank())
                self.branch.verdict(c, done.verdict == "confirmed")
                self.stats.runs[-1]["status"] = done.verdict
                self._publish("verification", c.exp_id, c.commit, done.verdict, measured, target=int(c.peer[1:]),
                              claimed=c.value, local=not done.floods)
                self._check_branch()
                continue
            c = action.claim
            self.loop.adopt(c.commit, action.value)
            self.branch.adopted()
            source = int(c.peer[1:])
            self._note_baseline(action.value, source, c.exp_id, c.value)
            self.stats.adoptions.append({"t": w.t, "exp_id": c.exp_id, "from": source, "value": action.value,
                                         "announced_at": self._announced_at(c), "received_at": c.received_at,
                                         "rerun": action.reason.startswith("confirmed by a local")})
            self.pull()
        if self.trace is not None:
            self.trace.append((w.t, turn.decisions))

    def _check_branch(self) -> None:
        """Drop the speculative branch the baseline rests on once a claim under it is refuted; a claim
        confirmed here (or by a quorum) no longer holds the branch up."""
        step = self.branch.check(self.state)
        if isinstance(step, Revert):
            self.loop.adopt(step.commit, step.value)
            del self.stats.baselines[step.mark:]
            self.stats.dropped_branches += 1
            self.baseline_source, self.baseline_exp, self.rank_value = -1, self.shared.exp_of[step.commit], step.value
            dropped = {exp for exp, _, _ in self._unannounced}
            self.wins = [x for x in self.wins if x.peer or x.exp_id not in dropped]
            for exp, commit, value in self._unannounced:
                self._publish("result", exp, commit, "discarded", value)
            self._unannounced = []
        elif not self.branch.open and self._unannounced:
            for exp, commit, value in self._unannounced:
                self._publish("result", exp, commit, "kept", value)
            self._unannounced = []

    def _rank(self) -> tuple[float, str] | None:
        """While following, the baseline's place in the swarm's order (the coordinator's baseline_rank)."""
        # the coordinator's rank_for: once drained (DesSimulation drains every node at the window's end), a turn
        # begun before goes on by rank
        following = self.following or self.loop.stopping
        return (self.rank_value, self.baseline_exp) if following and self.rank_value is not None else None

    def _announced_at(self, c: PeerClaim) -> float:
        for m in self.world.results.get(c.exp_id, ()):
            if peer_name(m.peer) == c.peer:
                return m.t
        return c.received_at

    def pull(self) -> None:
        """Take in the flooded messages (kept results, verifications, baselines) that reached this node."""
        if self.solo:
            return
        w, now = self.world, self.world.t
        fresh = w.flooded[self._ptr:]
        self._ptr = len(w.flooded)
        pending = [(w.delivery(m, self.index) if at == math.inf else at, m) for at, m in self._waiting]
        pending += [(w.delivery(m, self.index), m) for m in fresh if m.peer != self.index]
        self._waiting = []
        for at, m in pending:
            if at == math.inf and m.sent == math.inf:  # still in its sender's outbox
                self._waiting.append((at, m))
                continue
            if at == math.inf:  # sent, and never reaches this node by gossip (records only)
                continue
            if at > now:
                self._waiting.append((at, m))
                continue
            self._receive(m, at)

    def _receive(self, m: Message, at: float) -> None:
        peer = peer_name(m.peer)
        if m.kind == "verification":
            confirmed = confirms(m.status, m.value, m.claimed, self.state.policy.tol)
            self.state.on_peer_verification(m.exp_id, peer, peer_name(m.target), confirmed, m.claimed)
            return
        if m.kind != "result" or m.status != "kept" or m.value is None:
            return
        self.heard.add(m.exp_id)
        first = self.world.first_claim.get(m.exp_id, m.peer) == m.peer
        self.state.on_peer_result(PeerClaim(m.exp_id, m.commit, peer, m.value, m.seed, at, first=first), True, "", "kept")
        if self.shared.combine:
            self.wins.append(Win(m.exp_id, m.commit, m.parent, m.value, "", peer))
            if len(self.wins) > 2 * MAX_WINS:
                self.wins = sorted(self.wins, key=lambda x: (x.val_bpb, x.exp_id))[:MAX_WINS]

    # --- proposing ----------------------------------------------------------------------------------
    def propose(self, baseline: str) -> tuple[tuple[str, str, str] | None, float]:
        """(exp id, commit, description) of the next experiment, or None; and the DHT lookup time spent."""
        sh = self.shared
        on = speculation.choose(self.state, self.branch, self.loop.baseline_value) if not self.solo else None
        if on is not None and on.commit in sh.constants:
            proposal, spent_s = self._propose_on(on.commit)
            if proposal is not None:
                self._built_on[proposal[1]] = on
                self.stats.speculative += 1
            return proposal, spent_s
        return self._propose_on(baseline)

    def _propose_on(self, baseline: str) -> tuple[tuple[str, str, str] | None, float]:
        sh = self.shared
        consts = sh.constants[baseline]
        spent = [0.0]
        # peers' negative reports (research/negatives.py), as the engine's is_known: a candidate only
        # unaccountable peers reported negative is passed over, except on every SAMPLE_EVERY-th proposal,
        # and taken when nothing else turns up
        self._proposals += 1
        self._hints = Hints.for_proposal(self._proposals, self.stats.dedup)
        combined = self._combination(baseline, consts, spent) if sh.combine else None
        if combined is not None:
            return combined, spent[0]
        if self._choices[0] != baseline:
            self._choices = (baseline, prepare_choices(consts, sh.space, self.interests))
        choices = self._choices[1]

        scale = step_scale(self.researchers())  # as the daemon's builtin proposer (research/mutate.py)

        def draws() -> Iterator[tuple[dict, str] | None]:
            for _ in range(BUILTIN_TRIES):
                changes = draw_changes(choices, sh.space, self.rng, scale)
                yield sh.mutated(baseline, consts, changes) if changes else None

        # the builtin proposer's order (research/pick.owned_first), with the (possibly remote) check last
        found = drive(owned_first(draws(), None if self.solo else lambda c: self.mine(c[1]), key=lambda c: c[1]),
                      lambda c: self.known(c[1], spent, c[0]))
        if found is not None:
            return self._make(found[0], baseline, "mutation"), spent[0]
        hinted = self._hints.fallback()
        if hinted is not None:
            return self._make(hinted, baseline, "mutation"), spent[0]
        return None, spent[0]

    def _make(self, constants: dict, baseline: str, description: str) -> tuple[str, str, str]:
        exp, commit = self.shared.commit(constants, baseline)
        return exp, commit, description

    def _combination(self, baseline: str, consts: dict, spent: list[float]) -> tuple[str, str, str] | None:
        """The builtin proposer's combination (research/pick.owned_only over Merges): the first win off the
        baseline's lineage, merged onto it, that this node owns and nobody ran or claimed."""
        sh = self.shared
        if self._ancestry[0] != baseline:
            chain, c = [], baseline
            while c:
                chain.append(c)
                c = sh.parent.get(c, "")
            self._ancestry = (baseline, chain)
        self._merged.start(baseline)

        def changes_of(win: Win) -> tuple[Win, dict, dict]:
            parent_c, win_c = sh.constants[win.parent], sh.constants[win.commit]
            return win, parent_c, {k: v for k, v in win_c.items()
                                   if parent_c.get(k) != v or type(parent_c.get(k)) is not type(v)}

        def merge(win: Win) -> dict | None:
            _, parent_c, changes = changes_of(win)
            knobs = merge_knobs(parent_c, consts, changes)
            return None if knobs is None else {**consts, **knobs}

        def merged() -> Iterator[tuple[dict, str, int] | None]:  # constants, exp id, wins in it
            cands = candidates(wins, self._ancestry[1], 4 * MAX_WINS_COMBINED)
            # stacks of several wins first (research/io/combine.stack_knobs), then each win alone
            for knobs, used in stack_knobs(consts, (changes_of(w) for w in cands)):
                new = {**consts, **knobs}
                yield new, exp_id_of(new), len(used)
            for win in cands:
                new = self._merged.get(win.commit, lambda w=win: merge(w))
                yield (new, exp_id_of(new), 1) if new is not None else None

        wins = [x for x in self.wins if not x.peer or getattr(self.state.reputation.get(x.peer), "refuted", 0) == 0]
        found = drive(owned_only(merged(), None if self.solo else lambda c: self.mine(c[1])),
                      lambda c: self.known(c[1], spent))
        if found is None:
            return None
        return self._make(found[0], baseline, "stack" if found[2] > 1 else "combination")

    def known_here(self, exp: str) -> bool:
        if exp in self.local or exp in self.heard:
            self.stats.dedup["known_in_ledger"] += 1
            return True
        return False

    def known(self, exp: str, spent: list[float], constants: dict | None = None) -> bool:
        """The engine's `is_known`: in this node's ledger, or claimed or announced elsewhere as far as it
        can tell (flooded claims and results that reached it; else a bounded number of DHT lookups)."""
        if self.known_here(exp):
            return True
        if self.solo:
            return False
        w, now = self.world, self.world.t
        lease = claim_lease_s(self.shared.cost_s)
        if self.flooding:
            reports = [Report(peer_name(m.peer), m.status, m.value) for m in w.results.get(exp, ())
                       if w.delivery(m, self.index) <= now]
            found = tried(reports, self.state.vouches, self.state.ignored) if reports else Tried.NEW
            if found is Tried.TRIED:
                return self._tried_or_hint(found, constants, "known_in_ledger")
            for m in w.claims.get(exp, ()):
                if m.peer != self.index and now < m.t + lease and w.delivery(m, self.index) <= now:
                    self.stats.dedup["claimed_elsewhere"] += 1
                    return True
            return self._tried_or_hint(found, constants, "known_in_ledger")
        if self._lookups_left <= 0:  # as the daemon: past the budget a candidate counts as new
            return False
        self._lookups_left -= 1
        self.stats.dht_lookups += 1
        spent[0] += w.dht_lookup(now)
        if any(m.peer != self.index and now < m.t + lease and w.in_dht(m, now) for m in w.claims.get(exp, ())):
            self.stats.dedup["claimed_elsewhere"] += 1
            return True
        reports = [dht_report(peer_name(m.peer), m.status, m.value)
                   for m in w.results.get(exp, ()) if m.peer != self.index and w.in_dht(m, now)]
        return self._tried_or_hint(tried(reports, self.state.vouches, self.state.ignored) if reports else Tried.NEW,
                                   constants, "claimed_elsewhere")

    def _tried_or_hint(self, found: Tried, constants: dict | None, counter: str) -> bool:
        """The engine's `is_known` on what the reports prove (research/negatives.py): a hint is passed
        over and kept for the fallback, except on a sampling proposal, which takes it."""
        if found is Tried.TRIED:
            self.stats.dedup[counter] += 1
            return True
        return found is Tried.HINT and self._hints.passes_over(constants)

    def mine(self, exp: str) -> bool:
        if self.solo:
            return True
        found = self.world.ring.first(exp, 1, lambda p: not self.state.ignored(p))
        return not found or found[0] == self.name

    # --- claims and yields ----------------------------------------------------------------------------
    def _watch_claims(self, exp: str, mine: Message, finish: float) -> None:
        """Claims on the same experiment that cross mine: each reaches the other node while it runs, and
        that node's `on_claim` decides, as the coordinator's does, whether its run gives way."""
        w = self.world
        if self.solo or not self.flooding:
            return
        for other in w.claims.get(exp, ()):
            if other.peer == self.index:
                continue
            node = w.nodes[other.peer]
            # only where the receiver's claim loses is an event worth scheduling (one that changes nothing
            # would still move the modelled CPU queue); on_claim decides the yield
            at = w.delivery(other, self.index)  # their claim reaches me while I run
            if w.t <= at < finish and claim_winner((mine.t, self.name), (other.t, node.name)) == node.name:
                w.at(at, lambda n=node, o=other: self.on_claim(o, n))
            if node.running is not None and node.running[0] == exp:  # mine reaches them while they run it
                at2 = w.delivery(mine, other.peer)
                if at2 < node.running[2] and claim_winner((other.t, node.name), (mine.t, self.name)) == self.name:
                    w.at(at2, lambda n=node, me=mine: n.on_claim(me, self))

    def _contest(self, exp: str, mine: Message, finish: float) -> None:
        """The daemon's contest of a sparse claim (daemon/announcer.py `_contest`): once the put has
        landed, the node looks its experiment up in the DHT again after each of CONTEST_CHECKS_S while it
        runs. The DHT keeps one claim per experiment, the newer lease; a node that finds another node's
        live claim there floods its own, once, and takes the other's through `on_claim`: both then settle
        it by the claim rule, as flooding nodes do. Without it, two sparse nodes that drew the same
        candidate within a lookup of each other both ran it (a storm's duplicates: 163 of 5,174
        experiments at 1,000 nodes, every pair started under 3 s apart)."""
        w = self.world
        if self.solo or self.flooding:
            return
        w.at(w.dht_stored_at(w.t) + flooding.CONTEST_CHECKS_S[0], lambda: self._contest_check(exp, mine, finish, 0))

    def _contest_check(self, exp: str, mine: Message, finish: float, k: int) -> None:
        w = self.world
        if self.running is None or self.running[0] != exp or self.running[1] is not mine:
            return
        now = w.t
        took = w.dht_lookup(now)
        self.stats.dht_lookups += 1
        lease = claim_lease_s(self.shared.cost_s)
        live = [m for m in w.claims.get(exp, ()) if w.in_dht(m, now) and now < m.t + lease]
        rec = max(live, key=lambda m: (m.t, m.peer)) if live else None  # the DHT holds the newer lease
        if rec is not None and rec.peer != self.index:
            other = w.nodes[rec.peer]
            if exp not in self._contested:  # flood mine once: it reaches whoever else runs it
                self._contested.add(exp)
                flood = Message(len(w.messages), "claim", self.index, mine.t, exp, commit=mine.commit)
                w.messages.append(flood)
                w.load.by_kind["claim (contest)"] += 1
                w.at(now + took, lambda: self._flood_contest(flood))
            w.at(now + took, lambda o=other, r=rec: self.on_claim(r, o))
        if k + 1 < len(flooding.CONTEST_CHECKS_S):
            at = now + took + flooding.CONTEST_CHECKS_S[k + 1]
            if at < finish:
                w.at(at, lambda: self._contest_check(exp, mine, finish, k + 1))

    def _flood_contest(self, flood: Message) -> None:
        """Publish a contest's claim (with whatever waits in the outbox, as a claim leaves) and have it
        reach every node that runs the experiment while it does."""
        w = self.world
        w.flush(self.index, flood)
        for m in w.claims.get(flood.exp_id, ()):
            node = w.nodes[m.peer]
            if m.peer == self.index or node.running is None or node.running[0] != flood.exp_id:
                continue
            at = w.delivery(flood, m.peer)
            if at < node.running[2]:
                w.at(at, lambda n=node: n.on_claim(flood, self))

    def on_claim(self, claim: Message, claimant: VirtualNode) -> None:
        if self.running is None or self.running[0] != claim.exp_id or self.proc is None:
            return
        rep = self.state.reputation.get(claimant.name)
        # the daemon's count: experiments finished with a verdict (an aborted run is none)
        runs = sum(r["kind"] == "experiment" and r["status"] in COMPLETED for r in self.stats.runs)
        what = claim_yield((self.running[1].t, self.name), (claim.t, claimant.name), rep.confirmed if rep else 0,
                           runs, self.claims)
        if what == "over budget":  # the daemon's coordinator counts it the same way
            self.stats.yield_refused += 1
        if what != "yield":
            return
        self.claims.note_yield(claimant.name)
        self.stats.yielded += 1
        self.running = None
        self.proc.interrupt(self.world.t)

    def drain(self) -> None:
        """`simulate`'s drain at the window's end, as the daemon's `drain` command: the loop judges the result
        in hand and proposes nothing more (a proposal made across the end is not run)."""
        if not self.loop.stopping:
            self.loop.stop("drained: no new experiments; following the swarm")

    def kill(self) -> None:
        """SIGKILL: the experiment in flight is lost (recorded as aborted); the node is down until it restarts."""
        if self.running is not None and self.proc is not None:
            self.running = None
            self.proc.interrupt(self.world.t)

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _publish(self, kind: str, exp: str, commit: str, status: str = "", value: float | None = None,
                 target: int = -1, claimed: float | None = None, local: bool = False) -> Message:
        if self.solo or local:
            if not self.solo:
                self.world.load.by_kind[f"{kind} (not announced)"] += 1
            return Message(-1, kind, self.index, self.world.t, exp, status, value, commit)
        return self.world.publish(Message(0, kind, self.index, self.world.t, exp, status, value, commit,
                                          self.shared.parent.get(commit, ""), self.seed, target, claimed))

    def _run_started(self) -> None:
        if self.last_run_end is not None:
            self.stats.gaps.append(self.world.t - self.last_run_end)
        self._run_t0 = self.world.t

    def _run_ended(self, status: str, commit: str, value: float | None, description: str = "", target: str = "") -> None:
        kind = {"baseline": "baseline", "verification": "verification"}.get(status, "experiment")
        self.stats.runs.append({"kind": kind, "status": status, "exp_id": self.shared.exp_of[commit],
                                "t0": self._run_t0, "t1": self.world.t, "value": value,
                                "combination": description in ("combination", "stack"), "stack": description == "stack",
                                "target": target})
        self.last_run_end = self.world.t

    def _note_baseline(self, value: float, source: int, exp: str, announced: float) -> None:
        self.baseline_source, self.baseline_exp, self.rank_value = source, exp, announced
        best = self.stats.baselines[-1][1] if self.stats.baselines else math.inf
        if value < best:
            self.stats.baselines.append((self.world.t, value))
