"""bench/gpu_check.py runs everywhere: on a GPU machine every step, here its CUDA steps skipped with the
reason and the 2-node swarm on the CPU (so the script a GPU day needs is known to work)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, small_target


@pytest.mark.slow
def test_the_gpu_check_runs_here_with_its_cuda_steps_skipped_with_the_reason():
    import torch

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--budget-tokens", "65536",
                        "--swarm-budget-tokens", "8192",
                        "--swarm-target", str(small_target())], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    verdicts = {line.split(":")[0][6:]: line[:4].strip() for line in lines[1:] if line[:4].strip() in ("ok", "FAIL", "skip")}
    assert set(verdicts) == {"default target on CUDA", "sandbox GPU pass-through", "two workers on one GPU",
                             "harness evaluation on CUDA", "2-node swarm"}, lines
    assert verdicts["2-node swarm"] == "ok", lines
    if not torch.cuda.is_available():
        assert all(verdicts[s] == "skip" for s in verdicts if s != "2-node swarm"), lines
        assert all("no CUDA device" in line for line in lines if line.startswith("skip"))
