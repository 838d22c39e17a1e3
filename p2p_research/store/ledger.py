"""The node's ledger: every experiment and every run of one, local or from peers, in SQLite (WAL).

The ledger is what a restart resumes from and what dedup consults first, so writes are committed at
once (a crash loses at most the experiment in flight, which the next start marks `aborted`).
Runs reported by peers are inserted idempotently: gossip replays messages after reconnects.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.errors import P2PResearchError
from p2p_research.store.status import COMPLETED, VALUED, sql_in

SCHEMA_VERSION = 3  # 2: runs.metrics (every summary key as printed); 3: semantic ids (code dedup)
# (the `ideas` table came later without a new version: older software ignores it, so a ledger it holds
# still opens there)

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    exp_id      TEXT PRIMARY KEY,
    protocol_id TEXT NOT NULL,
    parent      TEXT NOT NULL,
    tree        TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    origin      TEXT NOT NULL CHECK (origin IN ('local', 'peer')),
    proposer    TEXT NOT NULL DEFAULT '',
    first_seen  REAL NOT NULL,
    semantic_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS runs (
    run_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    exp_id           TEXT NOT NULL,
    commit_id        TEXT NOT NULL,
    parent           TEXT NOT NULL DEFAULT '',
    protocol_id      TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('baseline', 'experiment', 'verification', 'noise')),
    origin           TEXT NOT NULL CHECK (origin IN ('local', 'peer')),
    peer             TEXT NOT NULL DEFAULT '',
    status           TEXT NOT NULL,
    val_bpb          REAL,
    seed             INTEGER,
    training_seconds REAL,
    total_seconds    REAL,
    memory_gb        REAL,
    num_params       INTEGER,
    num_steps        INTEGER,
    tokens           INTEGER,
    started_at       REAL,
    finished_at      REAL,
    received_at      REAL,
    reason           TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    log_path         TEXT NOT NULL DEFAULT '',
    hardware         TEXT NOT NULL DEFAULT '',
    metrics          TEXT NOT NULL DEFAULT '{}',
    receipt          BLOB,
    signature        BLOB,
    public_key       BLOB
);
CREATE INDEX IF NOT EXISTS runs_exp ON runs(exp_id);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE UNIQUE INDEX IF NOT EXISTS runs_peer_once ON runs(exp_id, peer, kind) WHERE origin = 'peer';
CREATE TABLE IF NOT EXISTS baselines (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    protocol_id TEXT NOT NULL,
    commit_id   TEXT NOT NULL,
    exp_id      TEXT NOT NULL DEFAULT '',
    val_bpb     REAL,
    source_peer TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,
    adopted_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    exp_id      TEXT NOT NULL,
    peer        TEXT NOT NULL,
    protocol_id TEXT NOT NULL,
    parent      TEXT NOT NULL,
    lease_until REAL NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    ts          REAL NOT NULL,
    semantic_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (exp_id, peer)
);
CREATE TABLE IF NOT EXISTS posts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    author      TEXT NOT NULL,
    name        TEXT NOT NULL,
    text        TEXT NOT NULL,
    ts          REAL NOT NULL,
    received_at REAL NOT NULL,
    origin      TEXT NOT NULL,
    UNIQUE (author, ts, text)
);
CREATE TABLE IF NOT EXISTS ideas (
    exp_id          TEXT PRIMARY KEY,
    source_exp      TEXT NOT NULL,
    source_protocol TEXT NOT NULL,
    source_peer     TEXT NOT NULL DEFAULT '',
    source_label    TEXT NOT NULL DEFAULT '',
    gain_there      REAL,
    proposed_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ideas_source ON ideas(source_exp);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

RUN_FIELDS = (
    "run_id", "exp_id", "commit_id", "parent", "protocol_id", "kind", "origin", "peer", "status", "val_bpb",
    "seed", "training_seconds", "total_seconds", "memory_gb", "num_params", "num_steps", "tokens",
    "started_at", "finished_at", "received_at", "reason", "description", "log_path", "hardware", "metrics",
)


BASELINE_FIELDS = "protocol_id, commit_id, exp_id, val_bpb, source_peer, reason, adopted_at"  # Baseline's

# The value measured for the parent of a run `r` under r's protocol: its finder's own measurement first,
# else any kept, baseline or confirmed one (a sibling protocol's kept result names the gain there).
_FINDERS_PARENT_VALUE = (
    "COALESCE((SELECT p.val_bpb FROM runs p WHERE p.protocol_id=r.protocol_id AND p.commit_id=r.parent"
    "  AND p.val_bpb IS NOT NULL AND p.status IN ('kept','baseline','confirmed') AND p.peer=r.peer"
    "  ORDER BY p.run_id LIMIT 1),"
    " (SELECT p.val_bpb FROM runs p WHERE p.protocol_id=r.protocol_id AND p.commit_id=r.parent"
    "  AND p.val_bpb IS NOT NULL AND p.status IN ('kept','baseline','confirmed') ORDER BY p.run_id LIMIT 1))")


class LedgerError(P2PResearchError):
    pass


@dataclass
class Run:
    exp_id: str
    commit_id: str
    protocol_id: str
    kind: str
    status: str
    origin: str = "local"
    peer: str = ""
    parent: str = ""
    val_bpb: float | None = None
    seed: int | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    memory_gb: float | None = None
    num_params: int | None = None
    num_steps: int | None = None
    tokens: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    received_at: float | None = None
    reason: str = ""
    description: str = ""
    log_path: str = ""
    hardware: str = ""
    run_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the summary's keys as printed (mfu_percent, depth, ...)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in RUN_FIELDS}
        out["metrics"] = json.dumps(self.metrics or {})
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        try:
            metrics = json.loads(row.pop("metrics", None) or "{}")
        except ValueError:
            metrics = {}
        return cls(**row, metrics=metrics if isinstance(metrics, dict) else {})


@dataclass(frozen=True)
class Baseline:
    protocol_id: str
    commit_id: str
    exp_id: str
    val_bpb: float | None
    source_peer: str
    reason: str
    adopted_at: float


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        except sqlite3.Error as e:
            raise LedgerError(f"cannot open ledger {self.path}: {e}") from None
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger {self.path} has schema {version}, newer than this software ({SCHEMA_VERSION})")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            if "metrics" not in columns:  # a version-1 ledger
                self.db.execute("ALTER TABLE runs ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'")
            for table in ("experiments", "claims"):  # a version-1 or -2 ledger
                if "semantic_id" not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN semantic_id TEXT NOT NULL DEFAULT ''")
            self.db.execute("CREATE INDEX IF NOT EXISTS experiments_semantic ON experiments(semantic_id)")
            self.db.execute("CREATE INDEX IF NOT EXISTS claims_semantic ON claims(semantic_id)")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"ledger {self.path} is not a usable SQLite database: {e}") from None

    def close(self) -> None:
        self.db.close()

    # --- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, json.dumps(value)))

    # --- experiments ------------------------------------------------------------------------------
    def add_experiment(self, exp_id: str, protocol_id: str, parent: str, tree: str, commit_id: str,
                       description: str, origin: str, proposer: str = "", first_seen: float | None = None,
                       semantic_id: str = "") -> bool:
        """Register an experiment; returns False when it was already known (first report wins)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO experiments(exp_id, protocol_id, parent, tree, commit_id, description, origin,"
            " proposer, first_seen, semantic_id) VALUES(?,?,?,?,?,?,?,?,?,?)",
            (exp_id, protocol_id, parent, tree, commit_id, description, origin, proposer, first_seen or time.time(),
             semantic_id),
        )
        if cur.rowcount != 1 and semantic_id:
            self.set_semantic_id(exp_id, semantic_id)
        return cur.rowcount == 1

    def set_semantic_id(self, exp_id: str, semantic_id: str) -> None:
        self.db.execute("UPDATE experiments SET semantic_id=? WHERE exp_id=? AND semantic_id=''", (semantic_id, exp_id))

    def same_code(self, semantic_id: str, active_at: float | None = None) -> str | None:
        """An experiment with this code already known (recorded, or claimed and still leased at
        `active_at`); its id, else None."""
        if not semantic_id:
            return None
        row = self.db.execute("SELECT exp_id FROM experiments WHERE semantic_id=? LIMIT 1", (semantic_id,)).fetchone()
        if row is None and active_at is not None:
            row = self.db.execute("SELECT exp_id FROM claims WHERE semantic_id=? AND lease_until>? LIMIT 1",
                                  (semantic_id, active_at)).fetchone()
        return row[0] if row else None

    def knows(self, exp_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM experiments WHERE exp_id=?", (exp_id,)).fetchone() is not None

    def reports(self, exp_id: str) -> list[tuple[str, str, str, float | None, int | None]]:
        """Every run recorded for an experiment, this node's and peers': (origin, peer, status, val_bpb,
        seed), for research/negatives.py."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in self.db.execute(
            "SELECT origin, peer, status, val_bpb, seed FROM runs WHERE exp_id=? AND kind='experiment'", (exp_id,))]

    def known_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT exp_id FROM experiments")}

    def experiment(self, exp_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM experiments WHERE exp_id=?", (exp_id,)).fetchone()
        return dict(row) if row else None

    def find_experiments(self, prefix: str) -> list[dict[str, Any]]:
        """Experiments whose id or commit starts with `prefix` (for `show EXP`)."""
        rows = self.db.execute(
            "SELECT * FROM experiments WHERE exp_id LIKE ? OR commit_id LIKE ? ORDER BY first_seen",
            (prefix + "%", prefix + "%"))
        return [dict(r) for r in rows]

    # --- runs -------------------------------------------------------------------------------------
    def start_run(self, run: Run) -> int:
        run.started_at = run.started_at or time.time()
        run.status = "running"
        values = run.as_dict()
        del values["run_id"]
        cols = ",".join(values)
        cur = self.db.execute(f"INSERT INTO runs({cols}) VALUES({','.join('?' * len(values))})", tuple(values.values()))
        run.run_id = int(cur.lastrowid)  # type: ignore[arg-type]
        return run.run_id

    def finish_run(self, run_id: int, status: str, **fields: Any) -> None:
        fields["status"] = status
        fields.setdefault("finished_at", time.time())
        bad = set(fields) - set(RUN_FIELDS)
        if bad:
            raise LedgerError(f"unknown run fields {sorted(bad)}")
        if isinstance(fields.get("metrics"), dict):
            fields["metrics"] = json.dumps(fields["metrics"])
        sets = ",".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE runs SET {sets} WHERE run_id=?", (*fields.values(), run_id))

    def abort_running(self, reason: str = "interrupted") -> int:
        """Mark local runs left `running` by a stop as `aborted` (called at start and on shutdown), and
        experiments that ended but were never judged (`done`: a first result waiting for the genesis
        value when the node stopped)."""
        cur = self.db.execute(
            "UPDATE runs SET status='aborted', reason=?, finished_at=COALESCE(finished_at, ?) WHERE origin='local' AND"
            " (status='running' OR (status='done' AND kind='experiment'))", (reason, time.time()))
        return cur.rowcount

    def add_peer_run(self, run: Run, receipt: bytes | None = None, signature: bytes | None = None,
                     public_key: bytes | None = None) -> bool:
        """Insert a run reported by a peer; returns False for a replay of one already recorded."""
        run.origin = "peer"
        values = run.as_dict()
        del values["run_id"]
        values.update(receipt=receipt, signature=signature, public_key=public_key)
        cols = ",".join(values)
        cur = self.db.execute(f"INSERT OR IGNORE INTO runs({cols}) VALUES({','.join('?' * len(values))})",
                              tuple(values.values()))
        return cur.rowcount == 1

    def runs(self, *, exp_id: str | None = None, status: str | None = None, origin: str | None = None,
             peer: str | None = None, kind: str | None = None, limit: int | None = None) -> list[Run]:
        where, args = [], []
        for col, val in (("exp_id", exp_id), ("status", status), ("origin", origin), ("peer", peer), ("kind", kind)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = f"SELECT {','.join(RUN_FIELDS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY run_id"
        if limit:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY run_id"
        return [Run.from_row(dict(r)) for r in self.db.execute(sql, args)]

    def harness_values(self, commit_id: str, protocol_id: str) -> tuple[float, float] | None:
        """(val_bpb, private_bpb) of the newest local run of `commit_id` that this node's harness
        measured with its private split (harness/verdict.does_not_generalise compares against it)."""
        rows = self.db.execute(
            "SELECT val_bpb, metrics FROM runs WHERE commit_id=? AND protocol_id=? AND origin='local' "
            "AND val_bpb IS NOT NULL AND status NOT IN ('crash', 'aborted', 'running', 'refuted') "
            "ORDER BY run_id DESC LIMIT 20", (commit_id, protocol_id))
        for value, metrics in rows:
            try:
                m = json.loads(metrics or "{}")
                if isinstance(m, dict) and m.get("measured_by") == "harness" and m.get("private_bpb"):
                    return float(value), float(m["private_bpb"])
            except (ValueError, TypeError):
                continue
        return None

    def run_cpu_seconds(self, commit_id: str, protocol_id: str) -> float | None:
        """CPU seconds of the newest local run of `commit_id` that came to a value (its `cpu_s`,
        counted by the runner from outside): harness/verdict.over_compute holds descendants to it."""
        rows = self.db.execute(
            "SELECT metrics FROM runs WHERE commit_id=? AND protocol_id=? AND origin='local' "
            "AND val_bpb IS NOT NULL AND status NOT IN ('crash', 'aborted', 'running', 'refuted') "
            "ORDER BY run_id DESC LIMIT 20", (commit_id, protocol_id))
        for (metrics,) in rows:
            try:
                m = json.loads(metrics or "{}")
                cpu = float(m["cpu_s"]) if isinstance(m, dict) and m.get("cpu_s") else None
            except (ValueError, TypeError):
                continue
            if cpu is not None and cpu > 0:
                return cpu
        return None

    def set_run_receipt(self, run_id: int, receipt: bytes, signature: bytes, public_key: bytes) -> None:
        self.db.execute("UPDATE runs SET receipt=?, signature=?, public_key=? WHERE run_id=?",
                        (receipt, signature, public_key, run_id))

    def signed_runs(self, protocol_id: str | None, limit: int = 5000, since: float | None = None,
                    statuses: Collection[str] | None = None) -> list[tuple[bytes, bytes, bytes, str]]:
        """(receipt, signature, public key, description) of every result with a receipt, newest last;
        with `since`, only results that finished (receipt time) at or after it; protocol None: all;
        `statuses`: only results with one of these statuses."""
        only = sorted(statuses) if statuses is not None else []
        rows = self.db.execute(
            "SELECT receipt, signature, public_key, description FROM runs WHERE receipt IS NOT NULL"
            " AND (? IS NULL OR protocol_id=?)"
            + (f" AND status IN ({','.join('?' * len(only))})" if statuses is not None else "") +
            " AND kind IN ('experiment','baseline') AND COALESCE(finished_at, 0) >= ? ORDER BY run_id DESC LIMIT ?",
            (protocol_id, protocol_id, *only, since if since is not None else float("-inf"), limit))
        return [(r[0], r[1], r[2], r[3]) for r in rows][::-1]

    def run_receipt(self, run_id: int) -> tuple[bytes | None, bytes | None, bytes | None]:
        row = self.db.execute("SELECT receipt, signature, public_key FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return (row[0], row[1], row[2]) if row else (None, None, None)

    def protocol_summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per protocol: how many results this ledger holds and the best val_bpb among them."""
        return {p: {"results": n, "best": best} for p, n, best in self.db.execute(
            f"SELECT protocol_id, COUNT(*), MIN(CASE WHEN status IN {sql_in(VALUED)}"
            " THEN val_bpb END) FROM runs WHERE kind IN ('experiment','baseline') GROUP BY protocol_id")}

    def kept_wins(self, protocol_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Kept experiments of a protocol, best first: this node's, and peers' unless this node's own
        re-run refuted a claim of that peer (a liar's "wins" are not worth combining)."""
        rows = self.db.execute(
            "SELECT r.exp_id, r.commit_id AS commit_id, r.parent, MIN(r.val_bpb) AS val_bpb, r.description,"
            " CASE WHEN r.origin='local' THEN '' ELSE r.peer END FROM runs r"
            " WHERE r.protocol_id=? AND r.kind='experiment' AND r.status='kept' AND r.val_bpb IS NOT NULL"
            " AND (r.origin='local' OR r.peer NOT IN (SELECT p.peer FROM runs v JOIN runs p ON p.exp_id=v.exp_id"
            "   AND p.origin='peer' AND p.kind='experiment'"
            "   WHERE v.kind='verification' AND v.origin='local' AND v.status='refuted'))"
            " GROUP BY r.exp_id ORDER BY val_bpb LIMIT ?", (protocol_id, limit))
        return [{"exp_id": r[0], "commit": r[1], "parent": r[2], "val_bpb": r[3], "description": r[4] or "",
                 "peer": r[5] or ""} for r in rows]

    def sibling_wins(self, protocol_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """Peers' kept experiments of protocols other than `protocol_id` (a research node stores only its
        siblings': daemon/intake.py) that no experiment here came from yet, newest first, each with the
        value its finder's swarm measured for its parent (the finder's own measurement first) and its
        signed receipt (what its budget and hardware are read from)."""
        rows = self.db.execute(
            "SELECT r.exp_id, r.commit_id, r.parent, r.protocol_id, r.peer, r.val_bpb, r.description, r.receipt,"
            f" {_FINDERS_PARENT_VALUE} AS parent_value"
            " FROM runs r WHERE r.protocol_id!=? AND r.origin='peer' AND r.kind='experiment' AND r.status='kept'"
            " AND r.val_bpb IS NOT NULL AND r.exp_id NOT IN (SELECT source_exp FROM ideas)"
            " ORDER BY r.run_id DESC LIMIT ?", (protocol_id, limit))
        out: dict[str, dict[str, Any]] = {}  # one per experiment (two peers may have announced it)
        for r in rows:
            out.setdefault(r[0], {"exp_id": r[0], "commit": r[1], "parent": r[2], "protocol": r[3], "peer": r[4] or "",
                                  "value": r[5], "description": r[6] or "", "receipt": r[7], "parent_value": r[8]})
        return list(out.values())

    def add_idea(self, exp_id: str, source_exp: str, source_protocol: str, source_peer: str, source_label: str,
                 gain_there: float | None) -> None:
        """Record that experiment `exp_id` here is a sibling protocol's kept change (`source_exp`)."""
        self.db.execute(
            "INSERT OR IGNORE INTO ideas(exp_id, source_exp, source_protocol, source_peer, source_label, gain_there,"
            " proposed_at) VALUES(?,?,?,?,?,?,?)",
            (exp_id, source_exp, source_protocol, source_peer, source_label, gain_there, time.time()))

    def idea_rows(self, protocol_id: str) -> list[dict[str, Any]]:
        """Each idea tried here with how it fared: its newest local run (status, value) and the value of
        the baseline it was judged against, this node's own measurement (never the sibling's). Its gain
        there is the one known when it was proposed, else the one known now: a kept result can arrive
        before the value of its parent (gossip before catch-up), and the view should not stay blank."""
        rows = self.db.execute(
            "SELECT i.exp_id, i.source_exp, i.source_protocol, i.source_peer, i.source_label,"
            " COALESCE(i.gain_there, (SELECT " + _FINDERS_PARENT_VALUE + " - r.val_bpb FROM runs r"
            "  WHERE r.exp_id=i.source_exp AND r.protocol_id=i.source_protocol AND r.kind='experiment'"
            "  AND r.status='kept' AND r.val_bpb IS NOT NULL ORDER BY r.run_id LIMIT 1)) AS gain_there,"
            " i.proposed_at, e.description, e.parent,"
            " (SELECT r.status FROM runs r WHERE r.exp_id=i.exp_id AND r.origin='local' AND r.kind='experiment'"
            "  ORDER BY r.run_id DESC LIMIT 1) AS status,"
            " (SELECT r.val_bpb FROM runs r WHERE r.exp_id=i.exp_id AND r.origin='local' AND r.kind='experiment'"
            "  ORDER BY r.run_id DESC LIMIT 1) AS value,"
            " (SELECT b.val_bpb FROM baselines b WHERE b.protocol_id=? AND b.commit_id=e.parent"
            "  ORDER BY b.id DESC LIMIT 1) AS parent_value"
            " FROM ideas i JOIN experiments e ON e.exp_id=i.exp_id WHERE e.protocol_id=? ORDER BY i.proposed_at",
            (protocol_id, protocol_id))
        return [dict(r) for r in rows]

    def commits_of(self, protocol_id: str, limit: int = 3) -> list[str]:
        """A few commits of a protocol's results, those whose objects a node holds first: kept results
        (their lineage is the one fetched), then measured baselines (the genesis is every node's). A
        discarded result's objects are never fetched: a swarm whose results were all discarded was
        otherwise known here by those alone, and its genesis never found."""
        return [r[0] for r in self.db.execute(
            "SELECT commit_id FROM runs WHERE protocol_id=? AND commit_id IS NOT NULL AND commit_id != ''"
            " GROUP BY commit_id ORDER BY MAX(status='kept') DESC, MAX(status='baseline') DESC, MAX(run_id) DESC"
            " LIMIT ?", (protocol_id, limit))]

    def sample_receipts(self) -> dict[str, bytes]:
        """One signed receipt per protocol (what a relay reads a foreign protocol's budget from)."""
        return {p: r for p, r in self.db.execute(
            "SELECT protocol_id, MAX(receipt) FROM runs WHERE receipt IS NOT NULL GROUP BY protocol_id")}

    def counts(self) -> dict[str, int]:
        out = {"local": 0, "peer": 0}
        for origin, n in self.db.execute("SELECT origin, COUNT(*) FROM runs WHERE kind='experiment' GROUP BY origin"):
            out[origin] = n
        return out

    def status_counts(self, origin: str = "local") -> dict[str, int]:
        return {s: n for s, n in self.db.execute(
            "SELECT status, COUNT(*) FROM runs WHERE origin=? GROUP BY status", (origin,))}

    # --- claims (leases on experiments, local and peers') ---------------------------------------
    def add_claim(self, exp_id: str, peer: str, protocol_id: str, parent: str, lease_until: float,
                  description: str, ts: float, semantic_id: str = "") -> None:
        """Record a claim; a newer claim of the same peer on the same id renews its lease."""
        self.db.execute(
            "INSERT INTO claims(exp_id, peer, protocol_id, parent, lease_until, description, ts, semantic_id)"
            " VALUES(?,?,?,?,?,?,?,?)"
            " ON CONFLICT(exp_id, peer) DO UPDATE SET lease_until=max(lease_until, excluded.lease_until),"
            " ts=max(ts, excluded.ts)", (exp_id, peer, protocol_id, parent, lease_until, description, ts, semantic_id))

    def claims(self, exp_id: str | None = None, active_at: float | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM claims", []
        conds = []
        if exp_id is not None:
            conds.append("exp_id=?")
            args.append(exp_id)
        if active_at is not None:
            conds.append("lease_until>?")
            args.append(active_at)
            conds.append("exp_id NOT IN (SELECT exp_id FROM runs WHERE kind='experiment' AND status IN"
                         f" {sql_in(COMPLETED)})")
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY ts", args)]

    # --- the message board ------------------------------------------------------------------------
    def add_post(self, author: str, name: str, text: str, ts: float, origin: str) -> bool:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO posts(author, name, text, ts, received_at, origin) VALUES(?,?,?,?,?,?)",
            (author, name, text, ts, time.time(), origin))
        return cur.rowcount == 1

    def posts(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM (SELECT * FROM posts ORDER BY ts DESC LIMIT ?) ORDER BY ts", (limit,))
        return [dict(r) for r in rows]

    # --- baselines --------------------------------------------------------------------------------
    def record_baseline(self, protocol_id: str, commit_id: str, val_bpb: float | None, reason: str,
                        exp_id: str = "", source_peer: str = "") -> None:
        self.db.execute(
            "INSERT INTO baselines(protocol_id, commit_id, exp_id, val_bpb, source_peer, reason, adopted_at)"
            " VALUES(?,?,?,?,?,?,?)", (protocol_id, commit_id, exp_id, val_bpb, source_peer, reason, time.time()))

    def baseline(self, protocol_id: str) -> Baseline | None:
        row = self.db.execute(
            f"SELECT {BASELINE_FIELDS} FROM baselines"
            " WHERE protocol_id=? ORDER BY id DESC LIMIT 1", (protocol_id,)).fetchone()
        return Baseline(**dict(row)) if row else None

    def latest_baseline(self) -> Baseline | None:
        """The newest baseline of any protocol: the one this node works from (a node researches one
        protocol at a time; `get best` and `swarm` read it without opening the node's config)."""
        row = self.db.execute(
            f"SELECT {BASELINE_FIELDS} FROM baselines"
            " ORDER BY id DESC LIMIT 1").fetchone()
        return Baseline(**dict(row)) if row else None

    def baseline_history(self, protocol_id: str) -> list[Baseline]:
        rows = self.db.execute(
            f"SELECT {BASELINE_FIELDS} FROM baselines"
            " WHERE protocol_id=? ORDER BY id", (protocol_id,))
        return [Baseline(**dict(r)) for r in rows]

    # --- named questions other modules ask ----------------------------------------------------------
    def first_claimant(self, exp_id: str) -> str | None:
        """The peer whose claim on `exp_id` came first here (ties: the first stored)."""
        row = self.db.execute("SELECT peer FROM claims WHERE exp_id=? ORDER BY ts, rowid LIMIT 1", (exp_id,)).fetchone()
        return row[0] if row else None

    def note_peer_result_reason(self, exp_id: str, peer: str, reason: str) -> None:
        """Why this node set a peer's result aside (e.g. its trust policy), kept on that result's row."""
        self.db.execute("UPDATE runs SET reason=? WHERE exp_id=? AND peer=? AND origin='peer'", (reason, exp_id, peer))

    def peer_claimed_value(self, exp_id: str, peer: str) -> float | None:
        """The value `peer` published for its experiment `exp_id` (its first result with one)."""
        row = self.db.execute(
            "SELECT val_bpb FROM runs WHERE exp_id=? AND peer=? AND origin='peer' AND kind='experiment'"
            " AND val_bpb IS NOT NULL ORDER BY rowid LIMIT 1", (exp_id, peer)).fetchone()
        return row[0] if row else None

    def memory_gb_of(self, exp_id: str) -> float | None:
        """Peak memory of a run of `exp_id`, this node's own first."""
        row = self.db.execute(
            "SELECT memory_gb FROM runs WHERE exp_id=? AND memory_gb IS NOT NULL ORDER BY origin='local' DESC, run_id"
            " LIMIT 1", (exp_id,)).fetchone()
        return row[0] if row else None

    def change_key(self) -> tuple[Any, ...]:
        """Changes whenever a run is added, one starts or ends, or a baseline is recorded: what
        SWARM.md's rendering waits on (it reads the whole ledger)."""
        return tuple(self.db.execute(
            "SELECT (SELECT MAX(rowid) FROM runs), (SELECT COUNT(*) FROM runs WHERE status='running'),"
            " (SELECT MAX(id) FROM baselines)").fetchone())

    def run_status(self, run_id: int) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def peer_delays(self, limit: int = 500) -> list[tuple[str, float]]:
        """(peer, seconds from a peer's run finishing to its result arriving here), newest first:
        the clock offsets `doctor` looks at."""
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT peer, received_at - finished_at FROM runs WHERE origin='peer' AND received_at IS NOT NULL"
            " AND finished_at IS NOT NULL ORDER BY run_id DESC LIMIT ?", (limit,))]

    def __iter__(self) -> Iterator[Run]:
        return iter(self.runs())
