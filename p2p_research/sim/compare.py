"""Two simulation reports side by side: `p2p-research compare A B`.

docs/scale.md checks the discrete-event model against real daemons (35 on one machine, hundreds on a
Ray cluster with `simulate --cluster`) figure by figure; both engines fill one report type
(sim/report_type.py), so the same figure sits under the same key in either report.json. This reads two
reports and lines up the figures that decide whether the model holds, with B's difference from A (pure:
the CLI prints the rows, or gives them as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2p_research.errors import P2PResearchError
from p2p_research.sim.report import accidental_duplicates
from p2p_research.sim.report_type import TARGETS


class ReportError(P2PResearchError):
    """A folder without a readable report.json."""


def load_report(path: Path) -> dict[str, Any]:
    """report.json of a report folder (or the file itself)."""
    f = path / "report.json" if path.is_dir() else path
    try:
        m = json.loads(f.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no report.json (a `simulate` report folder?)") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{f}: not a readable report ({e})") from None
    if not isinstance(m, dict) or "engine" not in m:
        raise ReportError(f"{f}: not a simulate report (no engine)")
    return m


def _get(m: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(m, dict):
            return None
        m = m.get(k)  # type: ignore[assignment]
    return m


def _ratio(m: dict[str, Any], a: str, b: str) -> float | None:
    r = m.get("run_seconds_by_kind") or {}
    return round(r[a] / r[b], 3) if r.get(a) is not None and r.get(b) else None


def _on_one(m: dict[str, Any]) -> float | None:
    c = m.get("convergence") or {}
    return round(c["on_best_commit"] / c["honest_nodes"], 3) if c.get("honest_nodes") else None


#: (figure, how it is read from a report, whether lower is better)
FIGURES: list[tuple[str, Callable[[dict[str, Any]], Any], bool | None]] = [
    ("nodes", lambda m: m.get("nodes"), None),
    ("window (s)", lambda m: m.get("window_s"), None),
    ("experiments completed in the window", lambda m: m.get("experiments_completed_in_window"), False),
    ("experiments completed", lambda m: m.get("experiments_completed"), False),
    ("wasted duplicates (%)", lambda m: m.get("duplicates_wasted_pct"), True),
    ("  by accident: not checks of unproven negative reports (%)",
     lambda m: accidental_duplicates(m)[0] if "duplicates_wasted" in m else None, True),
    ("verification / experiment run time", lambda m: _ratio(m, "verification", "experiment"), True),
    ("verifications confirmed", lambda m: _get(m, "verifications", "confirmed"), None),
    ("verifications refuted", lambda m: _get(m, "verifications", "refuted"), None),
    ("adoptions", lambda m: _get(m, "adoptions", "count"), None),
    ("adoption delay from announcement p50 (s)", lambda m: _get(m, "adoptions", "delay_from_announcement_s", "p50"), True),
    ("gossip latency p50 (s)", lambda m: _get(m, "gossip_latency_s", "p50"), True),
    ("gossip latency p99 (s)", lambda m: _get(m, "gossip_latency_s", "p99"), True),
    ("idle gap between runs p50 (s)", lambda m: _get(m, "gap_between_runs_s", "p50"), True),
    *[(f"swarm best reaches {v:.2f} at (s)", (lambda key: lambda m: _get(m, "time_to_target_s", key))(f"{v:.2f}"), True)
      for v in TARGETS],
    ("honest nodes on the best baseline (share)", _on_one, False),
    ("settle: one baseline after (s)", lambda m: _get(m, "settle", "settle_s"), True),
    ("speedup over the solo node", lambda m: _get(m, "solo", "speedup"), False),
    ("crashed nodes", lambda m: m.get("crashed_nodes"), True),
]


@dataclass
class Row:
    figure: str
    a: Any
    b: Any
    change_pct: float | None      # (b - a) / a, where both are numbers and a is not 0
    lower_is_better: bool | None


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    rows = []
    for name, read, lower in FIGURES:
        va, vb = read(a), read(b)
        change = None
        if isinstance(va, int | float) and isinstance(vb, int | float) and va:
            change = round(100 * (vb - va) / abs(va), 1)
        rows.append(Row(name, va, vb, change, lower))
    return rows


def describe(m: dict[str, Any]) -> str:
    """One line naming a report: engine, nodes, where they ran, seed."""
    where = (f"Ray cluster, {len(m['cluster']['hosts'])} machine(s)" if m.get("cluster") else
             "one machine" if m.get("engine") == "process" else "modelled network")
    return f"{m.get('engine')}: {m.get('nodes')} nodes, {where}, seed {m.get('seed')}"


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
