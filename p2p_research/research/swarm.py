"""The swarm's adoption and verification decisions, sans-IO: events in, decisions out.

A peer's kept result becomes this node's baseline only if it is under the same protocol, passed the
trust policy, and beats the current baseline by more than the margin; and, per the verification policy:
- `always`: after a local re-run confirms it within tolerance;
- `adaptive` (BOINC-style): a peer's results are always re-run until this node confirmed
  `STREAK_BEFORE_COIN` of them in a row, then with probability 1/(streak), where streak counts this
  node's confirmations of that peer since its last refutation (trust grows with evidence); a refutation
  resets it. One confirmation is not enough: a liar's made-up value sometimes lands within the
  tolerance of the truth, and at p = 1/2 after it, half its next lies were adopted unchecked (the DES
  with 2 liars in 12 nodes, seed 20: three honest nodes ended on such values);
- `never`: at once.
Under `adaptive`, replicated evidence also counts: a result that `quorum` other nodes confirmed, and
none refuted, is adopted without a local re-run. Trust is earned, not counted: a vote counts only
from a *voucher*, a peer listed in `trusted` or one whose results this node's own re-runs confirmed
`vouch_after` times, and only for results it was the first here to announce (copying someone else's
result earns nothing). Fresh identities cost nothing, so their votes weigh nothing; an attacker's K
identities vouch only after K x `vouch_after` results each re-run here and confirmed, which is real
verified work (docs/security.md). Who re-runs
is decided per result, as BOINC assigns replicas: the `replicas` nodes met first clockwise from
sha256(exp_id) on the ring of peers this node has heard from (research/ownership.py; the claimant
excluded) re-run it at once;
every other node waits up to `defer_s` for their evidence and only then falls back to its own coin.
Every node computes the same ranking from (nearly) the same peer set, so a result costs about
`replicas` re-runs instead of one per node.
Each re-run is a confirmation or a refutation that is announced; a peer refuted `refuted_threshold`
times (net of confirmations) is ignored, and a peer none of whose results this node has confirmed is
ignored at its first refutation (with two liars in 35 nodes each honest node re-ran two lies of each
before it ignored them, a fifth of its time; an honest peer that one unlucky re-run refutes loses
only this node's attention, and its results still reach it through the vouchers' confirmations of
parked results). A refutation of a claim from any peer makes this node re-run
it rather than adopt it on the claimant's streak (`refuted`): it asks for work, it replaces none.

A node that has stopped proposing (drained, or done with its `-n`) *follows* the swarm: it passes a
`rank`, the (announced value, experiment id) of its current baseline, and then any candidate that
ranks lower is adopted (after the same checks), however small the difference. The margin keeps noise
out of the search while a node experiments; following by rank gives every node the same total order,
so a quiet swarm converges on one baseline (the best announced result that survives verification)
instead of staying split between results that are within noise of each other. The coin of `adaptive` is a hash of (self, experiment), so
decisions are reproducible and two nodes do not skip the same checks in lockstep.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field

from p2p_research.research.ownership import HashRing

MAX_CANDIDATES = 2000  # pending peer results kept (the best ones); a few hundred per hour in a 35-node swarm
MAX_VOTES = 64  # verifiers remembered per experiment
MAX_PEERS = 10_000  # peers remembered for replica ranking (keys are free: memory must not follow them)
MAX_REPUTATION = 100_000  # peers judged by this node's own runs (each record cost a run: weeks of them)
MAX_PARKED = 64  # results of ignored peers kept in case this node's vouchers confirm them
PARKED_PER_PEER = 8


@dataclass
class Reputation:
    confirmed: int = 0
    refuted: int = 0
    streak: int = 0        # confirmations since the last refutation
    earned: int = 0        # confirmations of results this peer was the first here to announce


@dataclass(frozen=True)
class Vote:
    claimant: str
    claimed_value: float | None
    confirmed: bool


@dataclass(frozen=True)
class PeerClaim:
    """A peer's kept result that may become the baseline."""

    exp_id: str
    commit: str
    peer: str
    value: float
    seed: int
    received_at: float
    first: bool = True     # whether the peer was the first here to announce this experiment's result


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Verify:
    claim: PeerClaim


@dataclass(frozen=True)
class Adopt:
    claim: PeerClaim
    value: float          # the value the baseline takes (the local re-run when there was one)
    reason: str


Decision = Ignore | Verify | Adopt

#: confirmations in a row of a peer's results before `adaptive` may skip re-running the next one
STREAK_BEFORE_COIN = 2


@dataclass
class SwarmPolicy:
    self_peer: str
    verification: str = "adaptive"     # always | adaptive | never
    margin: float = 0.002
    tolerance: float | None = None     # None: 2 x margin
    refuted_threshold: int = 2
    quorum: int | None = 2             # adaptive: confirmations by other peers that replace a local re-run (None: off)
    replicas: int | None = 3           # adaptive: nodes designated to re-run each result at once (None: everyone)
    defer_s: float = 60.0              # adaptive: how long the others wait for the designated nodes' evidence
    vouch_after: int = 1               # own confirmations of a peer's first-announced results before its votes count
    trusted: frozenset[str] = frozenset()  # peers whose votes count from the start (trust.trusted_peers)

    @property
    def tol(self) -> float:
        return self.tolerance if self.tolerance is not None else 2 * self.margin


@dataclass
class SwarmState:
    policy: SwarmPolicy
    reputation: dict[str, Reputation] = field(default_factory=dict)
    candidates: dict[tuple[str, str], PeerClaim] = field(default_factory=dict)  # (exp_id, peer)
    settled: set[str] = field(default_factory=set)     # exp ids already verified, adopted or dismissed
    confirmed: dict[str, tuple[PeerClaim, float]] = field(default_factory=dict)  # re-run OK, not adopted
    peers: dict[str, None] = field(default_factory=dict)  # peers heard from, least recently first
    ring: HashRing = field(default_factory=HashRing)     # the same peers, on the assignment ring
    # exp id -> verifier -> its signed vote: (whose claim it re-ran, the value that claimed, confirmed?)
    evidence: dict[str, dict[str, Vote]] = field(default_factory=dict)
    # the candidates' keys in the order decisions look at them, (value, exp id, peer): the first that
    # improves the baseline and is not waiting is the best, so a decision stops there instead of
    # scanning every pending candidate (thousands in a large swarm); stale entries are skipped
    _order: list[tuple[float, str, str]] = field(default_factory=list)
    # peers some claim of which a vote refuted (any verifier's: it only keeps speculation off them)
    disputed: dict[str, None] = field(default_factory=dict)
    # kept results of peers this node ignores: never adopted on their word or on votes, but re-run here
    # once a quorum of this node's vouchers confirmed one (`_parked_ready`)
    parked: dict[tuple[str, str], PeerClaim] = field(default_factory=dict)

    def rep(self, peer: str) -> Reputation:
        """`peer`'s record, made when this node first judges it (a run of its own: a re-run or a check of a
        negative report), so the table grows with this node's compute, not with the keys peers make up.
        Reads go through `reputation.get`. Past MAX_REPUTATION records the oldest that neither is ignored
        nor vouched for goes first: a liar's record is the last thing to forget."""
        r = self.reputation.get(peer)
        if r is None:
            r = self.reputation[peer] = Reputation()
            if len(self.reputation) > MAX_REPUTATION:
                old = next((p for p in self.reputation if p != peer and not self.ignored(p) and not self.vouches(p)),
                           next(iter(self.reputation)))
                del self.reputation[old]
        return r

    def ignored(self, peer: str) -> bool:
        r = self.reputation.get(peer)
        if r is None:
            return False
        # a peer none of whose results this node has confirmed is ignored at its first refutation here
        return r.refuted - r.confirmed >= (self.policy.refuted_threshold if r.confirmed else 1)

    def vouches(self, peer: str) -> bool:
        """Whether `peer`'s confirmations and refutations count toward a quorum here: it is trusted by
        configuration, or this node's own re-runs confirmed its (first-announced) results often enough,
        and it is not ignored."""
        if peer in self.policy.trusted:
            return True
        r = self.reputation.get(peer)
        return r is not None and r.earned >= max(1, self.policy.vouch_after) and not self.ignored(peer)

    def verify_probability(self, peer: str) -> float:
        if self.policy.verification == "always":
            return 1.0
        if self.policy.verification == "never":
            return 0.0
        r = self.reputation.get(peer)
        return 1.0 / (1 + max(0, (r.streak if r is not None else 0) - (STREAK_BEFORE_COIN - 1)))

    def _coin(self, exp_id: str) -> float:
        h = hashlib.sha256(f"{self.policy.self_peer}:{exp_id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    def on_peer_verification(self, exp_id: str, verifier: str, claimant: str, confirmed: bool,
                             claimed_value: float | None = None) -> None:
        """Another node re-ran `claimant`'s claim of `claimed_value` for `exp_id`: replicated evidence
        (BOINC's quorum). A vote is about that claim only (all three are signed by the verifier): it never
        counts for another peer's claim on the same experiment or another value. The claimant's word
        about its own result never counts; other votes are kept and weigh only once their verifier vouches."""
        if verifier in (claimant, self.policy.self_peer):
            return
        if exp_id in self.settled:  # evidence counts for pending candidates only: kept, it would evict theirs
            return
        vote = Vote(claimant, claimed_value, confirmed)
        if not confirmed:
            self.disputed.pop(claimant, None)
            self.disputed[claimant] = None
            if len(self.disputed) > MAX_PEERS:
                del self.disputed[next(iter(self.disputed))]
        votes = self.evidence.setdefault(exp_id, {})
        if verifier not in votes and len(votes) >= MAX_VOTES:  # a flood of sybil votes cannot grow memory
            # ... nor crowd out what weighs more: a voucher's vote, then a refutation (it asks for a
            # re-run, `refuted`), then a confirmation that weighs nothing
            def weight(v: str, vote: Vote) -> int:
                return 2 if self.vouches(v) else 0 if vote.confirmed else 1

            junk = next((v for v, old in votes.items() if weight(v, old) < weight(verifier, vote)), None)
            if junk is None:
                return
            del votes[junk]
        votes[verifier] = vote
        while len(self.evidence) > MAX_CANDIDATES:
            del self.evidence[next(iter(self.evidence))]

    def note_peer(self, peer: str) -> None:
        if peer == self.policy.self_peer:
            return
        self.peers.pop(peer, None)
        self.peers[peer] = None  # most recently heard last
        self.ring.add(peer)
        if len(self.peers) > MAX_PEERS:  # keys are free: the least recently heard go first
            old = next(iter(self.peers))
            del self.peers[old]
            self.ring.remove(old)

    def designated(self, claim: PeerClaim) -> bool:
        """Whether this node is one of the `replicas` nodes that re-run `claim` at once."""
        if self.policy.replicas is None:
            return True
        me = self.policy.self_peer
        self.ring.add(me)  # a driver may give the state a ring of its own (the simulator shares one)
        chosen = self.ring.first(claim.exp_id, self.policy.replicas,
                                 lambda p: p != claim.peer and (p == me or (p in self.peers and not self.ignored(p))))
        return me in chosen

    def _votes_about(self, claim: PeerClaim) -> dict[str, bool]:
        """Every vote about this claimant's claim of (within the tolerance) this value, by any verifier
        but the claimant."""
        tol = self.policy.tol
        return {v: vote.confirmed for v, vote in self.evidence.get(claim.exp_id, {}).items()
                if v != claim.peer and vote.claimant == claim.peer
                and (vote.claimed_value is None or abs(vote.claimed_value - claim.value) <= tol)}

    def votes_on(self, claim: PeerClaim) -> dict[str, bool]:
        """Votes that count for this claim: by vouchers, about this claimant's claim of this value."""
        return {v: ok for v, ok in self._votes_about(claim).items() if self.vouches(v)}

    def refuted(self, claim: PeerClaim) -> bool:
        """Another peer refuted this claim: never adopted on the claimant's streak alone, whoever refuted
        it. A vote needs a voucher to *replace* a re-run (quorum_met); a refutation only asks for one, so
        it counts from anyone: the worst a flood of false refutations does is `verification.policy =
        always` for the claims it names. Counting vouchers' refutations only, a liar that earned a streak
        with one accurate claim had its next lies adopted without a re-run by the nodes that did not yet
        vouch for the replicas that refuted them (seen in the DES: 12 blind adoptions of made-up values)."""
        return self.policy.verification != "never" and not all(self._votes_about(claim).values())

    def quorum_met(self, claim: PeerClaim) -> bool:
        votes = self.votes_on(claim)
        quorum = self.policy.quorum
        return quorum is not None and not any(ok is False for ok in votes.values()) and sum(votes.values()) >= quorum

    # --- events -----------------------------------------------------------------------------------
    def on_peer_result(self, claim: PeerClaim, trusted: bool, trust_reason: str, status: str) -> Ignore | None:
        """Record a peer's result; it becomes a candidate if it could improve some baseline."""
        if claim.peer == self.policy.self_peer:
            return Ignore("own result")
        if status != "kept":
            return Ignore(f"status {status}")
        if not trusted:
            self.settled.add(claim.exp_id)
            return Ignore(f"rejected by the trust policy: {trust_reason}")
        if not math.isfinite(claim.value):
            return Ignore("no finite value")
        if claim.exp_id in self.settled:
            return Ignore("already settled")
        if self.ignored(claim.peer):
            self._park(claim)
            return Ignore("the peer's results were refuted too often (kept aside: re-run here only if "
                          "the nodes this node vouches for confirm it)")
        key = (claim.exp_id, claim.peer)
        if key not in self.candidates:  # the first report wins, as in the ledger
            self.candidates[key] = claim
            bisect.insort(self._order, (claim.value, claim.exp_id, claim.peer))
        return None

    def _improves(self, c: PeerClaim, baseline_value: float, rank: tuple[float, str] | None) -> bool:
        if rank is not None:
            return (c.value, c.exp_id) < rank
        return baseline_value - c.value > self.policy.margin

    def _waits_for_evidence(self, c: PeerClaim, now: float | None) -> bool:
        """Adaptive, not designated for `c`, and the designated nodes still have time to report."""
        return (self.policy.verification == "adaptive" and now is not None and self.policy.quorum is not None
                and now - c.received_at < self.policy.defer_s and not self.designated(c))

    def next_decision(self, baseline_value: float | None, rank: tuple[float, str] | None = None,
                      now: float | None = None) -> Decision | None:
        """The best pending candidate that would still improve the baseline, and what to do with it.

        `rank` (following only): the baseline's (announced value, exp id); any candidate ranked lower
        improves it. Candidates that do not improve the baseline now are kept: they may when following.
        `now` enables deferral: a candidate this node is not designated to re-run is skipped (kept)
        until its quorum is met or `defer_s` has passed since it arrived."""
        if baseline_value is None:
            return None
        best: PeerClaim | None = None
        stale = 0
        for _value, exp_id, peer in self._order:  # best first: improving is monotone in this order
            c = self.candidates.get((exp_id, peer))
            if c is None:
                stale += 1
                continue
            if self.ignored(c.peer) or c.exp_id in self.settled:
                del self.candidates[(exp_id, peer)]
                if c.exp_id not in self.settled:
                    self._park(c)
                stale += 1
                continue
            if not self._improves(c, baseline_value, rank):
                break
            # a following node (rank given) has no research of its own to spend the wait on: it re-runs now
            if rank is None and self._waits_for_evidence(c, now) and not self.quorum_met(c):
                continue
            best = c
            break
        if stale > 64 and stale > len(self._order) // 4:
            self._reorder()
        parked = self._parked_ready(baseline_value, rank)
        if parked is not None and (best is None or (parked.value, parked.exp_id) < (best.value, best.exp_id)):
            self.settle(parked)
            return Verify(parked)
        if rank is not None:
            # confirmed by this node's own re-run: adopted by rank even if the peer is ignored since
            ready = [(c, m) for c, m in self.confirmed.values() if self._improves(c, baseline_value, rank)]
            if ready:
                c, measured = min(ready, key=lambda x: (x[0].value, x[0].exp_id, x[0].peer))
                if best is None or (c.value, c.exp_id, c.peer) < (best.value, best.exp_id, best.peer):
                    del self.confirmed[c.exp_id]
                    return Adopt(c, measured, f"adopted from {c.peer[:16]}: the swarm's best ranked result, "
                                              f"confirmed earlier by a local re-run ({measured:.6f})")
        if len(self.candidates) > MAX_CANDIDATES:  # keep the best live ones
            for key in [k for k, c in self.candidates.items() if self.ignored(c.peer) or c.exp_id in self.settled]:
                del self.candidates[key]
            for key in sorted(self.candidates, key=lambda k: self.candidates[k].value)[MAX_CANDIDATES:]:
                del self.candidates[key]
            self._reorder()
        if best is None:
            return None
        for key in [k for k in self.candidates if k[0] == best.exp_id]:
            del self.candidates[key]
        self.settled.add(best.exp_id)
        if self.policy.verification == "adaptive" and self.policy.quorum is not None and self.quorum_met(best):
            n = sum(self.votes_on(best).values())
            return Adopt(best, best.value, f"adopted from {best.peer[:16]}: confirmed by {n} other nodes' re-runs")
        if self._coin(best.exp_id) < self.verify_probability(best.peer) or self.refuted(best) or (
                self.policy.verification == "adaptive" and now is not None and self.designated(best)):
            return Verify(best)
        return Adopt(best, best.value, f"adopted from {best.peer[:16]} without re-run "
                                       f"({self.policy.verification}, p={self.verify_probability(best.peer):.2f})")

    def settle(self, claim: PeerClaim) -> None:
        """`claim` is being decided outside `next_decision` (a re-run a speculative branch asked for):
        it is no candidate any more."""
        for key in [k for k in self.candidates if k[0] == claim.exp_id]:
            del self.candidates[key]
        for key in [k for k in self.parked if k[0] == claim.exp_id]:
            del self.parked[key]
        self.settled.add(claim.exp_id)

    def _park(self, claim: PeerClaim) -> None:
        """Keep a result of an ignored peer aside (at most PARKED_PER_PEER of a peer, MAX_PARKED in all).
        A liar's result that is true is still the swarm's best: the honest nodes that re-ran and adopted
        it before they caught the liar stay on it, and the rest, ignoring its announcer, never took it;
        the swarm stayed split between two honest values (the DES with 2 liars in 12 nodes, seed 31)."""
        key = (claim.exp_id, claim.peer)
        if key in self.parked:
            return
        self.parked[key] = claim
        for k in [k for k in self.parked if k[0] in self.settled]:
            del self.parked[k]
        # a liar goes on lying: each peer keeps PARKED_PER_PEER places, and what goes first is what no
        # voucher has confirmed, then the oldest (its made-up values are the best on offer, so "the
        # worst value first" would keep its lies and drop its one true result)
        own = [k for k in self.parked if k[1] == claim.peer]
        if len(own) > PARKED_PER_PEER or len(self.parked) > MAX_PARKED:
            pool = own if len(own) > PARKED_PER_PEER else list(self.parked)
            drop = min(pool, key=lambda k: (sum(self.votes_on(self.parked[k]).values()), self.parked[k].received_at))
            del self.parked[drop]

    def _parked_ready(self, baseline_value: float, rank: tuple[float, str] | None) -> PeerClaim | None:
        """The best result of an ignored peer that a quorum of this node's vouchers confirmed (and none
        refuted) and that would improve the baseline: it is re-run here, never adopted on the votes.

        Following (`rank` given), a quorum of confirmations by any peers this node does not ignore will
        do. A following node has no research of its own to spend its time on, and a node that vouches
        for nobody (it re-ran no honest peer's first announcement) otherwise never re-ran the liar's true
        result the rest of the swarm had adopted, and the swarm stayed split (the DES with 2 liars in 12
        nodes, seeds 7 and 43). Votes still only ask for the re-run, which decides; each parked result is
        re-run once (it is settled then), so identities that confirm a liar's made-up values cost a
        following node one re-run each, as any new identity's claim does."""
        def ready(c: PeerClaim) -> bool:
            if self.quorum_met(c):
                return True
            if rank is None or self.policy.quorum is None:
                return False
            votes = [ok for v, ok in self._votes_about(c).items() if not self.ignored(v)]
            return sum(votes) >= self.policy.quorum

        ready_now = [c for c in self.parked.values()
                     if c.exp_id not in self.settled and self._improves(c, baseline_value, rank) and ready(c)]
        return min(ready_now, key=lambda c: (c.value, c.exp_id, c.peer)) if ready_now else None

    def speculation(self, baseline_value: float | None) -> PeerClaim | None:
        """The peer result a node may build its next experiments on before it has verified it: the best
        pending candidate that claims to beat the baseline by more than the margin, from a peer that is
        not ignored, that no vote has refuted. Nothing is adopted on it: an experiment built on it is
        measured here like any other and kept only if its own value beats this node's baseline, and a
        branch whose candidate is refuted is dropped (`refuted_claim`)."""
        if baseline_value is None:
            return None
        for _value, exp_id, peer in self._order:
            c = self.candidates.get((exp_id, peer))
            if c is None or self.ignored(c.peer) or c.exp_id in self.settled:
                continue
            if baseline_value - c.value <= self.policy.margin:
                return None
            if c.peer not in self.disputed and not self.refuted(c):
                return c
        return None

    def _reorder(self) -> None:
        self._order = sorted((c.value, c.exp_id, c.peer) for c in self.candidates.values())

    def on_negative_checked(self, peer: str, reproduced: bool) -> None:
        """This node ran an experiment `peer` had reported negative (research/negatives.check): a report
        the run does not reproduce is a lie. One it reproduces earns nothing: anyone can replay honest
        nodes' negative results without running them."""
        if not reproduced:
            r = self.rep(peer)
            r.refuted += 1
            r.streak = 0

    def on_verified(self, claim: PeerClaim, measured: float | None, baseline_value: float | None,
                    rank: tuple[float, str] | None = None) -> tuple[str, Adopt | None]:
        """A local re-run finished: returns ('confirmed' | 'refuted', an adoption if it still improves).

        Following (`rank` given), a confirmed claim that ranks below the baseline is adopted."""
        r = self.rep(claim.peer)
        if measured is not None and math.isfinite(measured) and abs(measured - claim.value) <= self.policy.tol:
            r.confirmed += 1
            r.streak += 1
            if claim.first:
                r.earned += 1
            verdict = "confirmed"
        else:
            r.refuted += 1
            r.streak = 0
            verdict = "refuted"
        if verdict == "confirmed" and measured is not None:
            improves = baseline_value is None or (
                (claim.value, claim.exp_id) < rank if rank is not None else baseline_value - measured > self.policy.margin)
            if improves:
                return verdict, Adopt(claim, measured,
                                      f"confirmed by a local re-run ({measured:.6f} vs claimed {claim.value:.6f})")
            self.confirmed[claim.exp_id] = (claim, measured)  # a candidate again once this node follows
            while len(self.confirmed) > MAX_CANDIDATES:
                del self.confirmed[next(iter(self.confirmed))]
        return verdict, None
