"""Several OS processes (one node each, as in the simulation): star bootstrap grows into a mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_four_processes_star_bootstrap_all_hear_all(tmp_path):
    n = 4
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    procs = []

    def start(idx, boots):
        return subprocess.Popen(
            [sys.executable, str(HERE / "net_node_proc.py"), str(tmp_path), str(idx), str(n - 1), "60", *boots],
            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"err.{idx}", "w"),
        )  # fmt: skip

    try:
        procs.append(start(0, []))
        deadline = time.time() + 30
        while not (tmp_path / "addr.0").exists():
            assert time.time() < deadline, (tmp_path / "err.0").read_text()[-2000:]
            time.sleep(0.1)
        boot = (tmp_path / "addr.0").read_text()
        for i in range(1, n):
            procs.append(start(i, [boot]))  # everyone bootstraps from node 0 only
        while not all((tmp_path / f"addr.{i}").exists() for i in range(n)):
            assert time.time() < deadline, "nodes did not start"
            time.sleep(0.1)
        (tmp_path / "go").write_text("go")
        for p in procs:
            p.wait(timeout=60)
        results = [json.loads((tmp_path / f"res.{i}").read_text()) for i in range(n)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ids = {r["peer"] for r in results}
    for r in results:
        assert set(r["authors"]) == ids - {r["peer"]}, r
        assert r["stats"]["received"] == n - 1
    # peer exchange: leaves (1..3) connected to each other, not only to node 0
    for r in results[1:]:
        assert len(r["peers"]) >= 2, r
