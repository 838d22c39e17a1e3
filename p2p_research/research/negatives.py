"""Whether peers' reports make a candidate count as tried: one rule for the daemon and the simulator.

A peer's `discarded` or `crash` result says "this was run and did not help", and proposers skip what
was run. That is the cheapest lie there is: an attacker signed 240 `discarded` results for mutations
of a victim's baseline that it never ran, 239 of those candidates counted as tried, and the victim ran
none of them. A patient attacker with compute can do worse: run experiments honestly and report the
ones that help as discarded, so no node ever tries them.

So a negative report proves "tried" only where its reporter is accountable:
- this node ran it (any status), or a peer it does not ignore reported it kept or measured it as a
  baseline (a kept result is a candidate: it is verified before anything rests on it; a kept record
  in the DHT is not, so there it counts only from an accountable peer, `coordinator.is_known`);
- the reporter is trusted by configuration, or vouches (this node's re-runs confirmed its results,
  research/swarm.py);
- a peer this node ignores reports nothing.
(The owner of an experiment, research/ownership.py, is not enough: sybils heard on the ring own their
share of every baseline's candidates.)
Any other negative report is a *hint* (`HINT`): the proposer passes over the candidate while it finds
others, takes it when it finds nothing else (research never stalls on a neighbourhood an attacker
covered), and every `SAMPLE_EVERY`-th proposal takes a hinted candidate first. It costs an honest
swarm next to nothing: ownership partitions the candidates, so a node rarely draws what another node
already ran, and what it does draw is mostly still claimed (the DES at 35 nodes, seeds 0 and 1,
flooding and sparse: no hint met, the same duplicates and experiments as before). Such a run checks the
reports (`check`): a reporter whose value the run does not reproduce is refuted like a liar, and one
refuted twice (net) is ignored, so its hints stop counting at all. A reproduced report earns nothing
(replaying honest nodes' negative results costs nothing, so it must not buy trust).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

#: one proposal in this many takes a hinted candidate first, when it meets one
SAMPLE_EVERY = 10


class Tried(Enum):
    NEW = "new"
    HINT = "hint"       # only unaccountable peers' negative reports name it
    TRIED = "tried"


@dataclass(frozen=True)
class Report:
    """One report about an experiment: who made it (`local` or a peer id) and its status."""

    peer: str            # "" for this node's own run
    status: str          # kept | discarded | crash | baseline | running | ...
    value: float | None = None
    seed: int | None = None


def tried(reports: Iterable[Report], accountable: Callable[[str], bool], ignored: Callable[[str], bool],
          seed: int | None = None) -> Tried:
    """What the reports about one experiment prove (see the module's docstring). With `seed` (the seed the
    asking worker runs at), an unaccountable peer's negative report of another seed is not even a hint:
    no run here could hold it to account (`check` compares one seed with itself), so it would hide a
    candidate for free."""
    out = Tried.NEW
    for r in reports:
        if not r.peer:
            return Tried.TRIED
        if ignored(r.peer):
            continue
        if r.status in ("kept", "baseline") or accountable(r.peer):
            return Tried.TRIED
        if seed is not None and r.seed is not None and r.seed != seed:
            continue
        out = Tried.HINT
    return out


def dht_report(peer: str, status: str, value: float | None, seed: int | None = None) -> Report:
    """A result record read from the DHT as a report. It never becomes a candidate that is verified,
    whatever its status, so a kept one counts like a negative one (only from an accountable peer), and a
    run of this node's holds its value to account like any negative report's (`check`, with its seed)."""
    return Report(peer, "discarded" if status in ("kept", "baseline") else status, value, seed)


MAX_HINTED = 8
# the dedup counters `Hints` keeps: a hinted candidate is passed over for an unproven peer's report (not
# because anything knew it), a checked one is run on purpose; neither is a proposal skipped as known
COUNTERS = ("negatives_hinted", "negatives_checked")


@dataclass
class Hints:
    """One proposal's hinted candidates (`Tried.HINT`), for the daemon's engine and the DES alike: the
    first hint met is taken on a sampling proposal (every SAMPLE_EVERY-th), the others are passed over
    and kept (up to MAX_HINTED) for the fallback when nothing new turns up. Counts go to `stats`."""

    sample: bool
    stats: dict[str, int]
    hinted: list[Any] = field(default_factory=list)

    @classmethod
    def for_proposal(cls, n: int, stats: dict[str, int]) -> Hints:
        """The hints of the `n`-th proposal (counted from 1)."""
        return cls(n % SAMPLE_EVERY == 0, stats)

    def passes_over(self, candidate: Any) -> bool:
        """A hinted candidate was met: whether the proposer passes over it (else this proposal checks it)."""
        if not self.sample:
            self.stats["negatives_hinted"] += 1
            if candidate is not None and len(self.hinted) < MAX_HINTED:
                self.hinted.append(candidate)
            return True
        self.sample = False
        self.stats["negatives_checked"] += 1
        return False

    def fallback(self) -> Any:
        """Nothing new turned up: the first candidate passed over, if any (its run checks the reports)."""
        if not self.hinted:
            return None
        self.stats["negatives_checked"] += 1
        return self.hinted[0]


def check(reports: Iterable[Report], measured: float | None, seed: int, tol: float,
          accountable: Callable[[str], bool]) -> list[tuple[str, float | None, bool]]:
    """This node ran an experiment that unaccountable peers reported negative: (peer, its value, whether
    this run reproduces it) for each. A value off by more than the tolerance is not reproduced. A crash
    report is not judged (a run may fail on one machine's memory or time and pass on another's), nor is
    a report of another seed (nodes run seed 0 unless configured otherwise), and a run of this node's
    that failed judges nobody."""
    if measured is None or not math.isfinite(measured):
        return []  # this run failed: it says nothing about anyone's (the failure may be this node's)
    return [(r.peer, r.value, abs(r.value - measured) <= tol) for r in reports
            if r.peer and r.status not in ("kept", "baseline") and r.value is not None and r.seed == seed
            and not accountable(r.peer)]
