"""No process of a run outlives it: a real sandboxed run, stopped every way the runner stops one.

bwrap starts the command in a session of its own as PID 1 of its namespace: killing bwrap's process
group alone left train.py training at 100 % CPU with parent PID 1 (and the harness's evaluator, which
waits through the training, polling). Each sandboxed run here also starts a grandchild in a session of
its own that would sleep for two minutes (without a sandbox: a worker in its group); after the runner
returns, no process with the run's token remains.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import trio
from daemon_helpers import Daemon, pids_with_cmdline, wait_for

from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.run_guard import RUN_DIR_ENV
from p2p_research.research.io.runner import RunLimits, run_training, train_argv
from p2p_research.research.io.sandbox import SandboxSpec, clean_env, detect, interpreter_paths, safe_paths
from p2p_research.research.io.warmstart import STARTER

BACKENDS = [kind for kind in ("bwrap", "namespaces") if detect(kind).available]
if "namespaces" in BACKENDS:
    BACKENDS.append("warm")  # a fork of a warm interpreter, its sandbox made as namespaces makes it

TRAIN = '''
import os, sys, time
if os.fork() == 0:
    if sys.argv[3] == "detached":  # a daemon of its own: out of the group, reparented at once
        os.setsid()
        if os.fork() == 0:
            time.sleep(120)
        os._exit(0)
    time.sleep(120)  # a worker, as a data loader starts them
mode = sys.argv[2]
if mode == "memory":
    ballast = bytearray(700 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
print("started", flush=True)
time.sleep(120)
'''


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _gone(token: str, within_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := pids_with_cmdline(token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _setup(tmp_path: Path, backend: str | None):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.py").write_text(TRAIN)
    spec = (SandboxSpec(run_dir, read_only=safe_paths(interpreter_paths(sys.executable), [Path.home()]),
                        kind="namespaces" if backend == "warm" else backend, warm=backend == "warm")
            if backend else None)
    return run_dir, spec


@pytest.mark.parametrize("backend", [*BACKENDS, None])
@pytest.mark.parametrize("how", ["cancelled", "time limit", "memory limit"])
async def test_no_process_of_a_run_outlives_it(tmp_path, backend, how):
    run_dir, spec = _setup(tmp_path, backend)
    token = f"tok-{uuid.uuid4().hex}"
    limits = RunLimits(4 if how == "time limit" else 120, 300 if how == "memory limit" else 4096, False)
    # without a sandbox a process that detaches itself (setsid after a double fork) is out of reach:
    # only code the node runs on its own word runs there (docs/security.md)
    argv = [sys.executable, "train.py", token, "memory" if how == "memory limit" else "sleep",
            "detached" if backend else "worker"]
    outcome = None
    if backend == "warm":
        assert await STARTER.ready(sys.executable, clean_env({}))
    if how == "cancelled":  # cancelled once the run is going (a fixed wait failed beside a loaded suite)
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                nonlocal outcome
                outcome = await run_training(run_dir, {}, limits, run_dir / "run.log", command=argv, sandbox=spec)

            nursery.start_soon(run)
            with trio.move_on_after(100):
                while "started" not in _text(run_dir / "run.log"):
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    else:
        with trio.move_on_after(100):
            outcome = await run_training(run_dir, {}, limits, run_dir / "run.log", command=argv, sandbox=spec)
    log = _text(run_dir / "run.log")
    if how == "cancelled":
        assert outcome is None and "started" in log, log
    else:
        assert outcome is not None and not outcome.ok and how in outcome.reason, (outcome, log)
        assert outcome.warm == (backend == "warm")
    left = await trio.to_thread.run_sync(_gone, token)
    assert not left, f"{how} ({backend or 'no sandbox'}): processes {left} of the run are still there"


def _run_processes(home: Path) -> dict[int, bytes]:
    """pid -> cmdline of every process of a run of the node at `home` (run_guard's marks)."""
    prefix = f"{RUN_DIR_ENV}={(home / 'runs').resolve()}/".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if any(item.startswith(prefix) for item in f.read().split(b"\0")):
                        with open(f"/proc/{entry.name}/cmdline", "rb") as c:
                            found[int(entry.name)] = c.read()
            except OSError:
                continue
    return found


def _training(home: Path) -> bool:
    return any(b"train.py" in cmd and b"bwrap" not in cmd and WATCHDOG_MARK not in cmd
               for cmd in _run_processes(home).values())


WATCHDOG_MARK = b"os.pidfd_open(parent)"


@pytest.mark.slow
@pytest.mark.skipif(not BACKENDS, reason="no sandbox here")
def test_a_stopped_or_killed_node_leaves_no_run_behind(tmp_path):
    """A real daemon with its genesis run under way: stopped (SIGTERM), SIGKILLed and crashed (SIGABRT:
    the watchdog ends the run), and SIGKILLed together with the run's watchdog (the next start ends
    what is left)."""
    home = init_home(tmp_path / "node")
    cfg = home.load_config()
    cfg.sandbox.warm_start = False  # run_guard's watchdog: a warm run's is test_warmstart's
    home.write_config(cfg)
    d = Daemon(home.path)
    for how in ("stopped", "killed", "crashed", "killed with its watchdog"):
        d.start(timeout=120)
        wait_for(lambda: _training(home.path), 120, 0.2, what=f"a run under way ({how})")
        if how == "stopped":
            assert d.stop() is not None
        elif how == "killed":
            d.kill()
        elif how == "crashed":  # a crash in C: no Python cleanup runs
            assert d.stop(signal.SIGABRT) == -signal.SIGABRT
        else:
            watchdogs = [p for p, cmd in _run_processes(home.path).items() if WATCHDOG_MARK in cmd]
            assert watchdogs
            for p in watchdogs:  # stopped first: neither it nor the node can clean up after the other
                os.kill(p, signal.SIGSTOP)
            d.kill()
            for p in watchdogs:
                os.kill(p, signal.SIGKILL)
            time.sleep(1.0)
            assert _training(home.path)  # nothing ended the run: the next start must
            d.start(timeout=120)
            wait_for(lambda: "left running by an earlier life" in d.stderr(), 60, 0.2, what="the leftover ended")
            d.stop()
        deadline = time.monotonic() + 10
        while _run_processes(home.path) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: cmd[-80:] for p, cmd in _run_processes(home.path).items()}
        assert not left, f"{how}: {left}"


def test_a_watchdog_told_to_stop_takes_its_run_with_it(tmp_path):
    """A service manager stops a node by signalling its whole group (the watchdog too): the watchdog
    ends its run's tree before it exits, so nothing trains on under init."""
    import signal
    import subprocess
    import time

    from p2p_research.research.io.run_guard import guarded

    marker = f"p2p-watchdog-test-{time.monotonic_ns()}"
    watchdog = subprocess.Popen(guarded([sys.executable, "-c", "import time; time.sleep(60)", marker]),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _pids_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pids_named(marker), "the run did not start"
        watchdog.send_signal(signal.SIGTERM)
        assert watchdog.wait(timeout=10) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5
        while _pids_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pids_named(marker), "the run outlived its watchdog"
    finally:
        watchdog.kill()
        for pid in _pids_named(marker):
            os.kill(pid, signal.SIGKILL)


def _pids_named(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
                if marker.encode() in args and b"time.sleep(60)" in b" ".join(args) and WATCHDOG_MARK not in b" ".join(args):
                    out.append(int(entry))
            except OSError:
                continue
    return out


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_run_that_stops_its_process_group_stops_nothing_outside_its_sandbox(tmp_path, backend):
    """kill(0, SIGSTOP) reaches every process of the sender's group, across PID namespaces: a run whose
    group held its watchdog (or unshare's) could freeze it and outlive its node. The command's PID 1 is
    in a session of its own under every backend, so the stop reaches only the sandbox."""
    run_dir, spec = _setup(tmp_path, backend)
    (run_dir / "train.py").write_text(textwrap.dedent('''
        import os, signal, time
        if os.fork() == 0:
            time.sleep(0.3)
            os.kill(0, signal.SIGSTOP)  # every process of this group, wherever it is
            os._exit(0)
        try:
            os.setpgid(0, 0)  # not this one
        except PermissionError:  # it leads its session already (bwrap's --as-pid-1: PID 1 ignores the stop)
            pass
        time.sleep(1.0)
        print("---"); print("val_bpb: 1.0")
    '''))
    if backend == "warm":
        assert await STARTER.ready(sys.executable, clean_env({}))
    started = time.monotonic()
    outcome = await run_training(run_dir, {}, RunLimits(30, 4096, False), run_dir / "run.log", train_argv(""), spec)
    assert outcome.ok, (outcome.reason, (run_dir / "run.log").read_text()[-2000:])
    assert time.monotonic() - started < 20
