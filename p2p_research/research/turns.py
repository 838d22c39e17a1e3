"""The turn a node takes between its runs, decided once for the daemon and the discrete-event simulator.

Before it proposes anything new, a node verifies and adopts its peers' best results: up to
`MAX_DECISIONS` decisions a turn, each a re-run of a peer's claim or an adoption, the candidates that
this node is not designated to re-run waiting `defer_s` for the designated nodes' evidence. The
decisions themselves come from `research.swarm.SwarmState`; what this module adds is the turn around
them, which both drivers used to write out by hand (and which had drifted apart):

- the cap of decisions per turn, and how long a candidate waits for other replicas' evidence;
- what a re-run's verdict does next: adopt, and whether the verdict floods (research/flooding.py);
- when a peer's verification counts as a confirmation;
- the lease a claim takes, and whether this node's run gives way to a peer's claim on the same
  experiment (the earlier claim, within the yield budget of research/claims.py);
- the value a simulated liar claims.

`Turn` is sans-IO in h11's shape: `next_action()` says what to do (re-run a claim, adopt, or end the
turn and propose), `handle()` takes what a re-run measured. The daemon's coordinator
(daemon/coordinator.py) performs the actions with real runs, the ledger and gossip; the DES's virtual
node (sim/des/vnode.py) spends their cost in virtual time. Both also keep the turn's trace (`decisions`),
which is what tests/test_turns.py compares between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from p2p_research.research import flooding
from p2p_research.research.claims import ClaimBook, claim_winner
from p2p_research.research.swarm import Adopt, Ignore, PeerClaim, SwarmState, Verify

MAX_DECISIONS = 8          # verify/adopt decisions in one turn before the node proposes again
ADOPTION_POLL_S = 2.0      # a node that no longer proposes (following) takes a turn this often
MIN_DEFER_S = 60.0         # others' evidence is worth waiting for about four runs, at least a minute
DEFER_RUNS = 4.0
DEFAULT_RUN_S = 15.0       # a run's expected time before any run has finished
MIN_LEASE_S = 120.0        # gossip can lag by a minute on a saturated machine: a lease must outlive that
LEASE_RUNS = 3.0           # a claim is a lease of about three runs: long enough to finish, short enough
                           # that a dead claimer frees it


def defer_s(configured: float | None, expected_s: float | None) -> float:
    """How long a candidate this node is not designated to re-run waits for the designated nodes'
    evidence: `verification.defer_s` where set, else about four runs (at least a minute)."""
    return configured or max(MIN_DEFER_S, DEFER_RUNS * (expected_s or DEFAULT_RUN_S))


def claim_lease_s(expected_s: float | None, budget_s: float | None = None) -> float:
    """The lease a claim takes: about three runs, never under two minutes."""
    return max(MIN_LEASE_S, LEASE_RUNS * (expected_s or budget_s or 600.0))


def confirms(status: str, value: float | None, claimed: float | None, tol: float) -> bool:
    """Whether a peer's verification confirms the claim it re-ran: its verdict says so and its own
    measured value agrees with the claimed one (a 'confirmed' without numbers is no evidence)."""
    return status == "confirmed" and value is not None and claimed is not None and abs(value - claimed) <= tol


def claim_yield(mine: tuple[float, str], theirs: tuple[float, str], confirmed: int, runs_finished: int,
                book: ClaimBook) -> str:
    """What this node's run does about a peer's claim on the same experiment, both as (time, peer):
    "keep" where this node's claim is the earlier (the lower peer id on ties), "yield" where the
    peer's is and the yield budget allows it, "over budget" where the peer's is but the budget is spent
    (the run goes on: no peer takes more than ~1 % of this node's runs, research/claims.py)."""
    if claim_winner(mine, theirs) == mine[1]:
        return "keep"
    return "yield" if book.may_yield_to(theirs[1], confirmed, runs_finished) else "over budget"


def liar_value(baseline: float, exp_id: str) -> float:
    """What a simulated liar (simulation.liar) claims whatever it measured: a clear improvement."""
    return baseline - 0.01 - 0.02 * ((int(exp_id[:8], 16) % 100) / 100)


@dataclass(frozen=True)
class EndTurn:
    """Nothing (more) to verify or adopt now: propose."""

    reason: str


@dataclass(frozen=True)
class Verified:
    """What came of a local re-run of a peer's claim, and what follows from it."""

    claim: PeerClaim
    measured: float | None
    verdict: str             # confirmed | refuted
    adopt: Adopt | None      # the claim still improves the baseline: the turn's next action adopts it
    floods: bool             # the verdict is announced to the swarm (else kept here)


Action = Verify | Adopt | EndTurn


def _fixed(value):
    return lambda: value


@dataclass
class Turn:
    """One turn between runs. Ask `next_action(baseline_value, rank, now)` until it is an EndTurn;
    after a Verify, perform the re-run and `handle()` what it measured before asking again (an
    adoption that follows a confirmed re-run is the next action, and counts with its re-run as one
    decision).

    `rank`: while following, the baseline's (announced value, experiment id); candidates are then
    adopted by rank rather than by margin. `defer`, `margin` and `sparse` are asked before every
    decision (a turn may hold several re-runs of minutes each, during which the node's expected run
    time, its margin and whether announcements are sparse can change): `defer` the wait for replicas'
    evidence (`defer_s`), `margin` the keep margin (None: the policy's own), `sparse` whether
    announcements flood kept results only, so that a confirmation floods from the designated replicas
    alone."""

    state: SwarmState
    defer: Callable[[], float] = field(default_factory=lambda: _fixed(MIN_DEFER_S))
    margin: Callable[[], float | None] = field(default_factory=lambda: _fixed(None))
    sparse: Callable[[], bool] = field(default_factory=lambda: _fixed(False))
    # the next claim under this node's speculative branch to re-run (research/speculation.py), if any
    branch: Callable[[], PeerClaim | None] | None = None
    left: int = MAX_DECISIONS
    decisions: list[tuple[str, str, str]] = field(default_factory=list)  # (what, exp id, peer)
    _verifying: PeerClaim | None = None
    _adopt: Adopt | None = None

    def _settle_policy(self) -> None:
        self.state.policy.defer_s = self.defer()
        margin = self.margin()
        if margin is not None:
            self.state.policy.margin = margin

    def next_action(self, baseline_value: float | None, rank: tuple[float, str] | None, now: float) -> Action:
        if self._verifying is not None:
            raise RuntimeError("handle() the re-run of the claim being verified first")
        if self._adopt is not None:
            adopt, self._adopt = self._adopt, None
            return adopt
        if self.left <= 0:
            return EndTurn(f"{MAX_DECISIONS} decisions this turn")
        self._settle_policy()
        under = self.branch() if self.branch is not None else None
        if under is not None:  # a claim the baseline's speculative branch rests on (research/speculation.py)
            self.state.settle(under)
            self.left -= 1
            self._verifying = under
            self.decisions.append(("verify branch", under.exp_id, under.peer))
            return Verify(under)
        decision = self.state.next_decision(baseline_value, rank, now=now)
        if decision is None:
            return EndTurn("no candidate improves the baseline now")
        if isinstance(decision, Ignore):
            return EndTurn(decision.reason)
        self.left -= 1
        if isinstance(decision, Verify):
            self._verifying = decision.claim
            self.decisions.append(("verify", decision.claim.exp_id, decision.claim.peer))
        else:
            self.decisions.append(("adopt", decision.claim.exp_id, decision.claim.peer))
        return decision

    def handle(self, measured: float | None, baseline_value: float | None,
               rank: tuple[float, str] | None) -> Verified:
        """The re-run of the claim being verified measured `measured` (None: it crashed)."""
        claim, self._verifying = self._verifying, None
        if claim is None:
            raise RuntimeError("no claim is being verified")
        self._settle_policy()
        verdict, adopt = self.state.on_verified(claim, measured, baseline_value, rank)
        self.decisions.append((verdict, claim.exp_id, claim.peer))
        if adopt is not None:
            self._adopt = adopt
            self.decisions.append(("adopt", claim.exp_id, claim.peer))
        floods = flooding.floods_verification(self.sparse(), verdict, self.state.designated(claim))
        return Verified(claim, measured, verdict, adopt, floods)

    def drop(self, action: Verify | Adopt) -> None:
        """Carrying out `action` failed in this node's own code (not the claim's): a re-run's claim stays
        settled, unjudged; an adoption is not made (nor the adoption its re-run led to); the turn goes on."""
        self.decisions.append(("dropped", action.claim.exp_id, action.claim.peer))
        self._verifying = None
        self._adopt = None
