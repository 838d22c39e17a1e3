"""One resolved configuration per node: what each key with a named mode (config.py `_mode`) amounts to.

node.toml says `margin = "auto"` or `threads = "auto"`; the node decides what that means from what it
measured and what the machine has (the noise margin, its runs' median time, its cores and GPUs).
Each of those decisions lives with the code that makes it (the engine's margin and time limit, the
workers' split, the turn's deferral); this module only gathers their results into one table, so
`p2p-research config` and `status` show the value in force beside the value set, and where it came from.
Pure: the facts are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2p_research.config import NodeConfig


@dataclass(frozen=True)
class Facts:
    """What the node measured or found, the inputs of its automatic values."""

    margin: float                   # the keep margin in force (engine.margin)
    margin_from: str                # "research.margin", "noise measured here", "the default until noise is measured"
    time_limit_s: float             # a run's time limit in force (engine.time_limit)
    expected_run_s: float | None    # the median of this node's recent runs, None before any
    workers: list[dict[str, str]]   # one environment per worker (daemon/workers.worker_envs)
    defer_s: float                  # how long a candidate waits for the designated replicas (turns.defer_s)


def _row(set_value: Any, mode: str, effective: Any, source: str) -> dict[str, Any]:
    return {"set": mode if set_value is None else set_value, "effective": effective,
            "from": "as set" if set_value is not None else source}


def resolve(cfg: NodeConfig, facts: Facts, budget: str) -> dict[str, dict[str, Any]]:
    """Every key with a named mode: {"set": what node.toml says, "effective": what is in force, "from": why}."""
    r, v = cfg.research, cfg.verification
    threads = sorted({env.get("P2P_THREADS", "") for env in facts.workers} - {""})
    out = {
        "research.budget": {"set": r.budget_tokens or r.budget_seconds or "default", "effective": budget,
                            "from": "as set" if r.budget_tokens or r.budget_seconds else "the harness's default"},
        "research.margin": _row(r.margin, "auto", facts.margin, facts.margin_from),
        "research.run_timeout_s": _row(r.run_timeout_s, "auto", round(facts.time_limit_s, 1),
                                       "5 x the median run + 60 s (at least 120 s)" if facts.expected_run_s
                                       else "no run finished yet: the first run's limit"),
        "research.workers": _row(r.workers, "auto", len(facts.workers), "one per visible GPU, else one"),
        "research.threads": _row(r.threads, "auto", ",".join(threads) if threads else "torch's default",
                                 "the cores split between CPU workers" if threads else "one worker: torch's default"),
        "verification.tolerance": _row(v.tolerance, "auto", round(2 * facts.margin, 6), "2 x the margin in force"),
        "verification.quorum": _row(v.quorum, "off", v.quorum if v.quorum is not None else "off",
                                    "a local re-run always decides"),
        "verification.replicas": _row(v.replicas, "all", v.replicas if v.replicas is not None else "all",
                                      "every node re-runs each result"),
        "verification.defer_s": _row(v.defer_s, "auto", round(facts.defer_s, 1),
                                     "4 x the median run, at least 60 s"),
    }
    return out
