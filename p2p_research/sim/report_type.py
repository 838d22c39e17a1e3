"""report.json's one type: the figures both simulation engines give, each under one name.

The process engine (sim/figures.collect: real daemons, read from their ledgers) and the discrete-event
engine (sim/des/run.DesSimulation.metrics: virtual nodes) each used to build report.json by hand, with
90 keys in common and nothing holding them equal. Both now fill a `SimReport`: a figure one engine
forgets, or names otherwise, is a TypeError where the report is made, not a key a reader misses later.
What only one engine can measure (the daemons' processes, sockets and counters; the model's load and
parameters) goes in `engine_figures`, which report.json shows beside the common figures at its top level
(its layout is unchanged). docs/scale.md compares the two engines on these figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

TARGETS = (1.56, 1.54, 1.52, 1.50, 1.48)  # values the swarm's best is timed to (time_to_target_s)


@dataclass
class SimReport:
    """One simulation's figures (see the module's docstring); `to_json` is report.json's content."""

    engine: str                              # "process" | "des"
    # --- the run ---------------------------------------------------------------------------------------
    nodes: int
    solo_node: bool
    duration_s: float
    requested_duration_s: float
    duration_counted_from: str
    startup_s: float | None
    interrupted: bool | None
    objective: str
    cost_s: float | None
    fanout: int | None
    churn: float
    liars: int
    seed: int
    verification: str
    announce: str
    # --- experiments, duplicates -------------------------------------------------------------------------
    experiments_completed: int
    experiments_completed_in_window: int
    window_s: float
    settle: dict[str, Any]
    gap_between_runs_s: dict[str, Any]
    run_seconds_by_kind: dict[str, float]
    experiments_completed_honest: int
    experiments_per_node: dict[str, int] | None
    experiments_per_node_summary: dict[str, Any]
    experiments_by_status: dict[str, int]
    combinations: dict[str, Any]
    experiments_aborted: int
    duplicates_wasted: int
    duplicates_wasted_pct: float
    # of duplicates_wasted: deliberate re-runs of candidates that only unproven peers reported negative
    # (research/negatives.py: a sampling proposal checks such a report); the rest are dedup's misses
    duplicates_checking_negatives: int
    duplicates_avoided: dict[str, Any]
    # --- trust and spread --------------------------------------------------------------------------------
    verifications: dict[str, Any]
    adoptions: dict[str, Any]
    gossip_latency_s: dict[str, Any]
    propagation: dict[str, Any]
    # --- failures, churn ---------------------------------------------------------------------------------
    crashed_nodes: int
    stop_timeouts: list[str]
    crashes: list[dict[str, Any]]
    churn_events: list[dict[str, Any]]
    # --- where the swarm ended ---------------------------------------------------------------------------
    liar_nodes: list[str]
    honest_on_fabricated_baseline: list[str]
    convergence: dict[str, Any]
    final_baselines: dict[str, dict[str, Any]] | None
    solo: dict[str, Any] | None
    time_to_target_s: dict[str, float | None]
    series: dict[str, Any]
    engine_figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = set(self.engine_figures) & {f.name for f in fields(self)}
        if clash:
            raise ValueError(f"engine figures {sorted(clash)} would replace common figures")

    def to_json(self) -> dict[str, Any]:
        """report.json's content: the common figures, then the engine's own, then `series` (which
        write_report moves to series.json)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("engine_figures", "series")}
        doc.update(self.engine_figures)
        doc["series"] = self.series
        return doc
