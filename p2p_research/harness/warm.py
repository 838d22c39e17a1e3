"""A warm evaluator: one sandboxed process that imported torch and the pinned harness once, and forks a
fresh child for every hand-over it measures.

Starting an evaluator per run cost every run a sandbox, an interpreter and a torch import (about a
CPU-second, spent beside the training it slowed): on the autoresearch fixture's 4.5-s runs that was
most of the measurement's cost (docs/bench-harness.md). The server keeps what every evaluation needs
and nothing any evaluation touched:

- it runs `p2p_evaluate.py --serve` (harness/evaluate.py `serve`) in the same sandbox an evaluator had,
  seeing the node's pinned prepare.py, this node's private data, and one read-only folder of hand-over
  copies (`copies/`), into which the node copies each run's hand-over before it asks;
- every request is measured in a child forked from the server, which has loaded no hand-over and run
  no torch operation; whatever a model does to its process ends with the child. The child inherits
  the server's limits (its address-space limit, the sandbox's process and file limits); the node
  watches the whole tree's memory, and a request that runs out of time or memory ends the server
  (the next run starts another, as cold as an evaluator was before);
- the node's clock bounds each evaluation (the caller's cancel scope), not the server's;
- the server exits at the end of its stdin (the node closed it, or died), after five minutes without a
  request (a run in progress holds it for as long as its limit), or under the watchdog every run has
  (research/io/run_guard.py); `close` ends it at once.

Requests go one at a time: a trainer measures one run at a time, and each worker has its own trainer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import tempfile
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from p2p_research.research.io import warmstart
from p2p_research.research.io.run_guard import is_alive, owner_mark
from p2p_research.research.io.runner import (
    Launch,
    RunLimits,
    kill_tree,
    launch_of,
    members_of,
    rss_mb,
    warm_shell,
)
from p2p_research.research.io.sandbox import SandboxSpec, limit_values
from p2p_research.research.io.warmstart import WarmRun

log = logging.getLogger("p2p_research.harness")

EVALUATE_SCRIPT = "p2p_evaluate.py"
MEASURE_PREFIX = b"P2P-MEASURE "
EXIT_PREFIX = b"P2P-EXIT "
PER_REQUEST_ENV = ("P2P_SEED", "P2P_PRIVATE_BELOW", "P2P_PRIVATE_SEED")  # evaluate.PER_REQUEST_ENV: the rest starts a server
MEMORY_POLL_S = 0.5
MAX_LINE = 256 * 1024
ROOT_PREFIX = ".evaluator-"   # then the owner's pid and start time: a dead node's folder is removed later


def _sweep(near: Path) -> None:
    """Remove the evaluator folders a node that is no longer alive left here (killed, or crashed in C:
    its watchdog ended its server, nothing removed its folder)."""
    try:
        entries = list(near.glob(f"{ROOT_PREFIX}*"))
    except OSError:
        return
    for folder in entries:
        pid, _, rest = folder.name[len(ROOT_PREFIX):].partition("-")
        started = rest.rpartition("-")[0]
        if pid.isdigit() and started and not is_alive(f"{pid}:{started}"):
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class ServerSpec:
    """What a server is started with; a request that needs anything else starts another."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    memory_limit_mb: int
    hard_address_limit: bool
    sandbox: SandboxSpec | None


def _end(pid: int, cgroup_remove) -> None:
    """Kill a server's whole tree (its child too) and reap it; also run when its owner is collected."""
    kill_tree(pid)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)
    cgroup_remove()


async def _start_warm(spec: ServerSpec, launch: Launch, err_fd: int) -> WarmRun | None:
    """The server as a fork of a warm interpreter of the evaluators' own (research/io/warmstart.py; never
    the one training runs fork from), where the sandbox allows one; None: start it cold. Its stdin and
    stdout are pipes, as a cold server's are."""
    sandbox = spec.sandbox
    if sandbox is None or not sandbox.warm or not warmstart.enabled() or not warmstart.eligible(list(spec.argv)):
        return None
    rlimits = limit_values(sandbox)
    if spec.hard_address_limit:
        rlimits.append((resource.RLIMIT_AS, spec.memory_limit_mb * 2**20))
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        run = await warmstart.STARTER.spawn(list(spec.argv), launch.env, sandbox, rlimits,
                                            launch.cgroup.path if launch.cgroup else None, [in_r, out_w, err_fd],
                                            role="evaluate")
    finally:
        os.close(in_r)
        os.close(out_w)
    if run is None:
        os.close(in_w)
        os.close(out_r)
        return None
    run.stdin, run.stdout = os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb")
    return run


class WarmEvaluator:
    """The server of one trainer (see the module's docstring)."""

    def __init__(self, prepare_py: bytes) -> None:
        self.prepare_py = prepare_py
        self.root: Path | None = None
        self._proc: subprocess.Popen | WarmRun | None = None
        self._spec: ServerSpec | None = None
        self._finalizer: weakref.finalize | None = None
        self._buffer = b""
        self._requests = 0
        self.starts = 0  # servers started (a test and the benchmark read it)

    # --- the copies' folder ---------------------------------------------------------------------------
    def copy_dir(self, near: Path) -> Path:
        """A fresh folder for one hand-over's copy, in the one folder the server can read."""
        if self.root is None or not self.root.is_dir():
            _sweep(near)
            owner = owner_mark().replace(":", "-")
            self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{owner}-", dir=near))
            (self.root / "copies").mkdir()
            (self.root / "bin").mkdir()
            self._stop()
        self._requests += 1
        return self.root / "copies" / str(self._requests)

    # --- the server -----------------------------------------------------------------------------------
    def _server_spec(self, argv: list[str], env: dict[str, str], limits: RunLimits, sandbox: SandboxSpec | None,
                     private_data: Path | None) -> ServerSpec:
        assert self.root is not None
        private = (private_data,) if private_data is not None else ()
        box = (replace(sandbox, run_dir=self.root / "bin", read_only=(*sandbox.read_only, self.root / "copies", *private),
                       read_write=(), masked=()) if sandbox is not None else None)
        base = tuple(sorted((k, v) for k, v in env.items() if k not in PER_REQUEST_ENV))
        return ServerSpec(tuple(argv), base, limits.memory_limit_mb, limits.hard_address_limit, box)

    @property
    def log_path(self) -> Path | None:
        """The server's stderr (torch's warnings, a child's traceback), where a refusal points."""
        return self.root / "server.log" if self.root is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def ensure(self, argv: list[str], env: dict[str, str], limits: RunLimits, sandbox: SandboxSpec | None,
                     hold_s: float, private_data: Path | None = None) -> None:
        """A server for these settings (the private shard's folder among what it reads), started if
        there is none, held for `hold_s` (the run's time)."""
        spec = self._server_spec(argv, env, limits, sandbox, private_data)
        if spec != self._spec or not self.running:
            self._stop()
            await self._start(spec)
        self._send({"hold": hold_s})

    async def _start(self, spec: ServerSpec) -> None:
        assert self.root is not None
        bin_dir = self.root / "bin"
        (bin_dir / "prepare.py").write_bytes(self.prepare_py)
        (bin_dir / EVALUATE_SCRIPT).write_bytes(Path(__file__).with_name("evaluate.py").read_bytes())
        launch = launch_of(bin_dir, dict(spec.env), RunLimits(0, spec.memory_limit_mb, spec.hard_address_limit),
                           list(spec.argv), spec.sandbox)
        assert self.log_path is not None
        with self.log_path.open("ab") as err:
            proc = await _start_warm(spec, launch, err.fileno())
            if proc is None:
                def start() -> subprocess.Popen:
                    return subprocess.Popen(launch.argv, cwd=bin_dir, env=launch.env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                                            preexec_fn=launch.preexec)
                try:
                    proc = await trio.to_thread.run_sync(start)
                except OSError as e:
                    if launch.cgroup is not None:
                        launch.cgroup.remove()
                    raise RuntimeError(f"cannot start the evaluator: {e.strerror or e}") from e
        cgroup = launch.cgroup
        self._proc, self._spec, self._buffer = proc, spec, b""
        self.starts += 1
        self._finalizer = weakref.finalize(self, _end, proc.pid, cgroup.remove if cgroup else (lambda: None))
        log.debug("evaluator server started (pid %d)", proc.pid)

    def _send(self, doc: dict) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(doc).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:  # it died: the request's read sees its end
            pass

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps it, once
        self._finalizer = None
        self._proc = None
        self._spec = None

    def close(self) -> None:
        """End the server and remove the copies' folder."""
        self._stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # --- one evaluation -------------------------------------------------------------------------------
    async def measure(self, folder: Path, env: dict[str, str], memory_limit_mb: int) -> tuple[dict | None, str]:
        """The child's result document for the hand-over copied to `folder` (None when it ended
        without one) and the raw result line. The server must be `ensure`d. Cancelled (the caller's
        time limit), or over the memory limit, the server ends with its child."""
        assert self._proc is not None and self._proc.stdout is not None
        request_id = folder.name
        self._send({"id": request_id, "folder": str(folder),
                    "env": {k: v for k, v in env.items() if k in PER_REQUEST_ENV}})
        stream = trio.lowlevel.FdStream(os.dup(self._proc.stdout.fileno()))
        finished = False
        try:
            while True:
                doc, line = self._take(request_id)
                if line:
                    finished = True
                    return doc, line
                with trio.move_on_after(MEMORY_POLL_S):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        finished = True
                        return None, "the evaluator ended"
                    self._buffer = (self._buffer + chunk)[-MAX_LINE * 4:]
                    continue
                if not self.running:
                    finished = True
                    return None, "the evaluator ended"
                members = members_of(self._proc.pid)
                shell = warm_shell(self._proc.pid, members) if isinstance(self._proc, WarmRun) else frozenset()
                if rss_mb(self._proc.pid, members, shell) > memory_limit_mb:
                    finished = True
                    self._stop()
                    return None, f"memory limit exceeded ({memory_limit_mb} MB)"
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if not finished:  # cancelled while the child measures: nothing of it may answer a later request
                self._stop()

    def _take(self, request_id: str) -> tuple[dict | None, str]:
        """The request's answer among the complete lines read so far (older requests' lines are dropped)."""
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            if len(line) > MAX_LINE:
                continue
            for prefix in (MEASURE_PREFIX, EXIT_PREFIX):
                if not line.startswith(prefix):
                    continue
                try:
                    doc = json.loads(line[len(prefix):])
                except ValueError:
                    continue
                if not isinstance(doc, dict) or doc.get("id") != request_id:
                    continue
                text = line.decode("utf-8", "replace")
                if prefix == MEASURE_PREFIX:
                    return doc, text
                return None, f"the evaluator's process ended without a value (status {doc.get('status')})"
        return None, ""
