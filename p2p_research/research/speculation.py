"""Speculation: a node builds on a peer's result before it has verified it, and drops that branch if
the result is refuted. Sans-IO, one rule for the daemon and the discrete-event simulator.

Adopting a peer's result waits for evidence: the designated replicas' re-runs, then this node's own
(research/swarm.py: about four runs when nobody it trusts has re-run it yet). Meanwhile a node that
only mutates its old baseline works a generation behind the swarm (issue: adoption took five run
times and the swarm lost most of its lead there). So, while the best pending candidate waits, the
node's next proposals start from that candidate's commit (`SwarmState.speculation` picks it: the best
claim that beats the baseline by more than the margin, from a peer no vote has disputed).

Nothing is adopted on a peer's word. An experiment built on the candidate is measured here, like any
other, and kept only if its own value beats this node's baseline by the margin. What speculation adds
is a dependency: the kept result contains the candidate's change, whose claimed value nobody here
checked. `Branch` remembers which unverified claims the baseline rests on and the baseline before
the first of them, and closes the branch the way adoption would have:

- the node's next turn re-runs each claim under the branch (`to_verify`), first of its decisions;
  until then the results kept on the branch are not announced as kept (the driver holds them), so no
  peer builds on work that rests on an unchecked number;
- a claim that this node's re-run confirmed, or a quorum of its vouchers did, no longer holds the
  branch up; once none does, the held results are announced;
- a claim that this node's re-run refutes, or whose peer this node now ignores, drops the whole
  branch: the node goes back to the baseline before it (`Revert`) and the held results are never
  announced as kept, so no work built on a fabricated result is kept or spread;
- adopting a verified result replaces the baseline, branch and all.

A peer's refutation vote only asks for the re-run (research/swarm.py `refuted`), it drops nothing by
itself: a sybil's vote costs this node one re-run, as it did before speculation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from p2p_research.research.swarm import PeerClaim, SwarmState


def choose(state: SwarmState, branch: Branch, baseline_value: float | None) -> PeerClaim | None:
    """The claim this node's next proposal builds on, if any (`SwarmState.speculation`), within the
    budget for unproven peers: a claim from a peer whose results this node's re-runs have never
    confirmed (and that is not trusted) is built on by at most every other proposal. Fresh identities
    cost nothing, so without it a stream of fabricated claims, each the best on offer until a replica
    refutes it, could turn every run of an honest node into a mutation of a lie; with it, at least
    half of its proposals start from its own baseline, whatever the attacker sends."""
    claim = state.speculation(baseline_value)
    if claim is None:
        return None
    rep = state.reputation.get(claim.peer)
    if claim.peer in state.policy.trusted or (rep is not None and rep.confirmed > 0):
        return claim
    if branch.unproven_next:
        branch.unproven_next = False
        return claim
    branch.unproven_next = True
    return None


@dataclass(frozen=True)
class Revert:
    """Drop the branch: the baseline goes back to `commit` (its value `value`)."""

    commit: str
    value: float
    mark: int        # the driver's own marker of where the branch began (e.g. its history's length)
    reason: str


@dataclass
class Branch:
    """The unverified claims this node's baseline rests on (see the module's docstring)."""

    resting: dict[tuple[str, str], PeerClaim] = field(default_factory=dict)   # (exp id, peer) -> claim
    before: tuple[str, float, int] | None = None   # the baseline before the branch: commit, value, marker
    refuted_here: set[tuple[str, str]] = field(default_factory=set)
    asked: set[tuple[str, str]] = field(default_factory=set)     # handed to a turn to re-run
    unproven_next: bool = True     # whether the next proposal may build on a claim of an unproven peer

    @property
    def open(self) -> bool:
        return bool(self.resting)

    def to_doc(self) -> dict:
        """What a restart must not forget (the daemon keeps it in its ledger): a node that stopped with
        an open branch re-runs its claims when it is back, as it would have."""
        return {"resting": [dataclasses.asdict(c) for c in self.resting.values()],
                "before": list(self.before) if self.before is not None else None,
                "refuted_here": [list(k) for k in self.refuted_here]}

    @classmethod
    def from_doc(cls, doc: object) -> Branch:
        """The branch `to_doc` wrote (an empty one for anything else: a ledger of an older version)."""
        branch = cls()
        if not isinstance(doc, dict):
            return branch
        try:
            before = doc.get("before")
            if before is not None:
                commit, value, mark = before
                branch.before = (str(commit), float(value), int(mark))
            for c in doc.get("resting") or []:
                claim = PeerClaim(**c)
                branch.resting[(claim.exp_id, claim.peer)] = claim
            branch.refuted_here = {(str(e), str(p)) for e, p in doc.get("refuted_here") or []}
        except (TypeError, ValueError):
            return cls()
        if branch.before is None:
            return cls()
        return branch

    def built(self, on: PeerClaim, before_commit: str, before_value: float | None, mark: int = 0) -> None:
        """An experiment built on the unverified claim `on` was kept: the baseline now rests on it
        (and on whatever it rested on before)."""
        if not self.resting and before_value is not None:
            self.before = (before_commit, before_value, mark)
        if self.before is not None:
            self.resting[(on.exp_id, on.peer)] = on

    def adopted(self) -> None:
        """A verified result became the baseline: nothing unverified is under it any more."""
        self.resting.clear()
        self.refuted_here.clear()
        self.asked.clear()
        self.before = None

    def _drop_confirmed(self, state: SwarmState) -> None:
        """Claims a quorum of this node's vouchers confirmed no longer hold the branch up."""
        for key in [k for k, claim in self.resting.items() if state.quorum_met(claim)]:
            del self.resting[key]
        if not self.resting:
            self.before = None

    def to_verify(self, state: SwarmState) -> PeerClaim | None:
        """A claim under the branch that this node has not re-run (nor a quorum confirmed): the turn's
        first decision re-runs it."""
        self._drop_confirmed(state)
        for key, claim in self.resting.items():
            if key not in self.asked:
                self.asked.add(key)
                return claim
        return None

    def verdict(self, claim: PeerClaim, confirmed: bool) -> None:
        """This node re-ran `claim`."""
        key = (claim.exp_id, claim.peer)
        if key not in self.resting:
            return
        if confirmed:
            del self.resting[key]
        else:
            self.refuted_here.add(key)

    def check(self, state: SwarmState) -> Revert | None:
        """What the evidence now says about the branch: a Revert when a claim under it was refuted by
        this node's re-run or its peer is ignored here. Afterwards `open` says whether anything
        unverified is still under the baseline (the driver announces what it held once it is not)."""
        for key, claim in list(self.resting.items()):
            if key in self.refuted_here or state.ignored(claim.peer):
                assert self.before is not None
                commit, value, mark = self.before
                why = ("was refuted by this node's re-run" if key in self.refuted_here
                       else "is from a peer whose results this node now ignores")
                self.adopted()
                return Revert(commit, value, mark, f"{claim.exp_id[:10]} from {claim.peer[:16]}, under this "
                                                   f"baseline's branch, {why}")
        self._drop_confirmed(state)
        return None
