#!/usr/bin/env python3
"""Per-experiment overhead beyond training, for the solo loop with real torch runs.

Runs `p2p-research run -n N` on a fresh home and reads the ledger: for every experiment, the wall time
from the end of the previous run to the end of this one (proposal, commit, child start, data loading,
evaluation, ledger and results.tsv) minus the training seconds the child reports. The figure that
matters is that overhead as a share of the default budget's training time (target: under 5%); the
node's own share (everything outside the child process) is reported separately.

    .venv/bin/python bench/bench_overhead.py [--experiments 4] [--budget-tokens 60000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "p2p_research"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=4)
    ap.add_argument("--budget-tokens", type=int, default=60000, help="per run (smaller than the default to keep it short)")
    ap.add_argument("--default-training-s", type=float, default=None,
                    help="training seconds of the default budget (default: read docs/target.md's bench or 60)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        home = Path(tmp) / "home"
        subprocess.run([*CLI, "init", "--home", str(home)], check=True, cwd=ROOT, capture_output=True)
        t0 = time.time()
        r = subprocess.run([*CLI, "run", "--home", str(home), "-n", str(args.experiments), "--budget-tokens",
                            str(args.budget_tokens)], cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        db = sqlite3.connect(home / "ledger.sqlite")
        rows = db.execute("SELECT kind, started_at, finished_at, training_seconds, total_seconds FROM runs ORDER BY run_id").fetchall()
    overheads, node_side, child_side = [], [], []
    for prev, cur in zip(rows, rows[1:], strict=False):
        kind, started, finished, train_s, total_s = cur
        step = finished - prev[2]                    # end of previous run -> end of this one
        overheads.append(step - train_s)
        child_side.append((finished - started) - train_s)
        node_side.append(step - (finished - started))
    default_train = args.default_training_s or 60.0
    res = {
        "experiments": len(overheads), "budget_tokens": args.budget_tokens, "wall_s": round(wall, 1),
        "overhead_s_median": round(statistics.median(overheads), 3),
        "node_side_s_median": round(statistics.median(node_side), 3),
        "child_side_s_median": round(statistics.median(child_side), 3),
        "training_s_median": round(statistics.median(r[3] for r in rows[1:]), 2),
        "default_training_s": default_train,
        "overhead_pct_of_default_budget": round(100 * statistics.median(overheads) / default_train, 2),
        "node_side_pct_of_default_budget": round(100 * statistics.median(node_side) / default_train, 2),
    }
    print("per-experiment overhead beyond training (median over experiments)")
    for k, v in res.items():
        print(f"  {k:34s} {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
