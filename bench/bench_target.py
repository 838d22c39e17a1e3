"""Benchmark of the embedded research target: one run of the default train.py under the default budget.

Usage:
    .venv/bin/python bench/bench_target.py [--budget-tokens N] [--budget-seconds S] [--threads N]
                                           [--device cpu|cuda] [--seed N] [--keep DIR]

Copies prepare.py, train.py and program.md into a fresh workspace (as a node does), generates the corpus
once beforehand (cached under P2P_CACHE_DIR, so generation is not part of the timing), runs
`python train.py` as a child process, and prints tokens/s, training and total seconds, val_bpb and the
unigram baseline in bits per byte.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_research import target  # noqa: E402 - after the sys.path insert above


def load_prepare():
    name = "bench_prepare"
    spec = importlib.util.spec_from_file_location(name, target.TARGET_DIR / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def parse_summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    if "---" not in lines:
        return {}
    idx = len(lines) - 1 - lines[::-1].index("---")
    out = {}
    for line in lines[idx + 1 :]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--budget-tokens", type=int, default=None, help="P2P_BUDGET_TOKENS (default: harness default)"
    )
    ap.add_argument("--budget-seconds", type=float, default=None, help="P2P_BUDGET_SECONDS")
    ap.add_argument("--threads", type=int, default=None, help="P2P_THREADS")
    ap.add_argument("--device", default=None, help="P2P_DEVICE (default: auto)")
    ap.add_argument("--seed", type=int, default=0, help="P2P_SEED")
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    args = ap.parse_args()

    env = dict(os.environ)
    env["P2P_SEED"] = str(args.seed)
    for key, val in (
        ("P2P_BUDGET_TOKENS", args.budget_tokens),
        ("P2P_BUDGET_SECONDS", args.budget_seconds),
        ("P2P_THREADS", args.threads),
        ("P2P_DEVICE", args.device),
    ):
        if val is not None:
            env[key] = str(val)

    # corpus generation (first use only) and the unigram reference, outside the timed run
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        prep = load_prepare()
        t0 = time.time()
        prep.load_text()
        gen_s = time.time() - t0
        unigram = prep.unigram_bpb()
        budget = prep.get_budget()
    finally:
        os.environ.clear()
        os.environ.update(saved)

    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        ws = args.keep or Path(tmp)
        ws.mkdir(parents=True, exist_ok=True)
        for name, data in target.read_target_files().items():
            (ws / name).write_bytes(data)
        print(f"workspace: {ws}")
        print(f"budget:    {budget.describe()}  (data load/generation {gen_s:.1f}s, not timed)")
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "train.py"], cwd=ws, env=env, capture_output=True, text=True, check=False
        )
        wall = time.time() - t0
    if res.returncode != 0:
        print(res.stdout)
        print(res.stderr, file=sys.stderr)
        print(f"train.py failed with exit code {res.returncode}", file=sys.stderr)
        return 1
    s = parse_summary(res.stdout)
    tokens = int(s["tokens"])
    train_s = float(s["training_seconds"])
    bpb = float(s["val_bpb"])
    print(f"device:           {s['device']}")
    print(f"num_params:       {s['num_params']}")
    print(f"num_steps:        {s['num_steps']}")
    print(f"tokens:           {tokens}")
    print(f"tokens_per_s:     {tokens / max(train_s, 1e-9):.0f}")
    print(f"training_seconds: {train_s:.1f}")
    print(f"total_seconds:    {float(s['total_seconds']):.1f}  (process wall {wall:.1f})")
    print(f"peak_memory_mb:   {s['peak_memory_mb']}")
    print(f"val_bpb:          {bpb:.4f}")
    print(f"unigram_bpb:      {unigram:.4f}  (val_bpb is {unigram - bpb:.2f} bits/byte lower)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
