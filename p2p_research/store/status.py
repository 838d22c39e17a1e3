"""A run's status, spelled once: the values the ledger stores and the groups other modules ask about.

`RunStatus` is a `StrEnum`, so a member equals the string the ledger holds ("kept" == RunStatus.KEPT)
and rows, wire messages and JSON keep their plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"      # a local run in flight
    DONE = "done"            # trained, value recorded, not judged yet
    KEPT = "kept"            # an experiment that improved on its baseline beyond the margin
    DISCARDED = "discarded"  # an experiment that did not
    CRASH = "crash"          # an experiment (or baseline) that gave no value
    BASELINE = "baseline"    # a measurement of a baseline commit
    CONFIRMED = "confirmed"  # a verification that reproduced a peer's claim
    REFUTED = "refuted"      # a verification that did not, or a run the harness refused
    ABORTED = "aborted"      # stopped: yielded to a peer's claim, the node stopped, ...


#: an experiment's outcome (autoresearch's results.tsv statuses)
COMPLETED: tuple[RunStatus, ...] = (RunStatus.KEPT, RunStatus.DISCARDED, RunStatus.CRASH)
#: what a result on the wire may say (wire/messages.py)
RESULT: tuple[RunStatus, ...] = (*COMPLETED, RunStatus.BASELINE)
#: a run that is over and was announced (verifications included)
FINAL: tuple[RunStatus, ...] = (*RESULT, RunStatus.CONFIRMED, RunStatus.REFUTED)
#: an experiment tried without a gain: a negative result SWARM.md lists
NO_GAIN: tuple[RunStatus, ...] = (RunStatus.DISCARDED, RunStatus.CRASH, RunStatus.REFUTED)
#: a measured value that compares with others of its protocol
VALUED: tuple[RunStatus, ...] = (RunStatus.KEPT, RunStatus.DISCARDED, RunStatus.BASELINE, RunStatus.CONFIRMED)


def sql_in(statuses: tuple[RunStatus, ...]) -> str:
    """`('kept','discarded',...)` for an SQL `status IN` clause (the values are this module's constants)."""
    return "(" + ",".join(f"'{s.value}'" for s in statuses) + ")"
