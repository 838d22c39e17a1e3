"""Escape attempts: hostile train.py variants through the real runner, in the sandbox a node builds.

A real daemon (node D) runs beside the node (B) whose engine runs the code. Each variant tries one
thing; if it works it prints ESCAPED and exits 0, if it fails it exits non-zero. Every variant must be
a crash with a reason, print no ESCAPED, leak no canary, and leave D running.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio
from daemon_helpers import Daemon

from p2p_research.research.io.context import open_context
from p2p_research.research.io.engine import ResearchEngine
from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.proposers import BuiltinProposer
from p2p_research.research.io.runner import RunLimits, run_training, train_argv
from p2p_research.research.io.sandbox import clean_env, detect
from p2p_research.research.io.warmstart import STARTER

BACKENDS = [kind for kind in ("bwrap", "namespaces") if detect(kind).available]
if "namespaces" in BACKENDS:
    BACKENDS.append("warm")  # a fork of a warm interpreter, its sandbox made as namespaces makes it
pytestmark = [pytest.mark.skipif(not BACKENDS, reason=f"no sandbox here: {detect().reason}"),
              pytest.mark.xdist_group("escape")]  # its module fixture is built once, on one worker

CANARY = "canary-7f3a9c-do-not-leak"
HOME_FILE = Path.home() / f".p2p-research-escape-canary-{os.getpid()}"

ATTEMPT = '''
import os, sys, socket, ctypes, signal, time
print("ATTEMPTING", flush=True)  # the sandbox started and ran this code
def escaped(what):
    print("ESCAPED:", what, flush=True)
    print("---"); print("val_bpb: 1.0"); sys.exit(0)
'''

VARIANTS = {
    "read the node's identity.key": "print(open({b_key!r}).read()); escaped('identity.key')",
    "read the node's ledger": "print(open({b_ledger!r}, 'rb').read()[:64]); escaped('ledger')",
    "read the other daemon's key": "print(open({d_key!r}).read()); escaped('daemon key')",
    "read a file in the user's home": "print(open({home_file!r}).read()); escaped('home file')",
    "connect to the daemon's TCP port": "socket.create_connection(('127.0.0.1', {d_port}), timeout=2); escaped('tcp')",
    "connect to an outside address": (
        "routes = open('/proc/net/route').read().splitlines()[1:]\n"
        "if routes: escaped('a route out: ' + routes[0])\n"  # never send a packet if the sandbox is broken
        "socket.create_connection(('192.0.2.1', 9), timeout=2); escaped('outside')"),
    "connect to the control socket": (
        "s = socket.socket(socket.AF_UNIX); s.connect({d_sock!r}); escaped('control socket')"),
    "write outside scratch": "open({outside!r}, 'w').write('x'); escaped('wrote outside')",
    "write into the node's repo": "open({b_repo!r} + '/HEAD', 'a').write('x'); escaped('repo')",
    "fill the disk": (
        "f = open('fill.bin', 'wb')\n"
        "for _ in range(100000): f.write(b'0' * 2**20); f.flush()\n"
        "escaped('wrote 100 GB')"),
    "fork bomb": (
        "n = 0\n"
        "while n < 5000:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(60); os._exit(0)\n"
        "    n += 1\n"
        "escaped(f'{{n}} processes')"),
    "leave a background process": (
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.execvp('sleep', ['sleep', '{marker}'])\n"
        "time.sleep(0.5)\n"
        "sys.exit(4)"),
    "signal the daemon": "os.kill({d_pid}, signal.SIGKILL); escaped('killed the daemon')",
    "ptrace the daemon": (
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.ptrace(16, {d_pid}, None, None) == 0: escaped('ptrace attach')\n"
        "sys.exit('ptrace: errno %d' % ctypes.get_errno())"),
    "make a user namespace (the kernel's widest surface)": (
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.unshare(0x10000000) == 0: escaped('a user namespace')\n"
        "sys.exit('unshare: errno %d' % ctypes.get_errno())"),
    "read the daemon's environment": "print(open('/proc/{d_pid}/environ').read()); escaped('environ')",
    "read the host's processes": (
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "if len(pids) > 5: escaped(f'{{len(pids)}} processes visible')\n"
        "sys.exit('only the sandbox: ' + ' '.join(pids))"),
    "read API keys from the environment": (
        "leaked = [k for k, v in os.environ.items() if k in ('ANTHROPIC_API_KEY', 'P2P_TEST_SECRET') or {canary!r} in v]\n"
        "if leaked: escaped(str(leaked))\n"
        "sys.exit('environment is clean')"),
}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("escape")
    cache = root / "cache"
    cache.mkdir()
    d_home = init_home(root / "daemon")
    d = Daemon(d_home.path, "--no-research").start()
    b_home = init_home(root / "node")
    cfg = b_home.load_config()
    cfg.research.cache_dir = str(cache)
    cfg.sandbox.scratch_mb = 64
    cfg.sandbox.max_processes = 64
    cfg.research.noise_runs = 0
    b_home.write_config(cfg)
    (b_home.path / "identity.key").write_text(CANARY)  # the node running the code: its key is the canary
    HOME_FILE.write_text(CANARY)
    try:
        yield root, d, d_home, b_home
    finally:
        HOME_FILE.unlink(missing_ok=True)
        d.stop()
        d.kill()


def _as(spec, backend: str):
    """`spec` started the way `backend` names: bwrap, namespaces, or warm (research/io/warmbox.py)."""
    return dataclasses.replace(spec, kind="namespaces" if backend == "warm" else backend, warm=backend == "warm")


def _format(code: str, **values) -> str:
    return code.format(**values)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("what", list(VARIANTS))
def test_escape_attempt_fails(setting, what, backend, monkeypatch):
    root, d, d_home, b_home = setting
    monkeypatch.setenv("P2P_TEST_SECRET", CANARY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    marker = f"{7000 + abs(hash(what)) % 1000}.{os.getpid()}"
    values = dict(b_key=str(b_home.identity), b_ledger=str(b_home.ledger), b_repo=str(b_home.repo / ".git"),
                  d_key=str(d_home.identity), d_sock=str(d_home.control_socket), d_pid=d.proc.pid,
                  d_port=int(d.addrs[0].split("/tcp/")[1].split("/")[0]),
                  outside=str(root / "escaped.txt"), marker=marker, home_file=str(HOME_FILE), canary=CANARY)
    ctx = open_context(b_home)
    try:
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=1))
        run_dir = ctx.home.runs / f"escape-{backend}-{abs(hash(what))}"
        run_dir.mkdir(parents=True)
        (run_dir / "train.py").write_text(ATTEMPT + _format(VARIANTS[what], **values) + "\n")
        spec = engine.sandbox_spec(run_dir)
        assert spec is not None
        spec = _as(spec, backend)
        if backend == "warm":
            assert trio.run(STARTER.ready, sys.executable, clean_env(engine.run_env(0)))
        started = time.monotonic()
        outcome = trio.run(run_training, run_dir, engine.run_env(0), RunLimits(30, 1024, False),
                           run_dir / "run.log", train_argv(""), spec)
    finally:
        ctx.close()
    log = (run_dir / "run.log").read_text(errors="replace")
    print(f"\n{backend}: {what}: {outcome.reason}")
    assert not outcome.ok and outcome.reason, (what, outcome, log[-2000:])
    assert outcome.warm == (backend == "warm")
    assert "ATTEMPTING" in log, log[-2000:]
    assert "ESCAPED" not in log, log[-2000:]
    assert CANARY not in log
    assert time.monotonic() - started < 30, "the attempt should fail fast, not run into the time limit"
    assert not (root / "escaped.txt").exists()
    assert (b_home.identity.read_text() == CANARY) and d.proc.poll() is None
    assert d.json("status")["peer_id"] == d.peer_id  # the daemon answers
    # nothing the run started outlives it
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert left.returncode == 1, f"a process outlived the run: {left.stdout}"
    big = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 2**20]
    assert not big, big


def test_the_sandbox_is_reported(setting):
    _, d, _, _ = setting
    status = d.json("status")
    assert status["sandbox"].startswith("bwrap") and status["trust_policy"] == "sandboxed"
    assert "sandbox  bwrap" in d.cli("status").stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_run_survives_the_runner_thread(tmp_path, backend, monkeypatch):
    """A sandboxed run outlives the worker thread that started it (trio's idle threads exit after
    10 s; bwrap's --die-with-parent followed that thread and SIGKILLed every run past ~10 s). The
    threads here idle out after 1 s (trio reads the figure at each wait), so a 4-s run outlives its thread."""
    import trio._core._thread_cache as thread_cache

    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.py").write_text("import time\ntime.sleep(4)\nprint('---')\nprint('val_bpb: 1.0')\n")
    from p2p_research.research.io.sandbox import SandboxSpec, interpreter_paths, safe_paths

    spec = _as(SandboxSpec(run_dir, read_only=safe_paths(interpreter_paths(os.sys.executable), [Path.home()])), backend)
    outcome = trio.run(run_training, run_dir, {}, RunLimits(60, 1024, False), run_dir / "run.log", train_argv(""), spec)
    assert outcome.ok, outcome.reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_under_home_shows_under_the_run_s_home_and_a_masked_file_reads_nothing(tmp_path, backend):
    """A harness that finds its data through `~` (autoresearch's ~/.cache/autoresearch) finds it in the
    sandbox, whose HOME is the scratch directory; a masked file (the validation shard, for peers'
    code) gives nothing, at its own path and through `~`, and the rest of its folder is intact."""
    from p2p_research.research.io.sandbox import SandboxSpec, home_views, interpreter_paths, safe_paths

    user_home = tmp_path / "home"
    data = user_home / ".cache" / "harness" / "data"
    data.mkdir(parents=True)
    (data / "shard_0.txt").write_text("training text")
    (data / "shard_9.txt").write_text(CANARY)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.py").write_text(textwrap.dedent(f'''
        import os
        for where in ({str(data / "shard_9.txt")!r}, os.path.expanduser("~/.cache/harness/data/shard_9.txt")):
            try:
                print("read", repr(open(where).read()))
            except OSError as e:
                print("refused", type(e).__name__)
        print("train", open(os.path.expanduser("~/.cache/harness/data/shard_0.txt")).read())
        print("listed", sorted(os.listdir(os.path.expanduser("~/.cache/harness/data"))))
        print("---"); print("val_bpb: 1.0")
    '''))
    cache = user_home / ".cache" / "harness"
    spec = SandboxSpec(run_dir, read_only=(*safe_paths(interpreter_paths(os.sys.executable), [Path.home()]), cache),
                       home_views=home_views((cache,), user_home), masked=(data / "shard_9.txt",))
    spec = _as(spec, backend)
    outcome = trio.run(run_training, run_dir, {}, RunLimits(60, 1024, False), run_dir / "run.log", train_argv(""), spec)
    log = (run_dir / "run.log").read_text()
    assert outcome.ok, (outcome.reason, log[-2000:])
    assert CANARY not in log
    assert "train training text" in log and "listed ['shard_0.txt', 'shard_9.txt']" in log, log
    assert log.count("refused") + log.count("read ''") == 2, log
