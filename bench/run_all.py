#!/usr/bin/env python3
"""Runs every benchmark under bench/ in turn and prints their figures (`make bench`)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("training throughput of the default target", ["bench_target.py"]),
    ("per-experiment overhead beyond training", ["bench_overhead.py"]),
    ("training sandbox: start-up cost, same val_bpb inside and out", ["bench_sandbox.py"]),
    ("gossip propagation across daemon processes", ["bench_gossip.py", "--nodes", "5", "15", "35"]),
    ("the swarm from 35 to 1,000 nodes (discrete-event simulator)",
     ["bench_des_scale.py", "--nodes", "35", "100", "300", "1000", "--duration", "600"]),
    ("research effectiveness: speedup to target values over 20 seeds (DES, 35 nodes against one)",
     ["bench_speedup.py"]),
]


def main() -> int:
    failed = 0
    for title, cmd in BENCHES:
        path = HERE / cmd[0]
        if not path.exists():
            print(f"== {title}: {cmd[0]} missing, skipped")
            continue
        print(f"== {title}: {' '.join(cmd)}", flush=True)
        rc = subprocess.run([sys.executable, str(path), *cmd[1:]]).returncode
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
