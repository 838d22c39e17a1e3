"""The warm start (research/io/warmbox.py, warmstart.py): a sandboxed run forked from an interpreter
that imported torch once trains as a cold one does, shows in /proc as itself, and ends with the node
that asked; the warm interpreter ends when idle, and a folder that is not this user's alone is not used.

Real runs through the real runner, in real sandboxes (namespaces), with real torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import trio
from daemon_helpers import pids_with_cmdline

from p2p_research.research.io import warmstart
from p2p_research.research.io.run_guard import OWNER_ENV, RUN_DIR_ENV
from p2p_research.research.io.runner import RunLimits, run_training, train_argv
from p2p_research.research.io.sandbox import SandboxSpec, clean_env, detect, interpreter_paths, safe_paths

pytestmark = pytest.mark.skipif(not detect("namespaces").available, reason="no user namespaces here")

# real torch training, seeded: a small MLP fitting a fixed random function
TRAIN = textwrap.dedent('''
    import os, sys, time, random
    import torch
    torch.manual_seed(1234)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(512, 16, generator=g)
    y = torch.sin(x @ torch.randn(16, 1, generator=g))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    print("random", random.random())
    if len(sys.argv) > 1 and sys.argv[1] == "wait":
        print("waiting", flush=True)
        time.sleep(120)
    print("---")
    print(f"val_bpb: {loss.item():.9f}")
''')


def _spec(run_dir: Path, warm: bool) -> SandboxSpec:
    return SandboxSpec(run_dir, read_only=safe_paths(interpreter_paths(sys.executable), [Path.home()]),
                       kind="namespaces", warm=warm)


def _run_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "train.py").write_text(TRAIN)
    return d


async def test_a_warm_run_trains_as_a_cold_one_does(tmp_path):
    """Same script, same seed: the same loss to the last digit, cold and warm (twice: a second fork
    of the same warm interpreter is no different); each warm run draws its own Python random numbers;
    the CPU counted for a warm run includes the warm interpreter's start, as a cold run's does."""
    assert await warmstart.STARTER.ready(sys.executable, clean_env({}))
    outcomes = []
    for name, warm in (("cold", False), ("warm1", True), ("warm2", True)):
        run_dir = _run_dir(tmp_path, name)
        o = await run_training(run_dir, {}, RunLimits(120, 4096, False), run_dir / "run.log", train_argv(""),
                               _spec(run_dir, warm))
        assert o.ok, (name, o.reason, (run_dir / "run.log").read_text()[-2000:])
        assert o.warm == warm
        outcomes.append(o)
    cold, warm1, warm2 = outcomes
    assert cold.summary.val_bpb == warm1.summary.val_bpb == warm2.summary.val_bpb
    draws = {(tmp_path / n / "run.log").read_text().split("random ")[1].split()[0] for n in ("cold", "warm1", "warm2")}
    assert len(draws) == 3, draws
    # A warm run counts the warm interpreter's start (its imports: what a cold run spends before its
    # first step) plus its own work, which is less than a whole cold run's. Compared with the start's own
    # record, not with the cold run's total: imports cost 1.5 CPU-s on a quiet machine and more than twice
    # that beside a loaded suite (a start counted 8.8 against a cold run's 4.7 there), so the two totals
    # are of different loads.
    preload = (*warmstart.PRELOAD, *warmstart.preload_for(tmp_path / "warm1" / "train.py"))
    info = warmstart.folder() / f"{warmstart.key_of(sys.executable, clean_env({}), preload)}.sock.info"
    startup = json.loads(info.read_text())["startup_cpu_s"]
    assert startup > 0 and warm1.cpu_seconds >= startup, (warm1.cpu_seconds, startup)
    assert warm1.cpu_seconds - startup < cold.cpu_seconds, (warm1.cpu_seconds, startup, cold.cpu_seconds)
    assert not (tmp_path / "warm1" / ".nsbox-root").exists()


async def test_a_warm_run_shows_in_proc_as_itself_and_ends_with_the_node_that_asked(tmp_path):
    """`ps`, `pgrep -f` and the node's leftover check (run_guard.end_leftovers) read a run from
    /proc/PID/cmdline and /proc/PID/environ: a warm run shows its own there. The node that asked is a
    process of its own here; SIGKILLed, it runs no cleanup, and the run's watchdog ends the run."""
    token = f"tok-{uuid.uuid4().hex}"
    run_dir = _run_dir(tmp_path, "run")
    assert await warmstart.STARTER.ready(sys.executable, clean_env({}))
    node = subprocess.Popen(  # noqa: ASYNC220 (a node of its own, SIGKILLed below)
        [sys.executable, "-c", textwrap.dedent(f'''
        import sys, trio
        from pathlib import Path
        from p2p_research.research.io.runner import RunLimits, run_training
        from p2p_research.research.io.sandbox import SandboxSpec, interpreter_paths, safe_paths
        run_dir = Path({str(run_dir)!r})
        spec = SandboxSpec(run_dir, read_only=safe_paths(interpreter_paths(sys.executable), [Path.home()]),
                           kind="namespaces", warm=True)
        o = trio.run(run_training, run_dir, {{}}, RunLimits(120, 4096, False), run_dir / "run.log",
                     [sys.executable, "train.py", "wait", {token!r}], spec)
        print("outcome", o.warm, o.reason)
    ''')], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "waiting" not in (run_dir / "run.log").read_text(errors="replace") if (run_dir / "run.log").exists() else True:
            assert time.monotonic() < deadline and node.poll() is None, "the run did not start"
            await trio.sleep(0.1)
        (pid,) = [p for p in pids_with_cmdline(token) if p != node.pid]  # the node's own -c holds it too
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline == f"{sys.executable} train.py wait {token}".encode() + b"\0", cmdline
        environ = [e for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e]
        assert environ[0].startswith(f"{OWNER_ENV}={node.pid}:".encode()), environ[:3]
        assert environ[1] == f"{RUN_DIR_ENV}={run_dir.resolve()}".encode(), environ[:3]
        assert not any(e.startswith(warmstart.ENV_PAD_VAR.encode()) for e in environ)
        node.kill()
        node.wait()
        deadline = time.monotonic() + 10
        while pids_with_cmdline(token) and time.monotonic() < deadline:
            await trio.sleep(0.1)
        assert not pids_with_cmdline(token), "the run outlived the node that asked for it"
    finally:
        node.kill()
        for p in pids_with_cmdline(token):
            os.kill(p, signal.SIGKILL)


async def test_a_warm_interpreter_ends_when_idle_and_a_folder_not_this_user_s_alone_is_not_used(tmp_path, monkeypatch,
                                                                                                 caplog):
    """Preloading nothing (this test is about the server's life, not torch): ready within moments,
    gone with its files after its idle time. One whose sandbox check fails never listens, and says why.
    A folder others may write to is refused: runs start cold."""
    folder = Path(tempfile.mkdtemp(prefix="p2p-warm-"))  # short: a socket's path is at most 107 bytes
    monkeypatch.setenv(warmstart.FOLDER_ENV, str(folder))
    starter = warmstart.WarmStarter(preload=(), idle_s=1.0)
    assert await starter.ready(sys.executable, clean_env({}))
    (info,) = folder.glob("*.sock.info")
    pid = int(__import__("json").loads(info.read_text())["pid"])
    assert Path(f"/proc/{pid}").exists()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        await trio.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the idle warm interpreter is still there"
    assert not list(folder.iterdir()), list(folder.iterdir())

    # a warm interpreter from which no sandbox starts (here: its check's spec names no root) ends before
    # it listens, its log says why, and runs start cold
    real_doc = warmstart.namespaces_doc
    monkeypatch.setattr(warmstart, "namespaces_doc", lambda spec: {**real_doc(spec), "root": "/nonexistent/root"})
    broken = warmstart.WarmStarter(preload=(), idle_s=1.0)
    with caplog.at_level(logging.WARNING, logger="p2p_research.warmstart"):
        assert not await broken.ready(sys.executable, clean_env({}))
    assert "a sandbox does not start from here" in caplog.text, caplog.text
    monkeypatch.setattr(warmstart, "namespaces_doc", real_doc)

    folder.chmod(0o777)
    assert warmstart.folder() is None
    run_dir = _run_dir(tmp_path, "run")
    o = await run_training(run_dir, {}, RunLimits(120, 4096, False), run_dir / "run.log", train_argv(""),
                           _spec(run_dir, True))
    assert o.ok and not o.warm, o.reason
    shutil.rmtree(folder)


def test_only_an_interpreter_on_a_script_starts_warm():
    assert warmstart.eligible([sys.executable, "p2p_handover.py", "train.py"])
    assert warmstart.eligible(["/usr/bin/python3.11", "-c", "pass"])
    assert not warmstart.eligible(["uv", "run", "train.py"])
    assert not warmstart.eligible([sys.executable, "-m", "module"])
    assert not warmstart.eligible([sys.executable])


def test_a_run_that_uses_torch_optim_or_compile_forks_from_an_interpreter_that_imported_dynamo(tmp_path):
    """autoresearch's train.py builds torch.optim's AdamW and compiles: both import TorchDynamo at their
    first call (1.5 CPU-s), so its runs fork from an interpreter that imported it; the default target,
    written to need neither, keeps the lighter one."""
    from p2p_research.target import TARGET_DIR

    fixture = Path(__file__).parent / "fixtures" / "autoresearch" / "train.py"
    assert warmstart.preload_for(fixture) == ("torch._dynamo",)
    default = tmp_path / "train.py"
    default.write_bytes((TARGET_DIR / "train.py").read_bytes())
    assert warmstart.preload_for(default) == ()
    for text in ("model = torch.compile(model)", "from torch import optim", "opt = torch.optim.SGD(p)"):
        default.write_text(text)
        assert warmstart.preload_for(default) == ("torch._dynamo",), text
    assert warmstart.preload_for(tmp_path / "missing.py") == ()
    env = clean_env({})
    assert warmstart.key_of(sys.executable, env) != warmstart.key_of(sys.executable, env, ("torch", "torch._dynamo"))


async def test_only_this_user_in_this_user_namespace_gets_a_run_and_only_once_it_says_go(tmp_path):
    """A process in another user namespace (as every sandboxed run is) is refused by the kernel's word
    (SO_PEERCRED), so a run that could see the socket could not ask for a sandbox of its own choosing.
    A client that gave up before it said go (it may have started the run cold) leaves nothing running."""
    assert await warmstart.STARTER.ready(sys.executable, clean_env({}))
    sock = warmstart.folder() / f"{warmstart.key_of(sys.executable, clean_env({}))}.sock"
    outsider = await trio.run_process(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", textwrap.dedent(f'''
            import socket
            s = socket.socket(socket.AF_UNIX); s.connect({str(sock)!r})
            socket.send_fds(s, [b'{{"argv": ["-c", "pass"], "env": {{}}, "spec": {{}}, "owner": 1}}\\n'], [1])
            print(s.recv(4096).decode())
        ''')], capture_stdout=True, capture_stderr=True, check=False)
    said = (outsider.stdout + outsider.stderr).decode()
    assert "refused: not this user's, in this user namespace" in said, said

    token = f"tok-{uuid.uuid4().hex}"
    run_dir = _run_dir(tmp_path, "run")
    doc = {"argv": ["train.py", "wait", token], "executable": sys.executable, "env": clean_env({}),
           "spec": warmstart.namespaces_doc(_spec(run_dir, True)), "owner": os.getpid()}
    with open(run_dir / "run.log", "wb") as log, socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        socket.send_fds(s, [json.dumps(doc).encode() + b"\n"], [log.fileno()])
        reply = json.loads(s.recv(4096).split(b"\n")[0])
    assert isinstance(reply.get("pid"), int)  # forked, then given up on: closed without a go
    deadline = time.monotonic() + 5
    while Path(f"/proc/{reply['pid']}").exists() and time.monotonic() < deadline:
        await trio.sleep(0.1)
    assert not Path(f"/proc/{reply['pid']}").exists() and not pids_with_cmdline(token)
    assert "waiting" not in (run_dir / "run.log").read_text()


async def test_a_short_warm_run_s_cpu_is_counted_to_its_end(tmp_path):
    """The runner samples a run's CPU every half second; a run that ends between two samples would count
    next to nothing of its own, and the harness's compute check would take that as its reference. A
    warm run's count is the kernel's to its end (the warm interpreter's wait4 of its watchdog: the
    whole tree, a child the run reaped included), plus the warm interpreter's own start."""
    from p2p_research.research.io.sandbox import limit_values

    assert await warmstart.STARTER.ready(sys.executable, clean_env({}))
    info = warmstart.folder() / f"{warmstart.key_of(sys.executable, clean_env({}))}.sock.info"
    startup = json.loads(info.read_text())["startup_cpu_s"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.py").write_text(textwrap.dedent('''
        import os, time
        def spin(s):
            while time.process_time() < s:
                pass
        pid = os.fork()
        if pid == 0:
            spin(0.3)
            os._exit(0)
        os.waitpid(pid, 0)
        spin(0.3)
        print("---"); print("val_bpb: 1.0")
    '''))
    spec = _spec(run_dir, True)
    with open(run_dir / "direct.log", "wb") as log:
        run = await warmstart.STARTER.spawn([sys.executable, "train.py"], clean_env({}), spec, limit_values(spec),
                                            None, [log.fileno()])
        assert run is not None and await run.wait() == 0
    assert run.cpu_s is not None and run.cpu_s >= 0.6, run.cpu_s  # the child's 0.3 and the run's own 0.3
    o = await run_training(run_dir, {}, RunLimits(60, 4096, False), run_dir / "run.log", train_argv(""), spec)
    assert o.ok and o.warm, o.reason
    assert o.cpu_seconds - startup >= 0.6, (o.cpu_seconds, startup)
