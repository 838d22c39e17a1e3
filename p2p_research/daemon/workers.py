"""How many experiments a node runs at once, and on what: one worker per visible GPU (each pinned to its
own with CUDA_VISIBLE_DEVICES), else `research.workers` on CPU, splitting the cores between them.

Workers share the node's ledger (an experiment one registers is known to the others before it runs),
its identity, its claims and its swarm view; a baseline one of them keeps or adopts is offered to the
others at once (`ResearchLoop.offer`).
"""

from __future__ import annotations

import os

from p2p_research.config import NodeConfig
from p2p_research.research.io.hardware import nvidia_gpus, visible_devices


def visible_gpu_ids() -> list[str]:
    """The CUDA device indices a child may be given: the GPUs this node's own CUDA_VISIBLE_DEVICES
    leaves visible, read as the hardware class reads them (a child's mask replaces the node's, so
    it gets absolute indices)."""
    rows, mask = nvidia_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES")
    if rows is None:  # no nvidia-smi to map the mask with: its entries as given
        return [e.strip() for e in (mask or "").split(",") if e.strip()]
    return [index for index, _, _ in visible_devices(rows, mask)]


def worker_envs(cfg: NodeConfig, gpus: list[str] | None = None, cpus: int | None = None) -> list[dict[str, str]]:
    """One environment per worker (what its runs add to theirs)."""
    r = cfg.research
    if r.objective == "surrogate":
        return [{} for _ in range(r.workers or 1)]
    gpus = (visible_gpu_ids() if r.device != "cpu" else []) if gpus is None else gpus
    n = r.workers or max(1, len(gpus))
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]
    if n == 1:
        return [{}]
    cpus = cpus or os.cpu_count() or 1
    threads = r.threads or max(1, cpus // n)
    return [{"P2P_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)} for _ in range(n)]
