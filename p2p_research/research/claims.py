"""Which peers' claims count here, and when this node yields its run to one: sans-IO, clock passed in.

A claim is a lease on an experiment: other nodes skip what is claimed, and two nodes running the same
experiment settle it by the earlier claim. On an open network both are levers: a peer that claims
everything stalls every honest node's proposer, and a counter-claim with a back-dated time made a
node yield 189 of its 191 runs (measured). So:

- **local clocks decide**: a claim's time is clamped to [received - skew, received + skew] and its
  lease to at most ``max_lease_s`` after receipt; a peer cannot be earlier than this node heard it,
  by more than gossip latency;
- **claims are bounded by delivery**: a peer holds at most ``base_open + delivered`` open claims (capped
  at ``max_open``), where ``delivered`` counts its claims that turned into results; more are refused;
- **claims that never turn into results lose priority**: one whose lease passes without a result
  from its claimant has *lapsed*; a peer with more than ``lapse_slack + delivered / 2`` lapsed claims
  has its claims refused (an honest node's claims lapse only when it yields, stops or loses a
  message, and each of its results brings the count back);
- **yields are budgeted**: this node yields a run in flight at most ``yield_free`` times plus
  ``yield_fraction`` of the runs it finished, and to any one peer at most once plus once per result
  of that peer that its own re-runs confirmed. Honest swarms yield rarely (8 runs of ~450 in the
  35-node simulation): the budget costs them nothing and bounds what any set of identities can take.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClaimPolicy:
    skew_s: float = 30.0
    max_lease_s: float = 6 * 3600.0
    base_open: int = 4
    max_open: int = 32
    lapse_slack: int = 2
    yield_free: int = 2
    yield_fraction: float = 0.01
    max_peers: int = 10_000


@dataclass(frozen=True)
class Admission:
    accepted: bool
    ts: float           # the claim's time as this node counts it
    lease_until: float
    reason: str = ""


@dataclass
class ClaimBook:
    policy: ClaimPolicy = field(default_factory=ClaimPolicy)
    open: OrderedDict[str, dict[str, float]] = field(default_factory=OrderedDict)  # peer -> exp id -> lease end
    delivered: Counter[str] = field(default_factory=Counter)
    lapsed: Counter[str] = field(default_factory=Counter)
    lapsed_ids: dict[str, set[str]] = field(default_factory=dict)
    yields: Counter[str] = field(default_factory=Counter)  # peer -> runs this node yielded to it

    # --- admission ----------------------------------------------------------------------------------
    def allowance(self, peer: str) -> int:
        return min(self.policy.max_open, self.policy.base_open + self.delivered.get(peer, 0))

    def has_priority(self, peer: str) -> bool:
        return self.lapsed.get(peer, 0) <= self.policy.lapse_slack + self.delivered.get(peer, 0) / 2

    def admit(self, peer: str, exp_id: str, ts: float, lease_until: float, received_at: float) -> Admission:
        """Whether a peer's claim counts here, with its time and lease bounded by this node's clock."""
        p = self.policy
        self._expire_peer(peer, received_at)  # only the claimant's: O(its open claims), not the book's
        t = min(max(ts, received_at - p.skew_s), received_at + p.skew_s)
        lease = min(lease_until, received_at + p.max_lease_s)
        if not self.has_priority(peer):
            return Admission(False, t, lease, f"{self.lapsed[peer]} of its claims lapsed without a result")
        mine = self.open.get(peer)
        if mine is not None and exp_id in mine:  # a renewal of an open claim
            mine[exp_id] = max(mine[exp_id], lease)
            return Admission(True, t, lease)
        if mine is not None and len(mine) >= self.allowance(peer):
            return Admission(False, t, lease, f"over its open-claim allowance ({self.allowance(peer)})")
        if lease <= received_at:
            return Admission(False, t, lease, "the lease has already ended")
        if mine is None:
            mine = self.open[peer] = {}
            if len(self.open) > p.max_peers:
                self.open.popitem(last=False)
        else:
            self.open.move_to_end(peer)
        mine[exp_id] = lease
        self._trim()
        return Admission(True, t, lease)

    def _trim(self) -> None:
        """Per-peer records stay bounded however many keys claim (the oldest records go first; the yield
        budget bounds what a forgiven key can take)."""
        for book in (self.delivered, self.lapsed, self.lapsed_ids, self.yields):
            while len(book) > self.policy.max_peers:
                del book[next(iter(book))]

    def on_result(self, peer: str, exp_id: str) -> None:
        """A result of `peer` for `exp_id` arrived: a claim honoured (even a lapsed one, late)."""
        mine = self.open.get(peer)
        if mine is not None and mine.pop(exp_id, None) is not None:
            self.delivered[peer] += 1
            return
        late = self.lapsed_ids.get(peer)
        if late is not None and exp_id in late:
            late.discard(exp_id)
            self.lapsed[peer] -= 1
            self.delivered[peer] += 1

    def expire(self, now: float) -> None:
        """Claims whose lease passed without a result lapse (every peer's)."""
        for peer in list(self.open):
            self._expire_peer(peer, now)

    def _expire_peer(self, peer: str, now: float) -> None:
        mine = self.open.get(peer)
        if mine is None:
            return
        for e in [e for e, until in mine.items() if until <= now]:
            del mine[e]
            self.lapsed[peer] += 1
            ids = self.lapsed_ids.setdefault(peer, set())
            if len(ids) < 256:
                ids.add(e)
        if not mine:
            del self.open[peer]

    # --- yielding -----------------------------------------------------------------------------------
    def may_yield_to(self, peer: str, confirmed_results: int, runs_finished: int) -> bool:
        """Whether this node may yield a run in flight to `peer` (see the module's budget)."""
        p = self.policy
        total = sum(self.yields.values())
        if total + 1 > p.yield_free + p.yield_fraction * runs_finished:
            return False
        return self.yields[peer] < 1 + confirmed_results and self.has_priority(peer)

    def note_yield(self, peer: str) -> None:
        self.yields[peer] += 1


CLAIM_TIE_S = 2.0  # claims closer than this in time are simultaneous; the lower peer id wins


def claim_winner(a: tuple[float, str], b: tuple[float, str]) -> str:
    """Deterministic winner of two claims (ts, peer) on one experiment: the earlier, else the lower peer id."""
    if abs(a[0] - b[0]) > CLAIM_TIE_S:
        return a[1] if a[0] < b[0] else b[1]
    return min(a[1], b[1])
