"""Read-only queries over a node's ledger, named for what they answer: the swarm view, SWARM.md's
negative results, the leaderboard, `peers -v`, the dashboard's Prometheus metrics and the simulator's
figures. With `ledger.py` (which owns the schema and every write) these are the only SQL in the
project, so a change of the schema is a change of this package.

Each takes an open connection whose `row_factory` is `sqlite3.Row` (a `Ledger`'s `.db`, or
`read_only(path)` for a ledger another process writes) and returns plain rows, dicts or numbers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2p_research.store.status import FINAL, NO_GAIN, VALUED, RunStatus, sql_in

_FINISHED = sql_in((*FINAL, RunStatus.ABORTED))


@contextmanager
def read_only(path: Path, timeout: float = 10.0) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the ledger at `path` (another process may be writing it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    db.row_factory = sqlite3.Row
    try:
        yield db
    finally:
        db.close()


# --- the swarm view, SWARM.md and the leaderboard ---------------------------------------------------


def finished_results(db: sqlite3.Connection, protocol_id: str) -> list[sqlite3.Row]:
    """Every finished experiment and baseline under `protocol_id`, this node's and its peers', oldest
    first, with the time it finished (or was received, or started)."""
    return db.execute(
        "SELECT peer, kind, exp_id, commit_id, parent, status, val_bpb, memory_gb,"
        " COALESCE(finished_at, received_at, started_at, 0) AS at, description, origin FROM runs"
        " WHERE protocol_id=? AND status NOT IN ('running', 'aborted') AND kind IN ('experiment', 'baseline')"
        " ORDER BY at", (protocol_id,)).fetchall()


def negative_results(db: sqlite3.Connection, protocol_id: str, limit: int = 30) -> list[dict[str, Any]]:
    """Experiments that did not improve (and were never kept), with the number of distinct nodes that
    observed that, the most observed first."""
    rows = db.execute(
        "SELECT r.exp_id, e.description, COUNT(DISTINCT r.peer || r.origin) AS nodes, COUNT(*) AS runs,"
        " MIN(r.val_bpb) AS best, GROUP_CONCAT(DISTINCT r.status) AS statuses FROM runs r"
        " JOIN experiments e ON e.exp_id = r.exp_id WHERE r.protocol_id=? AND r.status IN"
        f" {sql_in(NO_GAIN)} AND r.exp_id NOT IN (SELECT exp_id FROM runs WHERE status='kept'"
        " AND kind='experiment' AND protocol_id=?) GROUP BY r.exp_id ORDER BY nodes DESC, runs DESC LIMIT ?",
        (protocol_id, protocol_id, limit))
    return [dict(r) for r in rows]


def best_per_experiment(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Per protocol and experiment: its best value, its run count, whether any run kept it (kept,
    confirmed or a baseline) and whether it is a baseline; kept ones first, then by value."""
    return db.execute(
        "SELECT protocol_id, exp_id, MIN(val_bpb) AS best, COUNT(*) AS runs,"
        " MAX(status IN ('kept','confirmed','baseline')) AS kept, MAX(status = 'baseline') AS base FROM runs"
        f" WHERE val_bpb IS NOT NULL AND status IN {sql_in(VALUED)} GROUP BY protocol_id, exp_id"
        " ORDER BY protocol_id, kept DESC, best").fetchall()


def announcements_by_peer(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Per peer: how many results it announced (n), its best value and when the last arrived."""
    return db.execute("SELECT peer, COUNT(*) AS n, MIN(val_bpb) AS best, MAX(received_at) AS last FROM runs"
                      " WHERE origin='peer' GROUP BY peer").fetchall()


def claims_by_peer(db: sqlite3.Connection) -> list[sqlite3.Row]:
    """Per peer: how many claims it made (n)."""
    return db.execute("SELECT peer, COUNT(*) AS n FROM claims GROUP BY peer").fetchall()


# --- the dashboard's metrics -------------------------------------------------------------------------


def experiment_counts(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(origin, final status, experiments), in order."""
    return [tuple(r) for r in db.execute(
        f"SELECT origin, status, COUNT(*) FROM runs WHERE kind='experiment' AND status IN {_FINISHED}"
        " GROUP BY origin, status ORDER BY origin, status")]


def local_run_counts(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(kind, final status, runs) of this node's finished runs, in order."""
    return [tuple(r) for r in db.execute(
        f"SELECT kind, status, COUNT(*) FROM runs WHERE origin='local' AND status IN {_FINISHED}"
        " GROUP BY kind, status ORDER BY kind, status")]


def running_by_kind(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """(kind, runs) of this node's runs in progress."""
    return [tuple(r) for r in db.execute(
        "SELECT kind, COUNT(*) FROM runs WHERE origin='local' AND status='running' GROUP BY kind")]


def run_durations(db: sqlite3.Connection, buckets: tuple[float, ...]) -> tuple[list[int], int, float]:
    """How many of this node's finished runs took at most each bucket's seconds, how many there are,
    and their total seconds: one pass in SQL over the whole ledger."""
    cases = ", ".join(f"SUM(CASE WHEN finished_at - started_at <= {float(b)!r} THEN 1 ELSE 0 END)" for b in buckets)
    row = db.execute(f"SELECT {cases}, COUNT(*), COALESCE(SUM(finished_at - started_at), 0) FROM runs"
                     f" WHERE origin='local' AND status IN {_FINISHED} AND started_at IS NOT NULL"
                     " AND finished_at IS NOT NULL").fetchone()
    return [row[i] or 0 for i in range(len(buckets))], row[-2] or 0, float(row[-1] or 0.0)


def crashes(db: sqlite3.Connection) -> tuple[int, int]:
    """(crashes of this node's runs whose reason names the sandbox, all crashes)."""
    sandbox, total = db.execute(
        "SELECT COALESCE(SUM(LOWER(reason) LIKE '%sandbox%'), 0), COUNT(*) FROM runs"
        " WHERE origin='local' AND status='crash'").fetchone()
    return sandbox, total


def latest_training(db: sqlite3.Connection) -> tuple[float, str | None] | None:
    """(training seconds, metrics JSON) of this node's latest run with a value, if any."""
    row = db.execute("SELECT training_seconds, metrics FROM runs WHERE origin='local' AND training_seconds > 0"
                     f" AND status IN {sql_in(VALUED)} ORDER BY run_id DESC LIMIT 1").fetchone()
    return None if row is None else (row[0], row[1])


def adoption_delays(db: sqlite3.Connection) -> list[float]:
    """Per adopted baseline: seconds from the first finish of a run of its commit to its adoption."""
    return [max(0.0, adopted - found) for adopted, found in db.execute(
        "SELECT b.adopted_at, MIN(r.finished_at) FROM baselines b JOIN runs r ON r.commit_id = b.commit_id"
        " AND r.kind IN ('experiment','baseline') WHERE b.adopted_at IS NOT NULL AND r.finished_at IS NOT NULL"
        " GROUP BY b.id")]


# --- the simulator -------------------------------------------------------------------------------------


def local_runs_in(db: sqlite3.Connection, statuses: tuple[str, ...]) -> list[tuple]:
    """(run_id, exp_id, kind, status) of this node's runs in `statuses`."""
    return [tuple(r) for r in db.execute(
        f"SELECT run_id, exp_id, kind, status FROM runs WHERE origin='local' AND status IN "
        f"({','.join('?' * len(statuses))})", statuses)]


def runs_and_baselines(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every run (oldest first) and every baseline adoption (in order), as dicts."""
    cols = ("run_id, exp_id, commit_id, parent, kind, origin, peer, status, val_bpb, started_at, finished_at,"
            " received_at, reason, description, metrics")
    runs = [dict(r) for r in db.execute(f"SELECT {cols} FROM runs ORDER BY run_id")]
    bases = [dict(r) for r in db.execute(
        "SELECT id, commit_id, exp_id, val_bpb, source_peer, reason, adopted_at FROM baselines ORDER BY id")]
    return runs, bases
