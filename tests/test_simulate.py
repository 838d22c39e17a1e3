"""`p2p-research simulate`: unit tests of its pieces, and small real simulations (slow, multi-process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import ROOT
from sim_helpers import SIM, leftover_processes

from p2p_research.sim.figures import best_over_time, first_time_at_or_below, pct, swarm_best_over_time
from p2p_research.sim.options import SimOptions, parse_duration
from p2p_research.sim.probe import proc_cpu_rss
from p2p_research.sim.report import common_rows
from p2p_research.sim.report_type import SimReport


def test_parse_duration():
    assert parse_duration("300") == 300
    assert parse_duration("5m") == 300
    assert parse_duration("1m30s") == 90
    assert parse_duration("45s") == 45
    with pytest.raises(ValueError):
        parse_duration("five minutes")


def test_options_validate(tmp_path):
    with pytest.raises(ValueError):
        SimOptions(report=tmp_path, nodes=3, liars=3).validate()
    with pytest.raises(ValueError):
        SimOptions(report=tmp_path, churn=1.5).validate()
    with pytest.raises(ValueError, match="--genesis must be shared or each"):
        SimOptions(report=tmp_path, genesis="some").validate()
    SimOptions(report=tmp_path, nodes=3, liars=2, churn=0.2, genesis="each").validate()


def test_percentiles_and_series():
    assert pct([], 50) is None
    assert pct([1, 2, 3, 4], 50) == 2.5
    assert pct([5.0], 99) == 5.0
    bases = [{"val_bpb": 1.6, "adopted_at": 10.0}, {"val_bpb": 1.65, "adopted_at": 11.0},
             {"val_bpb": None, "adopted_at": 12.0}, {"val_bpb": 1.5, "adopted_at": 20.0}]
    s = best_over_time(bases, 10.0)
    assert s == [(0.0, 1.6), (10.0, 1.5)]
    sw = swarm_best_over_time([s, [(5.0, 1.55), (30.0, 1.4)]])
    assert sw == [(0.0, 1.6), (5.0, 1.55), (10.0, 1.5), (30.0, 1.4)]
    assert first_time_at_or_below(sw, 1.5) == 10.0
    assert first_time_at_or_below(sw, 1.0) is None


def test_proc_sampling_of_self():
    cpu, rss = proc_cpu_rss(os.getpid())
    assert cpu > 0 and rss > 10
    assert proc_cpu_rss(2**22 + 12345) is None


@pytest.mark.slow
def test_a_small_simulation_with_a_liar_reports_it_and_its_dashboard_shows_it_live(tmp_path):
    """5 nodes (one lies) + a solo node for 25 s at 2 s per run, with `--dashboard-addr`: the swarm's
    page answers while it runs (every node, curves, counters); the report is complete and consistent,
    and links a self-contained copy of the page, which a real browser renders with every node's curve.
    (One simulation for both: each was a separate run of the same daemons before, 60 CPU-s together.)"""
    import threading

    from browser_helpers import CHROMIUM, DRIVER, NO_BROWSER, browser, get
    from daemon_helpers import wait_for

    rep = tmp_path / "report"
    p = subprocess.Popen([*SIM, "--nodes", "5", "--duration", "25s", "--cost", "2", "--liars", "1", "--seed", "3",
                          "--settle", "90", "--dashboard-addr", "127.0.0.1:0", "--report", str(rep)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    printed = threading.Event()

    def drain() -> None:  # the run's lines, read as they come (a full pipe would stop the run)
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            if "dashboard: http" in line:
                printed.set()
        printed.set()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        printed.wait(120)
        urls = [ln.split("dashboard: ")[1].split()[0] for ln in lines if "dashboard: http" in ln]
        assert urls, "no dashboard URL printed: " + "".join(lines)[-3000:]
        url = urls[0]

        def live():
            status, body = get(url + "api/state")
            d = json.loads(body)
            ok = (status == 200 and len(d["nodes"]) == 6 and all(n["up"] for n in d["nodes"])
                  and len(d["curves"]["nodes"]) >= 2 and d["summary"]["experiments"] > 0)
            return d if ok else None
        d = wait_for(live, 60, what="the live swarm page with every node and their curves")
        assert {n["role"] for n in d["nodes"]} == {"swarm", "solo"}
        assert sum(n["liar"] for n in d["nodes"]) == 1
        status, page = get(url)
        assert status == 200 and b"sim.js" in page
        assert p.wait(timeout=300) == 0, "".join(lines)[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(10)
    m = json.loads((rep / "report.json").read_text())
    common = {f.name for f in fields(SimReport)} - {"engine_figures", "series"}  # series goes to series.json
    assert common <= set(m) and m["engine"] == "process", common - set(m)
    for key in ("bytes_sent_per_experiment", "processes"):
        assert key in m, key
    assert m["nodes"] == 5
    assert m["duration_s"] >= 25
    assert m["experiments_completed"] > 0
    assert sum(m["experiments_per_node"].values()) == m["experiments_completed"]
    assert m["crashed_nodes"] == 0, m["crashes"]
    assert len(m["final_baselines"]) == 5
    assert all(f["commit"] and f["val_bpb"] is not None for f in m["final_baselines"].values())
    assert len(m["liar_nodes"]) == 1
    assert m["honest_on_fabricated_baseline"] == []
    assert m["convergence"]["all_on_same_baseline"], m["final_baselines"]  # drained nodes follow by rank
    assert m["adoptions"]["from_liars_without_rerun"] == 0
    assert m["solo"]["experiments_completed"] > 0
    assert all(p["cpu_s"] > 0 and p["peak_rss_mb"] > 0 for p in m["processes"].values())
    for f in ("report.md", "best_over_time.png", "experiments_per_node.png", "adoption_delay.png"):
        assert (rep / f).stat().st_size > 0, f
    md = (rep / "report.md").read_text()
    assert all(f"| {label} |" in md for label, _ in common_rows(m)) and "## Liars" in md  # the DES's rows too
    assert "[dashboard.html](dashboard.html)" in md and url in md
    html = (rep / "dashboard.html").read_text()
    assert "window.__SIM_STATE__" in html and "/static/" not in html   # self-contained: opens from the folder
    assert leftover_processes(str(rep)) == []
    if not (CHROMIUM and DRIVER):
        pytest.skip(NO_BROWSER)
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get((rep / "dashboard.html").as_uri())
        wait_for(lambda: driver.find_elements(By.ID, "swarm-curve"), 20, what="the swarm's curve")
        assert len(driver.find_elements(By.CSS_SELECTOR, "path.node-curve")) == 5
        assert driver.find_elements(By.ID, "solo-curve")
        assert int(driver.find_element(By.ID, "experiments").text) > 0
        assert len(driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr")) == 6
        shots = os.environ.get("P2P_SCREENSHOT_DIR")
        if shots:
            driver.save_screenshot(str(Path(shots) / "dashboard-simulation.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


@pytest.mark.slow
def test_interrupt_stops_everything_and_still_reports(tmp_path):
    """SIGINT (Ctrl+C) mid-run: every daemon stops, a report is written, the exit code is 130."""
    rep = tmp_path / "report"
    p = subprocess.Popen([*SIM, "--nodes", "3", "--duration", "10m", "--cost", "2", "--no-solo-baseline",
                          "--report", str(rep)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        homes = [rep / "nodes" / f"n{i:02d}" for i in range(3)]
        while time.time() < deadline and not all((h / "control.sock").exists() for h in homes):
            time.sleep(0.5)
        assert all((h / "control.sock").exists() for h in homes), "nodes did not come up"
        time.sleep(3)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out[-3000:]
    assert leftover_processes(str(rep)) == []
    m = json.loads((rep / "report.json").read_text())
    assert m["interrupted"] == "SIGINT"
    assert m["crashed_nodes"] == 0
    assert len(m["final_baselines"]) == 3
