"""Several node daemons as separate OS processes on loopback (issue: node daemon)."""

import json
import re
import signal
import stat

import pygit2
import pytest
from conftest import TINY_TOKENS, init_small
from daemon_helpers import Daemon, free_port, surrogate_home, wait_for

pytestmark = pytest.mark.slow


def make_home(path, cache_dir, **research):
    home = init_small(path)
    cfg = home.load_config()
    cfg.research.budget_tokens = TINY_TOKENS
    cfg.research.cache_dir = str(cache_dir)
    cfg.research.threads = 1
    cfg.research.noise_runs = 0
    for k, v in research.items():
        setattr(cfg.research, k, v)
    home.write_config(cfg)
    return home


def test_three_daemons_gossip_results_with_objects_and_survive_a_restart(tmp_path, cache_dir):
    port = free_port()
    a_home = make_home(tmp_path / "a", cache_dir)
    b_home = make_home(tmp_path / "b", cache_dir)
    c_home = make_home(tmp_path / "c", cache_dir)
    a = Daemon(a_home.path, "--no-research", "--listen", f"/ip4/127.0.0.1/tcp/{port}").start()
    daemons = [a]
    try:
        boot = a.addrs[0]
        assert boot.endswith(f"/p2p/{a.peer_id}") and f"/tcp/{port}/" in boot
        b = Daemon(b_home.path, "--bootstrap", boot, "-n", "1").start()
        c = Daemon(c_home.path, "--no-research", "--bootstrap", boot).start()
        daemons += [b, c]
        # identity files are private
        assert stat.S_IMODE((a_home.path / "identity.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((a_home.path / "control.sock").stat().st_mode) == 0o600
        # C learns B through peer exchange, although both only bootstrapped from A
        wait_for(lambda: {b.peer_id, a.peer_id} <= {p["peer_id"] for p in c.json("peers")}, 60, what="C sees A and B")
        wait_for(lambda: {c.peer_id, a.peer_id} <= {p["peer_id"] for p in b.json("peers")}, 30, what="B sees A and C")
        # C receives B's experiment result with its git objects
        def c_has_b_experiment():
            exps = [e for e in c.json("experiments") if e["peer"] == b.peer_id and e["kind"] == "experiment"]
            return exps if exps and all(e["status"] in ("kept", "discarded", "crash") for e in exps) else None
        exps = wait_for(c_has_b_experiment, 120, what="B's result at C")
        e = exps[0]
        assert {"id", "commit", "parent", "peer", "status", "val_bpb"} <= set(e)
        repo = pygit2.Repository(str(c_home.repo))
        commit = wait_for(lambda: repo.get(e["commit"]), 30, what="B's commit in C's repo")
        assert str(commit.parent_ids[0]) == e["parent"]
        assert "train.py" in repo.diff(repo[commit.parent_ids[0]], commit).patch
        shown = c.json("show", e["id"][:12])
        assert shown["experiment"]["origin"] == "peer" and shown["diff"]
        # status and id over the control socket, through the CLI: what the tests' polls read directly
        st = b.cli_json("status")
        assert st["peer_id"] == b.peer_id and st["experiments"]["local"] >= 1 and st["peers_connected"] >= 2
        assert set(st) == set(b.json("status")) and st["peer_id"] == b.json("status")["peer_id"]
        for cmd in ("experiments", "peers"):  # lists that may grow meanwhile: their entries' fields agree
            assert c.cli_json(cmd)[0].keys() == c.json(cmd)[0].keys()
        assert a.json("id")["peer_id"] == a.peer_id
        # the configuration in force: automatic keys resolved by the running node (it has finished runs)
        conf = b.cli_json("config")
        assert conf["research.margin"]["set"] == "auto" and conf["research.margin"]["effective"] > 0
        assert conf["research.run_timeout_s"]["from"].startswith("5 x the median run")
        # board posts travel
        c.cli("post", "hello from **C**")
        wait_for(lambda: any("hello from" in p["text"] for p in b.json("board")), 30, what="post at B")
        # A is SIGKILLed and restarted: same peer id, B and C reconnect to it
        old_id = a.peer_id
        a.kill()
        wait_for(lambda: a.peer_id not in {p["peer_id"] for p in c.json("peers")}, 30, what="C notices A is gone")
        a = Daemon(a_home.path, "--no-research", "--listen", f"/ip4/127.0.0.1/tcp/{port}").start()
        daemons[0] = a
        assert a.peer_id == old_id
        # within the bootstrap backoff (at most 30 s), not libp2p's 60-s negative cache of failed peers
        wait_for(lambda: {b.peer_id, c.peer_id} <= {p["peer_id"] for p in a.json("peers")}, 45, what="mesh heals")
        # a second daemon on the same home is refused
        r = Daemon(a_home.path, "--no-research")
        with pytest.raises(AssertionError, match="in use"):
            r.start(timeout=30)
    finally:
        for d in daemons:
            d.stop(signal.SIGTERM)
        for d in daemons:
            d.kill()
    # a clean SIGTERM stop leaves no control socket and no running run in the ledger
    assert not (c_home.path / "control.sock").exists()


def test_a_restarted_bootstrap_peer_is_reached_again_within_the_backoff(tmp_path, cache_dir):
    """libp2p will not dial a peer whose addresses all failed for 60 s (its negative cache): a node whose
    bootstrap peer restarted reconnected a minute late (63 s, measured). Its own backoff paces the
    retries now; A is down ~4 s, so B's next try comes within a few seconds of A's return."""
    port = free_port()
    a_home, b_home = make_home(tmp_path / "a", cache_dir), make_home(tmp_path / "b", cache_dir)
    a = Daemon(a_home.path, "--no-research", "--listen", f"/ip4/127.0.0.1/tcp/{port}").start()
    b = Daemon(b_home.path, "--no-research", "--bootstrap", a.addrs[0])
    daemons = [a, b]
    try:
        b.start()
        wait_for(lambda: a.peer_id in {p["peer_id"] for p in b.json("peers")}, 30, what="B sees A")
        a.kill()
        wait_for(lambda: a.peer_id not in {p["peer_id"] for p in b.json("peers")}, 30, what="B notices A is gone")
        # B's dial failed meanwhile: what put A in libp2p's negative cache
        wait_for(lambda: "unreachable" in (b_home.path / "logs" / "node.log").read_text(), 30, 0.2,
                 what="B's first failed dial")
        a = daemons[0] = Daemon(a_home.path, "--no-research", "--listen", f"/ip4/127.0.0.1/tcp/{port}").start()
        wait_for(lambda: a.peer_id in {p["peer_id"] for p in b.json("peers")}, 40, 0.5, what="B reaches A again")
    finally:
        for d in daemons:
            d.stop(signal.SIGTERM)
            d.kill()


def test_commands_without_a_daemon(tmp_path, cache_dir):
    home = make_home(tmp_path / "h", cache_dir)
    d = Daemon(home.path)
    for cmd in ("id", "status", "peers"):
        r = d.cli(cmd, check=False)
        assert r.returncode != 0 and "no node daemon is running" in r.stderr and len(r.stderr.splitlines()) == 1
    r = d.cli("post", "x", check=False)
    assert r.returncode != 0
    r = d.cli("experiments", "--json", check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[]"
    r = d.cli("show", "abcdef", check=False)
    assert r.returncode == 1 and "no experiment or commit starts with" in r.stderr and "Traceback" not in r.stderr


def test_bad_bootstrap_addresses(tmp_path, cache_dir):
    home = make_home(tmp_path / "h", cache_dir)
    d = Daemon(home.path, "--no-research", "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/notapeerid")
    with pytest.raises(AssertionError):
        d.start(timeout=30)
    assert "Traceback" not in d.stderr()
    # unreachable but well-formed: the node runs alone
    port = free_port()
    other = Daemon(make_home(tmp_path / "o", cache_dir).path, "--no-research").start()
    pid = other.peer_id
    other.stop()
    d = Daemon(home.path, "--no-research", "--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}").start()
    try:
        assert d.json("status")["peers_connected"] == 0
    finally:
        d.stop()


def test_a_listen_port_in_use_stops_the_node_with_one_line(tmp_path, cache_dir):
    """libp2p only logs an ERROR for a port it cannot bind, and the node trained unreachable."""
    import socket
    import subprocess

    from conftest import run_cli

    home = make_home(tmp_path / "h", cache_dir)

    def start_with_port_taken(flag: str, value: str) -> tuple[subprocess.CompletedProcess, int]:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            return run_cli(["node", "start", "--home", home.path, "--no-research", flag,
                            value.format(port=port)], timeout=60), port

    r, port = start_with_port_taken("--listen", "/ip4/127.0.0.1/tcp/{port}")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "cannot listen" in line]
    assert len(errors) == 1 and f"/tcp/{port}: the port is in use" in errors[0], r.stderr
    assert "listening on" not in r.stdout + r.stderr
    # an asked-for dashboard port in use is an error too (a busy default one falls back to a free one)
    r, port = start_with_port_taken("--dashboard-addr", "127.0.0.1:{port}")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"dashboard address 127.0.0.1:{port} unavailable: the port is in use" in r.stderr, r.stderr


def test_a_restart_keeps_the_address(tmp_path):
    """The bootstrap address a node prints stays valid: /tcp/0 becomes a port the node remembers."""
    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "relay")
    first = Daemon(home.path, "--no-research").start()
    addrs = first.addrs
    assert json.loads(first.cli("id", "--json").stdout)["addrs"] == addrs
    first.stop()
    second = Daemon(home.path, "--no-research").start()
    try:
        assert second.addrs == addrs
        assert json.loads(second.cli("id", "--json").stdout)["addrs"] == addrs
    finally:
        second.stop()
        second.kill()


def test_network_events_are_one_line_each_with_the_cause(tmp_path):
    """A dead bootstrap, a wrong peer id, a peer leaving: one line each that says what happened,
    and none of libp2p's per-attempt ERROR lines."""
    import time

    from p2p_research.research.io.home_init import init_home

    homes = [init_home(tmp_path / n) for n in ("a", "dead", "wrong", "ok")]
    a = Daemon(homes[0].path, "--no-research").start()
    wrong_id = "12D3KooWGzh6iHnEqBCTUWy6QGJ1bnHKbo6hzUYZ4n6sYJRZDhC2"
    dead_port = free_port()
    tcp = a.addrs[0].split("/p2p/")[0]
    others = [Daemon(homes[1].path, "--no-research", "--bootstrap", f"/ip4/127.0.0.1/tcp/{dead_port}/p2p/{wrong_id}"),
              Daemon(homes[2].path, "--no-research", "--bootstrap", f"{tcp}/p2p/{wrong_id}"),
              Daemon(homes[3].path, "--no-research", "--bootstrap", a.addrs[0])]
    try:
        for d in others:
            d.start()
        wait_for(lambda: "peer id mismatch" in others[1].stderr() and "unreachable" in others[0].stderr()
                 and "peer connected" in others[2].stderr(), 30, what="the first attempts")
        a.stop()
        wait_for(lambda: " left (" + a.peer_id in others[2].stderr(), 30, what="the peer leaving")
        time.sleep(2)
    finally:
        for d in [a, *others]:
            d.stop()
            d.kill()
    dead, wrong, ok = (d.stderr() for d in others)
    assert f"bootstrap /ip4/127.0.0.1/tcp/{dead_port}/p2p/{wrong_id} unreachable: connection refused; retrying in" in dead
    assert f"peer id mismatch (expected {wrong_id}, got {a.peer_id}); retrying in" in wrong
    for log in (dead, wrong, ok):
        assert "ERROR   libp2p" not in log, log[-3000:]
    assert ok.count(f" left ({a.peer_id})") == 1


def test_peers_on_another_protocol_are_named_and_explained(tmp_path):
    """Two nodes with different budgets share nothing; each says so once, in words, and `peers`
    shows the other's protocol and budget."""


    a_home, b_home = surrogate_home(tmp_path / "a", 1), surrogate_home(tmp_path / "b", 2)
    cfg = b_home.load_config()
    cfg.research.budget_tokens = 20000
    b_home.write_config(cfg)
    a = Daemon(a_home.path, "-n", "1").start()   # research nodes: a relay serves every protocol
    b = Daemon(b_home.path, "-n", "1", "--bootstrap", a.addrs[0]).start()
    try:
        wait_for(lambda: b.json("status")["other_protocols"] and a.json("status")["other_protocols"], 30,
                 what="both learn the other's protocol")
        note = b.json("status")["protocol_note"]
        assert "1 connected peer(s) run another protocol (budget 500000 tokens; ours 20000 tokens)" in note
        (peer,) = a.json("peers")
        assert peer["same_protocol"] is False and peer["budget"] == "20000 tokens"
        table = a.cli("peers").stdout
        assert "other (20000" in table and "protocol" in table
        assert "1 connected peer(s) run another protocol" in " ".join(a.cli("status").stdout.split())
    finally:
        for d in (a, b):
            d.stop()
            d.kill()
    assert b.stderr().count("runs another protocol") == 1


def test_a_node_joining_a_one_peer_swarm_measures_the_genesis_at_once(tmp_path, cache_dir):
    """research.genesis = shared needs two peers that agree: with one peer the node waited for them
    after its first run (half a run, up to G.AWAIT_MAX_S: a minute for autoresearch) for nothing."""
    from p2p_research.net.identity import load_or_create_identity, peer_id_of_keypair
    from p2p_research.research import genesis as G

    port = free_port()
    # one experiment each: more runs would only load the machine while the test waits
    a = Daemon(make_home(tmp_path / "a", cache_dir).path, "-n", "0", "--listen", f"/ip4/127.0.0.1/tcp/{port}").start()
    try:
        wait_for(lambda: a.json("status")["baseline"]["val_bpb"] is not None, 120, 0.5, what="A measures its genesis")
        genesis = a.json("status")["genesis"]
        for i in range(40):  # a node whose ticket says: run an experiment first, peers measure the genesis
            home = make_home(tmp_path / f"b{i}", cache_dir)
            if not G.measures_first(peer_id_of_keypair(load_or_create_identity(home.identity)), genesis, True):
                break
        b = Daemon(home.path, "-n", "1", "--bootstrap", a.addrs[0]).start()
        try:
            wait_for(lambda: b.json("status")["baseline"]["val_bpb"] is not None, 120, 0.5, what="B's genesis value")
            assert "only 1 other peer(s) of this protocol: measuring the genesis" in b.stderr(), b.stderr()[-2000:]
        finally:
            b.stop()
    finally:
        a.stop()


def test_the_daemon_says_how_a_run_goes_and_every_flag_is_described(tmp_path, cache_dir):
    """`node start` printed nothing between a run's start and its end (5 minutes for autoresearch)."""
    import typer.main

    from p2p_research.cli.app import app

    start = typer.main.get_command(app).commands["node"].commands["start"]
    undescribed = [p.name for p in start.params if getattr(p, "help", None) in (None, "")]
    assert not undescribed, undescribed
    home = make_home(tmp_path / "h", cache_dir, budget_tokens=400_000)
    d = Daemon(home.path, "--progress-every", "1").start()
    try:
        wait_for(lambda: "progress: measuring the baseline" in d.stderr() or "progress: training" in d.stderr(),
                 60, 0.5, what="a progress line")
        line = next(x for x in d.stderr().splitlines() if "progress: " in x)
        assert " | best " in line and " done, " in line, line
        assert "\x1b[" not in d.stderr()   # not a terminal: no live line drawn with control codes
    finally:
        d.stop()


CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows (scrollback included) for `raw`: a small emulator of what rich's live
    display writes (carriage return, line feed, erase line, cursor up); other control codes are ignored."""
    lines, row, col, i = [""], 0, 0, 0
    while i < len(raw):
        m = CSI.match(raw, i)
        if m:
            arg, op = m.groups()
            if op == "K":
                lines[row] = lines[row][:col] if arg in ("", "0") else ""
            elif op == "A":
                row = max(0, row - int(arg or 1))
            i = m.end()
            continue
        c = raw[i]
        if c == "\r":
            col = 0
        elif c == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif c >= " ":
            line = lines[row].ljust(col)
            lines[row] = line[:col] + c + line[col + 1:]
            col += 1
        i += 1
    return lines


def test_on_a_terminal_the_daemon_shows_a_live_progress_line(tmp_path):
    """On a terminal (a pseudo-terminal here) the daemon draws a live line updated in place instead of
    the periodic progress line, which goes to node.log only; log lines printed meanwhile stay whole."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios
    import threading
    import time

    from conftest import CLI, ROOT

    home = surrogate_home(tmp_path / "h", 1, cost=2.0)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    p = subprocess.Popen([*CLI, "node", "start", "--home", str(home.path), "--progress-every", "1", "-n", "30"],
                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True,
                         env={**os.environ, "TERM": "xterm-256color", "NO_COLOR": "1"})
    os.close(slave)
    out = bytearray()

    def drain() -> None:  # keep reading: a full pty would block the daemon
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the daemon closed the terminal
                return
            if not chunk:
                return
            out.extend(chunk)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    text = lambda: out.decode(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: text().count(" | best ") >= 4, 90, 0.5, what="the live line, redrawn")
        log_at = text().find(" | best ")
        wait_for(lambda: " INFO " in text()[log_at:] and "experiment " in text()[log_at:], 90, 0.5,
                 what="a log line printed while the live line is shown")
        wait_for(lambda: "progress: " in (home.logs / "node.log").read_text(), 30, 0.5,
                 what="the periodic line in node.log")
        time.sleep(1)
        raw = text()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        reader.join(10)
        os.close(master)
    assert "progress: " not in raw   # the terminal gets the live line instead of the periodic one
    assert "\r" in raw and "\x1b[2K" in raw   # drawn in place (carriage return, erase line)
    shown = screen_lines(raw)
    assert any(LOG_LINE.match(ln) and " INFO " in ln and "experiment " in ln for ln in shown), shown[-20:]
    assert_whole_lines(shown)


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def assert_whole_lines(shown: list[str]) -> None:
    """Every line on the screen is one whole log line, the live line alone, or a line the daemon
    printed at start: nothing written into the middle of another."""
    live = [ln for ln in shown if " | best " in ln]
    for ln in shown:
        if ln in live:
            assert not LOG_LINE.search(ln), f"a log line inside the live line: {ln!r}"
        elif LOG_LINE.match(ln):
            assert not LOG_LINE.search(ln, 1), f"two log lines in one: {ln!r}"
        else:
            assert ln.strip() == "" or ln.split(":")[0] in ("peer id", "address", "sandbox", "control", "dashboard"), ln
    assert len(live) <= 1, live   # one live line (the run may have ended and cleared it)
