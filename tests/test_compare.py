"""`p2p-research compare A B`: two simulation reports side by side (sim/compare.py)."""

from __future__ import annotations

import json
import subprocess
import sys


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2p_research", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_two_reports_line_up_figure_by_figure(tmp_path):
    for seed in (1, 2):
        r = _cli("simulate", "--engine", "des", "--nodes", "12", "--duration", "90s", "--settle", "30",
                 "--seed", str(seed), "--report", str(tmp_path / f"s{seed}"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((tmp_path / f"s{s}" / "report.json").read_text()) for s in (1, 2))
    r = _cli("compare", str(tmp_path / "s1"), str(tmp_path / "s2" / "report.json"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["a"]["what"] == "des: 12 nodes, modelled network, seed 1"
    rows = {row["figure"]: row for row in out["rows"]}
    done = rows["experiments completed in the window"]
    assert (done["a"], done["b"]) == (a["experiments_completed_in_window"], b["experiments_completed_in_window"])
    assert done["change_pct"] == round(100 * (done["b"] - done["a"]) / done["a"], 1)
    delay = rows["adoption delay from announcement p50 (s)"]
    assert delay["b"] == b["adoptions"]["delay_from_announcement_s"]["p50"] and delay["lower_is_better"] is True
    assert rows["swarm best reaches 1.54 at (s)"]["a"] == a["time_to_target_s"]["1.54"]
    table = _cli("compare", str(tmp_path / "s1"), str(tmp_path / "s2"), cwd=tmp_path)
    assert table.returncode == 0 and "experiments completed in the window" in table.stdout
    missing = _cli("compare", str(tmp_path / "s1"), str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2 and "no report.json" in missing.stderr
