"""The fork server (p2p_research/sim/forkserver.py): each child is a process of its own that behaves as
`python -m p2p_research` does, for the suite's daemons and CLI calls and for `simulate`'s daemons."""

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, ROOT
from daemon_helpers import surrogate_home, wait_for

from p2p_research.sim.forkserver import PRELOAD, ForkServer, ForkServerError


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.close()


def both(server, args, env=None):
    """The same CLI call executed and forked: (exec'd, forked) CompletedProcess."""
    args = [str(a) for a in args]
    ran = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    forked = server.run(args, env=env, cwd=ROOT, timeout=120)
    return ran, forked


def test_a_forked_cli_call_prints_and_exits_as_an_executed_one(server, tmp_path):
    home = surrogate_home(tmp_path / "h", 1)
    # a table at 80 columns: the CLI's rich consoles are made afresh for the child's environment
    for args, env in ((["experiments", "--home", home.path], {"COLUMNS": "80"}),
                      (["peers", "--home", home.path, "--json"], {}),
                      (["status", "--home", tmp_path / "none"], {}),   # an error: one line, exit 1
                      (["node", "start", "--no-such-flag"], {}),       # a usage error: exit 2
                      (["status"], {"P2P_RESEARCH_HOME": str(tmp_path / "from-env")})):  # the environment
        ran, forked = both(server, args, {**os.environ, **env})
        assert (forked.returncode, forked.stdout, forked.stderr) == (ran.returncode, ran.stdout, ran.stderr), args
    assert forked.returncode != 0 and str(tmp_path / "from-env") in forked.stderr
    # the working folder is the child's
    r = server.run(["init", "--home", "rel-home", "--json"], cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and (tmp_path / "rel-home" / "node.toml").exists(), r.stderr
    # a child that cannot even start says why
    r = server.run(["--help"], cwd=tmp_path / "gone", timeout=60)
    assert r.returncode == 1 and "FileNotFoundError" in r.stderr and str(tmp_path / "gone") in r.stderr


def test_a_forked_daemon_is_a_process_of_its_own_with_its_exit_status(server, tmp_path):
    home = surrogate_home(tmp_path / "h", 1)
    with open(tmp_path / "err", "wb") as err:
        p = server.spawn(["node", "start", "--home", home.path, "--no-research"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("control:")):
            line = p.stdout.readline()
            assert line, (tmp_path / "err").read_text()
            lines.append(line)
        assert p.pid != os.getpid() and os.getsid(p.pid) == p.pid  # its own session, as asked
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"-m p2p_research node start --home {home.path} --no-research" in cmdline, cmdline
        assert p.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(0.2)
        # it answers on its control socket, as an executed daemon does
        from p2p_research.daemon.control_call import call

        assert call(home.path / "control.sock", "status", None, timeout=30)["ok"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0  # a clean stop
        assert not (home.path / "control.sock").exists()
        assert "node stopped" in (tmp_path / "err").read_text()
    finally:
        p.kill()
    # a daemon killed outright reports the signal, as Popen does
    p = server.spawn(["node", "start", "--home", home.path, "--no-research"], cwd=ROOT, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (home.path / "control.sock").exists(), 60, 0.1, "the daemon's control socket")
    os.killpg(p.pid, signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL


def test_the_server_ends_with_its_client_and_leaves_no_zombie(tmp_path):
    code = (
        "import sys, subprocess\n"
        "from p2p_research.sim.forkserver import ForkServer\n"
        "s = ForkServer(preload=('p2p_research.cli',))\n"
        "for _ in range(3): s.spawn(['--help'], stdout=subprocess.DEVNULL)\n"  # never waited for by the client
        "print(s._proc.pid, flush=True)\n"
        "import time; time.sleep(2)\n"
        "print(open(f'/proc/{s._proc.pid}/stat').read().split()[0], flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    zombies = subprocess.run(["ps", "--ppid", str(pid), "-o", "stat="], capture_output=True, text=True).stdout
    assert "Z" not in zombies
    # the client has exited, so its server does too
    deadline = time.time() + 10
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_closed_server_refuses_with_a_clear_error():
    s = ForkServer(preload=("json",))
    s.close()
    with pytest.raises(ForkServerError, match="not ready"):
        s.spawn(["--help"])


def _reads_environment(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in ("environ", "getenv", "environb"):
            return True
        if isinstance(sub, ast.Name) and sub.id in ("environ", "getenv"):
            return True
    return False


def _import_time_statements(tree: ast.Module):
    """The statements a module runs when imported: its body and its classes' bodies, not functions."""
    todo = list(tree.body)
    while todo:
        stmt = todo.pop()
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from stmt.decorator_list
            yield from (d for d in stmt.args.defaults + stmt.args.kw_defaults if d is not None)
            continue
        if isinstance(stmt, ast.ClassDef):
            todo.extend(stmt.body)
            yield from stmt.decorator_list
            yield from stmt.bases
            continue
        if isinstance(stmt, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for sub in getattr(stmt, field, []):
                    if isinstance(sub, ast.ExceptHandler):
                        todo.extend(sub.body)
                    else:
                        todo.append(sub)
            for field in ("test", "iter"):
                if getattr(stmt, field, None) is not None:
                    yield getattr(stmt, field)
            yield from (item.context_expr for item in getattr(stmt, "items", []))
            continue
        yield stmt


def test_no_module_the_server_preloads_reads_the_environment_at_import():
    """A forked child gets its own environment after its modules are imported: a module that read the
    environment at import would keep the server's value in every child."""
    code = ("import importlib, json, sys\n"
            f"for m in {PRELOAD!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in sys.modules.items()"
            " if n.startswith('p2p_research'))))\n")
    files = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=ROOT).stdout)
    assert len(files) > 50
    offenders = []
    for f in filter(None, files):
        tree = ast.parse(Path(f).read_text(), f)
        offenders += [f"{f}:{s.lineno}" for s in _import_time_statements(tree) if _reads_environment(s)]
    assert not offenders, offenders


def test_a_daemon_asked_for_before_the_server_is_ready_is_executed_at_once(tmp_path):
    """The simulator and a cluster's agents never wait for their fork server: beside a load its imports
    took over a minute, past a cluster call's timeout. A daemon asked for before it is ready is exec'd."""
    from daemon_helpers import free_port

    from p2p_research.sim.launcher import NodeProc

    (tmp_path / "slow_to_import.py").write_text("import time\ntime.sleep(60)\n")
    s = ForkServer(preload=("slow_to_import",), env={**os.environ, "PYTHONPATH": str(tmp_path)}, wait=False)
    port = free_port()
    home = surrogate_home(tmp_path / "h", 1, network__listen=[f"/ip4/127.0.0.1/tcp/{port}"])
    node = NodeProc(index=0, name="n00", home=home.path, port=port, role="swarm", forks=s)
    try:
        assert not s.ready()
        node.start(dict(os.environ))
        assert isinstance(node.proc, subprocess.Popen) and node.forks is s  # exec'd; the server is kept
        wait_for(node.check_ready, 60, 0.2, "the exec'd daemon's control line")
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(30) == 0
    finally:
        node.signal_group(signal.SIGKILL)
        s.close()
    assert not s.ready() and not s.alive()


def test_a_child_outlives_its_server_and_still_counts_as_running_until_it_ends(tmp_path):
    """A server killed under a daemon (the OOM killer, a signal) must not make the daemon look crashed:
    it runs on, can be stopped through its pidfd, and then ends with LOST_STATUS (its status is gone)."""
    from p2p_research.sim.forkserver import LOST_STATUS

    s = ForkServer()
    home = surrogate_home(tmp_path / "h", 1)
    p = s.spawn(["node", "start", "--home", home.path, "--no-research"], cwd=ROOT, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (home.path / "control.sock").exists(), 60, 0.1, "the daemon's control socket")
        s._proc.kill()
        s._proc.wait(10)
        assert p.poll() is None and p.poll() is None  # EOF on the connection is not an exit
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(0.5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == LOST_STATUS
        wait_for(lambda: not (home.path / "control.sock").exists(), 10, 0.1, "a clean stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        s.close()
