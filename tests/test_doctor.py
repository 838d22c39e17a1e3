"""`p2p-research doctor`: each check on real inputs (sockets, a daemon, the ledger), and the CLI."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import run_cli
from daemon_helpers import Daemon, free_port

from p2p_research.doctor import bootstrap_reachable, classify_address, clock_skew, reachability
from p2p_research.research.io.home_init import init_home


def test_addresses_are_classified():
    assert classify_address("/ip4/127.0.0.1/tcp/4001/p2p/x") == "local"
    assert classify_address("/ip4/192.168.1.7/tcp/4001") == "private"
    assert classify_address("/ip4/8.8.8.8/tcp/4001") == "public"
    assert reachability(["/ip4/127.0.0.1/tcp/1"]).status == "warn"
    assert "0.0.0.0" in reachability(["/ip4/127.0.0.1/tcp/1"]).hint
    assert reachability(["/ip4/8.8.8.8/tcp/1", "/ip4/127.0.0.1/tcp/1"]).status == "ok"


def test_bootstrap_checks_connect_for_real():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        dead = free_port()
        checks = bootstrap_reachable([f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWA", f"/ip4/127.0.0.1/tcp/{dead}/p2p/12D3KooWB",
                                      "/dns/nowhere"])
    assert [c.status for c in checks] == ["ok", "fail", "fail"]
    assert "refuses connections" in checks[1].detail and "nothing listens" in checks[1].detail and checks[1].hint


def test_peers_on_another_protocol_are_a_problem_doctor_names(tmp_path):
    from p2p_research.doctor import run_checks
    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "n")
    note = "1 connected peer(s) run another protocol (budget 20000 tokens; ours 500000 tokens): ..."
    checks = run_checks(home.path, {"peers_connected": 1, "protocol_note": note, "addrs": []}, bootstrap=[])
    (c,) = [c for c in checks if c.name == "protocol peers"]
    assert c.status == "warn" and "another protocol" in c.detail and c.hint
    assert any(c.name == "pre-flight" and c.status == "ok" for c in checks)


def test_clock_skew_is_judged_against_most_peers():
    assert clock_skew([]).status == "ok"
    assert clock_skew([("a", 1.0), ("b", 2.0)]).status == "ok"
    assert clock_skew([("a", 95.0), ("b", 91.0), ("c", 90.0)]).status == "warn"  # this clock is off
    one_off = clock_skew([("a", 1.0), ("b", 2.0), ("c", 600.0)])
    assert one_off.status == "ok" and "1 peer(s) off" in one_off.detail


@pytest.mark.slow
def test_doctor_with_a_running_node_and_a_dead_bootstrap(tmp_path):
    home = init_home(tmp_path / "node")
    cfg = home.load_config()
    cfg.research.enabled = False
    cfg.network.bootstrap = [f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/12D3KooWGzh6iHnEqBCTUWy6QGJ1bnHKbo6hzUYZ4n6sYJRZDhC2"]
    home.write_config(cfg)
    d = Daemon(home.path, "--no-research").start()
    try:
        r = run_cli(["doctor", "--home", home.path, "--json"], timeout=120)
        report = json.loads(r.stdout)
        assert report["daemon_running"] and not report["ok"] and r.returncode == 1
        by_name = {}
        for c in report["checks"]:
            by_name.setdefault(c["name"], []).append(c)
        assert by_name["bootstrap"][0]["status"] == "fail" and by_name["bootstrap"][0]["hint"]
        assert by_name["reachability"][0]["detail"].startswith("local only")
        assert by_name["sandbox"][0]["status"] in ("ok", "warn") and by_name["protocol"][0]["status"] == "ok"
        assert by_name["peers"][0]["status"] == "warn"
        text = run_cli(["doctor", "--home", home.path], timeout=120).stdout
        assert "FAIL bootstrap" in text and "fix:" in text
    finally:
        d.stop()
        d.kill()
