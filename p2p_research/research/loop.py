"""The autoresearch loop's decisions as a sans-IO state machine, in the style of h11.

Events go in (`handle`), actions come out (`next_action`); there is no network, no clock and no disk
here. The driver (solo `run` or the daemon) carries out each action and reports what happened as the
next event. Tests and hypothesis drive this class directly.

    start -> MeasureBaseline -> (Propose -> RunExperiment -> keep/discard)* -> Done

A swarm node need not measure the genesis before its first experiment (`measure_first=False`): a few
peers measure it while the node runs its first experiment at once, so the swarm's first kept results
come one run sooner. The value peers report (`BaselineLearned`) is trusted only to keep: a result that
beats it by more than the margin is kept (the baseline is then the result, with the node's own value);
anything else waits for the node's own measurement, so a lie about the genesis can make a node keep one
result it should not have, but never discard one, and never leaves a value nobody here measured:

    start -> Propose -> RunExperiment -> [AwaitBaseline] -> kept, or MeasureBaseline -> keep/discard -> ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from p2p_research.errors import P2PResearchError

DEFAULT_MARGIN = 0.002  # about the run-to-run spread of the default target; `noise` measures it per node
MAX_CONSECUTIVE_SKIPS = 10
MAX_BASELINE_FAILURES = 2


# --- actions (what the driver must do next) --------------------------------------------------------
@dataclass(frozen=True)
class MeasureBaseline:
    commit: str


@dataclass(frozen=True)
class Propose:
    baseline_commit: str


@dataclass(frozen=True)
class RunExperiment:
    exp_id: str
    commit: str
    description: str


@dataclass(frozen=True)
class AwaitBaseline:
    """Wait a little for the baseline's value from peers (report BaselineLearned, or BaselineUnavailable)."""

    commit: str


@dataclass(frozen=True)
class Done:
    reason: str
    error: bool = False
    resumable: bool = False  # nothing to propose from this baseline: another baseline may have some


Action = MeasureBaseline | Propose | RunExperiment | AwaitBaseline | Done


# --- events (what happened) ------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineMeasured:
    commit: str
    value: float | None          # None: the run failed
    reason: str = ""
    fix: str = ""                # a failure another try cannot change, and what changes it: no retry


@dataclass(frozen=True)
class BaselineLearned:
    """The baseline's value as peers measured it (the driver decides whom to believe); used only to keep."""

    commit: str
    value: float
    source: str = "peers"


@dataclass(frozen=True)
class BaselineUnavailable:
    """No value came while waiting: the node measures the baseline itself."""

    commit: str


@dataclass(frozen=True)
class Proposed:
    exp_id: str
    commit: str
    description: str


@dataclass(frozen=True)
class ProposalSkipped:
    reason: str


@dataclass(frozen=True)
class ExperimentFinished:
    exp_id: str
    commit: str
    value: float | None          # None: crash
    reason: str = ""


@dataclass(frozen=True)
class ExperimentAborted:
    exp_id: str


Event = (BaselineMeasured | BaselineLearned | BaselineUnavailable | Proposed | ProposalSkipped | ExperimentFinished
         | ExperimentAborted)


# --- outcomes the driver records -------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """What became of one experiment: status kept | discarded | crash, and why."""

    exp_id: str
    status: str
    reason: str
    advance_baseline: bool


def decide_keep(baseline: float, value: float | None, margin: float) -> tuple[str, str]:
    """Keep only a result that beats the baseline by more than the noise margin (lower is better)."""
    if value is None or not math.isfinite(value):
        return "crash", "no valid val_bpb"
    gain = baseline - value
    if gain > margin:
        return "kept", f"improves val_bpb by {gain:.6f} (> margin {margin:.6f})"
    if gain > 0:
        return "discarded", f"improves val_bpb by {gain:.6f}, within the noise margin {margin:.6f}"
    if gain == 0:
        return "discarded", "val_bpb unchanged"
    return "discarded", f"val_bpb worse by {-gain:.6f}"


class ProtocolError(P2PResearchError):
    """An event that does not fit the state (a driver bug): raised loudly, never ignored."""


@dataclass
class ResearchLoop:
    baseline_commit: str
    baseline_value: float | None = None
    margin: float = DEFAULT_MARGIN
    max_experiments: int | None = None
    experiments_done: int = 0
    consecutive_skips: int = 0
    baseline_failures: int = 0
    _pending: Action | None = None
    _done: Done | None = None
    history: list[Verdict] = field(default_factory=list)
    _offered: tuple[str, float] | None = None  # a better baseline another worker of this node found
    measure_first: bool = True   # False: experiment at once while peers measure the genesis
    _held: ExperimentFinished | None = None  # a result whose verdict waits for the baseline's value
    _learned: float | None = None  # the peers' value of the baseline (keeps, never discards)
    _waited: bool = False        # AwaitBaseline was answered, or a learned value did not keep: measure

    def __post_init__(self) -> None:
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin}")

    # The one question the driver asks.
    def next_action(self) -> Action:
        # a stop (drain) ends the loop once the result in hand is judged: it may still need the genesis
        if self._done is not None and (self._held is None or self._done.error):
            return self._done
        if self._pending is None or isinstance(self._pending, Propose):
            self._take_offer()
        if self._pending is not None:
            return self._pending
        if self.baseline_value is None:
            if (not self.measure_first and self._held is None and self.experiments_done == 0
                    and self.max_experiments != 0):
                self._pending = Propose(self.baseline_commit)
            elif not self.measure_first and not self._waited and self._learned is None:
                self._pending = AwaitBaseline(self.baseline_commit)
            else:
                self._pending = MeasureBaseline(self.baseline_commit)
        elif self._done is not None:
            return self._done
        elif self.max_experiments is not None and self.experiments_done >= self.max_experiments:
            self._done = Done(f"completed {self.experiments_done} experiments")
            return self._done
        else:
            self._pending = Propose(self.baseline_commit)
        return self._pending

    def stop(self, reason: str) -> None:
        self._done = Done(reason)

    @property
    def stopping(self) -> bool:
        """Told to stop (a drain) or done: the node proposes nothing more and follows the swarm."""
        return self._done is not None

    def handle(self, event: Event) -> Verdict | None:
        pending = self._pending
        if isinstance(event, BaselineMeasured):
            if not isinstance(pending, MeasureBaseline) or pending.commit != event.commit:
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self._pending = None
            if event.value is None or not math.isfinite(event.value):
                self.baseline_failures += 1
                if event.fix:
                    self._done = Done(f"the baseline run failed: {event.reason}; fix: {event.fix}", error=True)
                elif self.baseline_failures >= MAX_BASELINE_FAILURES:
                    self._done = Done(f"the baseline run failed {self.baseline_failures} times: {event.reason}", error=True)
                return None
            self.baseline_value = event.value
            return self._decide_held()
        if isinstance(event, BaselineLearned):
            if event.commit != self.baseline_commit or self.baseline_value is not None or self._learned is not None:
                return None  # late news: the loop has a value, has learned one, or moved on
            if not (math.isfinite(event.value) and event.value > 0):
                raise ProtocolError(f"not a value: {event!r}")
            self._learned = event.value
            if isinstance(pending, AwaitBaseline):
                self._pending = None
            return self._keep_held()
        if isinstance(event, BaselineUnavailable):
            if not isinstance(pending, AwaitBaseline) or pending.commit != event.commit:
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self._pending = None
            self._waited = True
            return None
        if isinstance(event, Proposed):
            if not isinstance(pending, Propose):
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self.consecutive_skips = 0
            self._pending = RunExperiment(event.exp_id, event.commit, event.description)
            return None
        if isinstance(event, ProposalSkipped):
            if not isinstance(pending, Propose):
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self._pending = None
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                self._done = Done(f"the proposer produced no experiment {self.consecutive_skips} times in a row: "
                                  f"{event.reason}", error=True, resumable=True)
            return None
        if isinstance(event, ExperimentAborted):
            if not isinstance(pending, RunExperiment) or pending.exp_id != event.exp_id:
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self._pending = None
            return None
        if isinstance(event, ExperimentFinished):
            if not isinstance(pending, RunExperiment) or pending.exp_id != event.exp_id:
                raise ProtocolError(f"unexpected {event!r} while waiting for {pending!r}")
            self._pending = None
            self.experiments_done += 1
            if self.baseline_value is None:
                if event.value is None or not math.isfinite(event.value):
                    return self._record(event, self.baseline_value)  # a crash needs no baseline
                self._held = event
                return self._keep_held()
            return self._record(event, self.baseline_value)
        raise ProtocolError(f"unknown event {event!r}")

    def _keep_held(self) -> Verdict | None:
        """Keep the held result if it beats the peers' value of the baseline; else measure it here."""
        if self._held is None or self._learned is None:
            return None
        if decide_keep(self._learned, self._held.value, self.margin)[0] != "kept":
            self._waited = True
            return None
        held, self._held = self._held, None
        return self._record(held, self._learned, " (against the baseline's value as peers measured it)")

    def _decide_held(self) -> Verdict | None:
        held, self._held = self._held, None
        return None if held is None else self._record(held, self.baseline_value)

    def _record(self, event: ExperimentFinished, baseline: float | None, note: str = "") -> Verdict:
        # kept only if it beats the best baseline this node knows now (another worker's may be better)
        best = math.inf if baseline is None else baseline
        if self._offered is not None:
            best = min(best, self._offered[1])
        status, reason = decide_keep(best, event.value, self.margin)
        if event.value is None and event.reason:
            reason = event.reason
        verdict = Verdict(event.exp_id, status, reason + note, status == "kept")
        if verdict.advance_baseline:
            self.baseline_commit = event.commit
            self.baseline_value = event.value
        self.history.append(verdict)
        return verdict

    def offer(self, commit: str, value: float) -> None:
        """A better baseline from another worker of this node: taken at once between experiments, else
        when the one in flight ends (its result must beat this one to be kept)."""
        if self.baseline_value is not None and value >= self.baseline_value and self._offered is None:
            return
        if self._offered is None or value < self._offered[1]:
            self._offered = (commit, value)
        if self._pending is None or isinstance(self._pending, Propose):
            self._take_offer()

    def _take_offer(self) -> None:
        if self._offered is None or self.baseline_value is None:
            return
        commit, value = self._offered
        self._offered = None
        if value < self.baseline_value:
            self._pending = None
            self.baseline_commit, self.baseline_value = commit, value

    def adopt(self, commit: str, value: float) -> None:
        """Switch to a better baseline found elsewhere (a peer); only between experiments, or once the
        loop is done (it runs nothing then: an action stopped mid-way by `stop` is abandoned)."""
        if self._pending is not None and not isinstance(self._pending, Propose) and self._done is None:
            raise ProtocolError("adopt while an experiment or baseline run is in flight")
        self._pending = None
        self.baseline_commit = commit
        self.baseline_value = value
