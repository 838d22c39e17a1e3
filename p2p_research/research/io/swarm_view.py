"""The whole swarm at a glance, from what this node's ledger holds (its own runs and every result its
peers announced): each node's best over time, kept results by finder, which knobs and changes paid,
ideas from sibling protocols and whether they held here, and a swarm-wide results.tsv in autoresearch's
format that analysis.ipynb reads.

Pure over the rows it is given (`rows_of` reads them from the ledger); `swarm` and the dashboard
show it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from p2p_research.store import queries
from p2p_research.store.ledger import Ledger

KEPT = ("kept", "confirmed", "baseline")
_KNOB = re.compile(r"\b([A-Z][A-Z0-9_]*(?:\[\d+\])?) (\S+) -> (\S+)")


@dataclass(frozen=True)
class Row:
    peer: str
    kind: str          # experiment | baseline (verifications and noise runs re-measure: not results)
    exp_id: str
    commit: str
    parent: str
    status: str
    val_bpb: float | None
    memory_gb: float | None
    at: float
    description: str


def rows_of(ledger: Ledger, protocol_id: str) -> list[Row]:
    """Every finished run under `protocol_id`, the node's own and its peers', oldest first."""
    return [Row(r["peer"] or "local", r["kind"], r["exp_id"], r["commit_id"], r["parent"] or "", r["status"], r["val_bpb"],
                r["memory_gb"], float(r["at"] or 0), r["description"] or "")
            for r in queries.finished_results(ledger.db, protocol_id)]


def of_ledger(ledger: Ledger, protocol_id: str, self_peer: str = "") -> dict[str, Any]:
    """`view` of everything `ledger` holds under `protocol_id`, with the protocol named, and the ideas
    tried here that came from sibling protocols (research/io/ideas.py: which held on which hardware): what
    the daemon's `swarm` control call and the dashboard's /api/swarm answer."""
    from p2p_research.research.io.ideas import ideas_view

    return {**view(rows_of(ledger, protocol_id), self_peer), "protocol_id": protocol_id,
            "across_hardware": ideas_view(ledger, protocol_id)}


def view(rows: list[Row], self_peer: str = "") -> dict[str, Any]:
    """Each node's best over time and kept count, the knobs ranked by what they gained, and the
    swarm's best over time (`self_peer` marks this node's row)."""
    best_of_commit: dict[str, float] = {}
    for r in rows:
        if r.val_bpb is not None and r.status in KEPT + ("discarded",):
            best_of_commit[r.commit] = min(r.val_bpb, best_of_commit.get(r.commit, r.val_bpb))
    nodes: dict[str, dict[str, Any]] = {}
    knobs: dict[str, dict[str, Any]] = defaultdict(lambda: {"kept": 0, "tried": 0, "gain": 0.0})
    swarm_best: list[tuple[float, float]] = []
    for r in rows:
        n = nodes.setdefault(r.peer, {"peer": r.peer, "self": r.peer == self_peer, "runs": 0, "kept": 0,
                                      "best": None, "best_over_time": []})
        n["runs"] += 1
        kept = r.status in KEPT and r.val_bpb is not None
        for name, _, _ in _KNOB.findall(r.description):
            knobs[name]["tried"] += 1
            if kept and r.status != "baseline":
                knobs[name]["kept"] += 1
                parent = best_of_commit.get(r.parent)
                if parent is not None and r.val_bpb is not None:
                    knobs[name]["gain"] += max(0.0, parent - r.val_bpb)
        if not kept:
            continue
        n["kept"] += r.status != "baseline"
        if n["best"] is None or r.val_bpb < n["best"]:  # type: ignore[operator]
            n["best"] = r.val_bpb
            n["best_over_time"].append([r.at, r.val_bpb])
        if not swarm_best or r.val_bpb < swarm_best[-1][1]:  # type: ignore[operator]
            swarm_best.append((r.at, r.val_bpb))  # type: ignore[arg-type]
    paid = sorted(({"knob": k, **v} for k, v in knobs.items()), key=lambda k: (-k["gain"], -k["kept"], k["knob"]))
    return {"nodes": sorted(nodes.values(), key=lambda n: (n["best"] is None, n["best"] or 0.0)),
            "knobs": paid, "swarm_best_over_time": [list(p) for p in swarm_best],
            "runs": len(rows), "kept": sum(n["kept"] for n in nodes.values())}


def results_tsv(rows: list[Row]) -> str:
    """Every result the swarm reported, in autoresearch's results.tsv columns (keep | discard | crash),
    the finder in the description: analysis.ipynb reads it unchanged."""
    from p2p_research.store.results_tsv import HEADER, STATUS, _clean

    out = [HEADER]
    for r in rows:
        status = STATUS.get(r.status, "keep" if r.status == "confirmed" else "discard" if r.status == "refuted" else "")
        if not status:
            continue
        out.append(f"{r.commit[:7]}\t{0.0 if r.val_bpb is None else r.val_bpb:.6f}\t"
                   f"{0.0 if r.memory_gb is None else r.memory_gb:.1f}\t{status}\t"
                   f"{_clean(r.description)} [by {r.peer[:16]}]\n")
    return "".join(out)
