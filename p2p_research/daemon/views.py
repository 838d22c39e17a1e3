"""What the inspection commands show, computed from the ledger and the workspace (pure reads).

Used by the daemon's control handlers and, when no daemon runs, directly by the CLI: one definition
of each view, so `--json` output is the same either way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from p2p_research.research.io.workspace import Workspace, WorkspaceError
from p2p_research.store import queries
from p2p_research.store.ledger import Ledger, Run


def run_entry(run: Run, self_peer: str) -> dict[str, Any]:
    return {
        "id": run.exp_id, "commit": run.commit_id, "parent": run.parent, "peer": run.peer or self_peer or "local",
        "origin": run.origin, "kind": run.kind, "status": run.status, "val_bpb": run.val_bpb,
        "description": run.description, "reason": run.reason, "training_seconds": run.training_seconds,
        "memory_gb": run.memory_gb, "started_at": run.started_at, "finished_at": run.finished_at,
        "received_at": run.received_at, "hardware": run.hardware, "protocol_id": run.protocol_id,
        "metrics": run.metrics, "log": run.log_path or "", "agent_log": _agent_log(run.log_path),
    }


def _agent_log(log_path: str | None) -> str:
    """The agent's output beside a local run's log, where the run's code came from an agent."""
    if not log_path:
        return ""
    agent = Path(log_path).with_name("agent.log")
    return str(agent) if agent.is_file() else ""


def experiments_view(ledger: Ledger, self_peer: str = "", *, status: str | None = None, peer: str | None = None,
                     origin: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    runs = []
    if limit and peer is None:  # the newest ones only (the dashboard asks every second): bounded in SQL
        runs = [r for r in ledger.runs(status=status, origin=origin, limit=3 * limit) if r.kind in ("experiment", "baseline")]
    if len(runs) < (limit or 0) or not limit or peer is not None:
        runs = [r for r in ledger.runs(status=status, origin=origin) if r.kind in ("experiment", "baseline")]
    if peer is not None:
        runs = [r for r in runs if (r.peer or self_peer).startswith(peer) or (peer == "local" and r.origin == "local")]
    if limit:
        runs = runs[-limit:]
    return [run_entry(r, self_peer) for r in runs]


def show_view(ledger: Ledger, ws: Workspace, prefix: str, self_peer: str = "") -> dict[str, Any]:
    if len(prefix) < 4:
        raise ValueError("give at least 4 characters of an experiment id or commit")
    matches = ledger.find_experiments(prefix)
    if not matches:
        raise ValueError(f"no experiment or commit starts with {prefix!r}")
    if len({m["exp_id"] for m in matches}) > 1:
        raise ValueError(f"{prefix!r} is ambiguous ({len(matches)} experiments); give more characters")
    exp = matches[0]
    runs = [run_entry(r, self_peer) for r in ledger.runs(exp_id=exp["exp_id"])]
    try:
        diff = ws.diff(exp["commit_id"]) if ws.has_object(exp["commit_id"]) else ""
    except WorkspaceError:
        diff = ""
    return {"experiment": {**exp, "id": exp["exp_id"], "commit": exp["commit_id"]},
            "runs": runs, "diff": diff, "have_objects": bool(diff) or ws.is_complete(exp["commit_id"]),
            "receipts": signed_receipts(ledger, exp["exp_id"])}


def signed_receipts(ledger: Ledger, exp_id: str) -> list[dict[str, Any]]:
    """The signed receipts of an experiment's runs, each checked again here: what the measurer signed
    (protocol, parent, commit, value, seed, hardware, software, time) and whether the signature holds."""
    from p2p_research.wire import Result, WireError, check_result, decode_receipt

    out = []
    for run in ledger.runs(exp_id=exp_id):
        if run.run_id is None:
            continue
        receipt, sig, pub = ledger.run_receipt(run.run_id)
        if not receipt or not sig or not pub:
            continue
        try:
            r = decode_receipt(receipt)
            check_result(Result(receipt=r, signature=sig, public_key=pub, objects=[], objects_total=0))
            ok = "valid"
        except WireError as e:
            out.append({"run": run.run_id, "signature": f"INVALID: {e.reason}"})
            continue
        out.append({"run": run.run_id, "signature": ok, "signed_by": r.peer, "receipt": r.to_dict(),
                    "signature_hex": sig.hex()})
    return out


def leaderboard_view(ledger: Ledger, self_peer: str = "", limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Best results per protocol, one line per experiment, with who found it and its status. Kept
    results (kept, confirmed by a verifier, or a baseline) are ranked by val_bpb; a discarded one is
    listed after them unranked (it may have a low value and still have lost to its own baseline)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in queries.best_per_experiment(ledger.db):
        lst = out.setdefault(r["protocol_id"], [])
        if len(lst) >= limit:
            continue
        exp = ledger.experiment(r["exp_id"]) or {}
        finder = exp.get("proposer") or self_peer or "local"
        status = "baseline" if r["base"] else "kept" if r["kept"] else "discarded"
        rank = sum(1 for x in lst if x["rank"] is not None) + 1 if r["kept"] else None
        lst.append({"rank": rank, "status": status, "id": r["exp_id"], "commit": exp.get("commit_id", ""),
                    "val_bpb": r["best"], "runs": r["runs"], "found_by": finder, "origin": exp.get("origin", ""),
                    "description": exp.get("description", "")})
    return out


def lineage_view(ledger: Ledger, protocol_id: str, self_peer: str = "") -> list[dict[str, Any]]:
    return [{"commit": b.commit_id, "exp_id": b.exp_id, "val_bpb": b.val_bpb, "found_by": b.source_peer or self_peer or "local",
             "reason": b.reason, "adopted_at": b.adopted_at} for b in ledger.baseline_history(protocol_id)]


def board_view(ledger: Ledger, limit: int = 50) -> list[dict[str, Any]]:
    return ledger.posts(limit)


def peer_announcements(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Per peer: how many results it announced and its best value (for `peers -v`)."""
    out: dict[str, dict[str, Any]] = {}
    for row in queries.announcements_by_peer(ledger.db):
        out[row["peer"]] = {"results": row["n"], "best_val_bpb": row["best"], "last_received_at": row["last"]}
    for row in queries.claims_by_peer(ledger.db):
        out.setdefault(row["peer"], {"results": 0, "best_val_bpb": None, "last_received_at": None})["claims"] = row["n"]
    return out


def worker_view(engine: Any) -> dict[str, Any]:
    """One worker's state for `status`: what it runs, on which device, how far it got."""
    p = engine.progress
    return {"worker": engine.worker, "phase": p.phase, "exp_id": p.exp_id, "description": p.description,
            "elapsed_s": time.time() - p.started_at if p.started_at and p.phase in ("baseline", "training") else None,
            "device": dict(engine.worker_env), "experiments_done": p.experiments_done, "kept": p.kept,
            "waiting_for": p.waiting_for if p.phase == "waiting" else ""}
