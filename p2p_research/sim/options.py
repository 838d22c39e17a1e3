"""What a simulation runs: the knobs of `p2p-research simulate`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


def parse_duration(text: str) -> float:
    """'300', '300s', '5m', '1m30s', '1h' -> seconds."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 5m, 1m30s, 300)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _check_surrogate(family: str) -> None:
    from p2p_research.research.io.surrogate import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"--surrogate must be one of {', '.join(FAMILIES)}")


@dataclass
class SimOptions:
    report: Path
    nodes: int = 35
    duration_s: float = 300.0
    objective: str = "surrogate"      # surrogate | torch
    fanout: int = 3                   # each node bootstraps from up to this many earlier nodes
    churn: float = 0.0                # fraction of nodes SIGKILLed once and restarted
    churn_downtime_s: float = 5.0
    liars: int = 0
    seed: int = 0
    cost_s: float = 15.0              # surrogate seconds per run
    solo: bool = True                 # one extra node alone, same objective, same duration
    verification: str = "adaptive"
    target_peers: int = 6
    start_rate: float = 3.0           # node processes started per second
    budget_tokens: int = 0            # torch: the training budget (0 = the harness default)
    max_trainings: int = 0            # torch: machine-wide concurrent trainings (0 = one per core)
    count_from: str = "all-up"        # the duration counts from: all-up | first-start
    settle_s: float = 180.0           # after the duration: drain the nodes and wait (at most) for one baseline
    margin: float | None = None       # keep threshold passed to every node (None: the node's own, research.margin)
    announce: str = "auto"            # network.announce of every node: auto | all | kept (research/flooding.py)
    genesis: str = "shared"           # research.genesis of every node: shared | each (research/genesis.py)
    surrogate: str = "default"        # research.surrogate of every node: the landscape (research/io/surrogate.py)
    spawn: str = "fork"               # how daemons start: fork (from one process that imported the node,
                                      # sim/forkserver.py) | exec (each its own interpreter, as `node start`)

    def validate(self) -> SimOptions:
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if self.objective not in ("surrogate", "torch"):
            raise ValueError("--objective must be surrogate or torch")
        if self.fanout < 1:
            raise ValueError("--fanout must be at least 1")
        if not 0.0 <= self.churn <= 1.0:
            raise ValueError("--churn must be between 0 and 1")
        if not 0 <= self.liars < self.nodes:
            raise ValueError("--liars must be at least 0 and fewer than --nodes")
        if self.cost_s < 0:
            raise ValueError("--cost must be >= 0")
        if self.announce not in ("auto", "all", "kept"):
            raise ValueError("--announce must be auto, all or kept")
        if self.genesis not in ("shared", "each"):
            raise ValueError("--genesis must be shared or each")
        _check_surrogate(self.surrogate)
        if self.verification not in ("always", "adaptive", "never"):
            raise ValueError("--verification must be always, adaptive or never")
        if self.count_from not in ("all-up", "first-start"):
            raise ValueError("--count-from must be all-up or first-start")
        if self.spawn not in ("fork", "exec"):
            raise ValueError("--spawn must be fork or exec")
        if self.start_rate <= 0:
            raise ValueError("--start-rate must be positive")
        return self
