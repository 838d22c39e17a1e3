"""Runs one training in a child process with a hard time limit and a memory limit. It never hangs.

Training is the one place a node executes code that an agent or a peer wrote, so it runs as a child in
its own process group: on timeout, memory overrun or cancellation (Ctrl+C) the whole group is killed.
Its output goes to a log file per run; the summary block at the end is parsed, and anything else
(crash, timeout, NaN, no summary) becomes a `crash` outcome with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from p2p_research.research.io import warmstart
from p2p_research.research.io.run_guard import OWNER_ENV, RUN_DIR_ENV, guarded, owner_mark
from p2p_research.research.io.sandbox import (
    PidsCgroup,
    SandboxSpec,
    apply_limits,
    clean_env,
    limit_values,
    wrap,
)
from p2p_research.research.summary import Summary, SummaryError, parse_summary

log = logging.getLogger("p2p_research.runner")

RSS_POLL_S = 0.5


@dataclass(frozen=True)
class RunLimits:
    time_limit_s: float
    memory_limit_mb: int
    hard_address_limit: bool = True  # RLIMIT_AS: fine on CPU; CUDA maps huge virtual ranges, so off there
    # CPU seconds of the run's processes (CpuMeter, read from outside) past which it is stopped: the
    # harness's bound on training past a token budget (harness/verdict.compute_limit); None: no bound
    cpu_limit_s: float | None = None


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    summary: Summary | None
    reason: str
    wall_seconds: float
    returncode: int | None
    log_path: Path
    # who measured summary.val_bpb: "harness" (this node, from the handed-over model: harness/) or
    # "self" (the run's printed value); the printed value is kept apart when the harness measured
    measured_by: str = "self"
    reported_val_bpb: float | None = None
    private_bpb: float | None = None       # the harness's value on this node's private split
    # CPU seconds the run's processes used, counted by the kernel and read from outside (/proc):
    # what the run cannot choose about its own compute (harness/verdict.over_compute)
    cpu_seconds: float | None = None
    warm: bool = False  # started as a fork of a warm interpreter (research/io/warmstart.py), not cold


def _tail(path: Path, n: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_error_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith("^") and not line.startswith("~"):
            return line[:300]
    return ""


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every process, from /proc."""
    stats: dict[int, tuple[int, int]] = {}
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                stats[int(entry.name)] = (int(fields[1]), int(fields[2]))  # ppid, pgrp
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        pass
    return stats


def members_of(pid: int) -> set[int]:
    """The child's process group and all its descendants (a sandboxed run sits in a session of its own
    under bwrap, so its processes are found as descendants, not by group)."""
    stats = _process_table()
    members = {p for p, (_, pgrp) in stats.items() if pgrp == pid or p == pid}
    grew = True
    while grew:
        new = {p for p, (ppid, _) in stats.items() if ppid in members and p not in members}
        members |= new
        grew = bool(new)
    return members


def warm_shell(pid: int, members: set[int]) -> set[int]:
    """A warm run's watchdog (`pid`) and its namespace's PID 1: forks of the warm interpreter that hold
    its pages and run nothing of the run's. A memory limit leaves them out (a cold run has no such
    copies: its watchdog and bwrap are small processes)."""
    table = _process_table()
    return {pid} | {p for p in members if table.get(p, (0, 0))[0] == pid}


def rss_mb(pid: int, members: set[int] | None = None, leave_out: set[int] = frozenset()) -> float:
    """RSS of the child's process group and of all its descendants (less `leave_out`)."""
    members = (members_of(pid) if members is None else members) - leave_out
    total = 0.0
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    for p in members:
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page_mb
        except (OSError, IndexError, ValueError):
            continue
    return total


_CLK_TCK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time (user + system) a run's processes spent, as the kernel counts it, sampled from /proc:
    the run cannot lower it from inside. Two counts, and the larger is the run's:

    - the tree: each live process's own time plus what it reaped of its children (a child reaped by a
      member is folded into that member's counts), the largest sum seen;
    - the processes: each process's own time at its last sample, for every process seen alive, dead
      ones included. A parent that ignores SIGCHLD has its children reaped by the kernel, which then
      discards their times: the tree's count loses them, this one keeps all it sampled.

    What neither sees: the part of a process's time after its last sample (under half a second each),
    and a process that lives and dies between two samples; a cgroup's CPU accounting would count both."""

    def __init__(self) -> None:
        self.tree_peak = 0
        self.live: dict[tuple[int, int], int] = {}   # (pid, start time) -> its own ticks at the last sample
        self.dead = 0                                  # own ticks of processes no longer seen

    def sample(self, members: set[int]) -> float:
        tree = 0
        seen: dict[tuple[int, int], int] = {}
        for p in members:
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
                seen[(p, int(fields[19]))] = utime + stime
                tree += utime + stime + cutime + cstime
            except (OSError, IndexError, ValueError):
                continue
        self.dead += sum(ticks for key, ticks in self.live.items() if key not in seen)
        self.live = seen
        self.tree_peak = max(self.tree_peak, tree)
        return self.seconds

    @property
    def seconds(self) -> float:
        return max(self.tree_peak, self.dead + sum(self.live.values())) / _CLK_TCK


def train_argv(train_command: str, script: str = "train.py") -> list[str]:
    """The child's argv: this node's interpreter on `script`, or the target's own command
    (`uv run train.py`, `/path/.venv/bin/python train.py`); a command that names no script gets it
    appended, so a bare interpreter path works too."""
    argv = shlex.split(train_command) if train_command.strip() else []
    if not argv:
        return [sys.executable, script]
    if not any(Path(a).name == script for a in argv):
        argv.append(script)
    return argv


def _failure_reason(rc: int | None, tail: str) -> str:
    """Why a run that exited non-zero failed, in one line: a divergence (our harness exits 3;
    autoresearch prints FAIL on a NaN or exploding loss), running out of memory, or the last error line."""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    why = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
    detail = _last_error_line(tail)
    if rc == 3:
        return f"loss diverged (NaN/inf): {detail}" if detail else "loss diverged (NaN/inf)"
    if any(line.endswith("FAIL") for line in lines[-3:]):  # also glued to the last \r step line
        return f"loss diverged (train.py printed FAIL: NaN or exploding loss; {why})"
    if any("out of memory" in line.lower() for line in lines[-20:]):
        return f"out of memory ({why}): {detail}"
    return f"{why}: {detail}" if detail else why


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _end(proc: trio.Process | warmstart.WarmRun) -> None:
    """Kill everything under the run's watchdog, let it reap its child and exit (so nothing is left a
    zombie under init), and kill it too if it has not within a second."""
    with trio.CancelScope(shield=True):
        kill_tree(proc.pid, root=False)
        with trio.move_on_after(1.0):
            await proc.wait()
        if proc.returncode is None:
            kill_tree(proc.pid)
            await proc.wait()


def kill_tree(pid: int, root: bool = True) -> None:
    """SIGKILL the child's group and every descendant, all found before any dies. Killing bwrap's group
    alone is not enough: bwrap starts the command in a new session (`--new-session`) as PID 1 of its
    namespace, which ignores every signal but SIGKILL from outside, and once bwrap is gone the command
    is reparented out of reach and trains on (the same holds for the namespaces backend's reaper)."""
    for p in sorted(members_of(pid)):
        if p == pid and not root:
            continue
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if root:
        _kill_group(pid)


def run_marks(run_dir: Path) -> dict[str, str]:
    """Whose run this is, in its environment: run_guard's watchdog ends it if this node dies, a later
    life of the node if both died (cold or warm alike)."""
    return {OWNER_ENV: owner_mark(), RUN_DIR_ENV: str(run_dir.resolve())}


@dataclass
class Launch:
    """How a sandboxed (or plain) child is started: its command line (under the watchdog), its
    environment, the limits it inherits and the cgroup that holds them (removed when it ends)."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    cgroup: PidsCgroup | None


def launch_of(run_dir: Path, env: dict[str, str], limits: RunLimits, command: list[str] | None = None,
              sandbox: SandboxSpec | None = None) -> Launch:
    """`command` (default: this interpreter on train.py) as this node starts every child it does not
    trust: in `sandbox` when one is given, with a clean environment, the memory and process limits,
    and the watchdog that ends it with the node (run_guard)."""
    limit_bytes = limits.memory_limit_mb * 2**20
    cgroup = PidsCgroup(sandbox.max_processes) if sandbox is not None else None

    def preexec() -> None:
        if sandbox is not None:
            apply_limits(sandbox, cgroup.path if cgroup else None)
        if limits.hard_address_limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    argv = command or train_argv("")
    # whose run this is: the watchdog ends it if this node dies, a later life of the node if both died
    marks = run_marks(run_dir)
    if sandbox is not None:
        argv = wrap(argv, sandbox)
        child_env = clean_env({**env, **marks})
    else:
        child_env = {**os.environ, **env, **marks, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        if command:  # the target's own environment: not this node's virtualenv
            child_env.pop("VIRTUAL_ENV", None)
    return Launch(guarded(argv), child_env, preexec, cgroup)


async def _start_warm(run_dir: Path, env: dict[str, str], limits: RunLimits, argv: list[str],
                      sandbox: SandboxSpec | None, log_fd: int) -> tuple[warmstart.WarmRun, PidsCgroup | None] | None:
    """The run as a fork of a warm interpreter (research/io/warmstart.py), where the sandbox allows
    one and one is ready; None: start it cold."""
    if sandbox is None or not sandbox.warm or not warmstart.enabled() or not warmstart.eligible(argv):
        return None
    cgroup = PidsCgroup(sandbox.max_processes)
    rlimits = limit_values(sandbox)
    if limits.hard_address_limit:
        rlimits.append((resource.RLIMIT_AS, limits.memory_limit_mb * 2**20))
    marks = run_marks(run_dir)
    run = await warmstart.STARTER.spawn(argv, clean_env({**env, **marks}), sandbox, rlimits, cgroup.path, [log_fd],
                                        extra=warmstart.preload_for(run_dir / "train.py"))
    if run is None:
        cgroup.remove()
        return None
    return run, cgroup


async def run_training(run_dir: Path, env: dict[str, str], limits: RunLimits, log_path: Path,
                       command: list[str] | None = None, sandbox: SandboxSpec | None = None) -> RunOutcome:
    """Run `command` (default: this interpreter on train.py) in `run_dir`, inside `sandbox` when one
    is given; returns the outcome. Cancellation kills the child group (and the sandbox with it).

    A sandboxed run of an interpreter on a script starts warm where it can (`_start_warm`): its CPU is
    what the kernel counts from the fork plus the warm interpreter's own start, so that it compares
    with a cold run's (the harness's compute check)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reason = ""
    meter = CpuMeter()
    cpu = 0.0
    with log_path.open("wb") as logf:
        warm = await _start_warm(run_dir, env, limits, command or train_argv(""), sandbox, logf.fileno())
        proc: trio.Process | warmstart.WarmRun
        if warm is not None:
            proc, cgroup = warm
            offset = proc.startup_cpu_s
        else:
            launch = launch_of(run_dir, env, limits, command, sandbox)
            argv, child_env, preexec, cgroup = launch.argv, launch.env, launch.preexec, launch.cgroup
            offset = 0.0
            try:
                proc = await trio.lowlevel.open_process(
                    argv, cwd=str(run_dir), env=child_env, stdin=subprocess.DEVNULL,
                    stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
            except OSError as e:
                if cgroup is not None:
                    cgroup.remove()
                return RunOutcome(False, None, f"cannot start {argv[0]}: {e.strerror or e}", 0.0, None, log_path)
        try:
            with trio.move_on_after(limits.time_limit_s) as scope:
                while proc.poll() is None:
                    members = members_of(proc.pid)
                    cpu = meter.sample(members) + offset
                    if limits.cpu_limit_s is not None and cpu > limits.cpu_limit_s:
                        reason = f"CPU limit exceeded ({cpu:.1f} CPU-s, over {limits.cpu_limit_s:.1f})"
                        await _end(proc)
                        break
                    if rss_mb(proc.pid, members, warm_shell(proc.pid, members) if warm else frozenset()) > limits.memory_limit_mb:
                        reason = f"memory limit exceeded ({limits.memory_limit_mb} MB)"
                        await _end(proc)
                        break
                    with trio.move_on_after(RSS_POLL_S):
                        await proc.wait()
            if scope.cancelled_caught:
                reason = f"time limit exceeded ({limits.time_limit_s:.0f} s)"
                await _end(proc)
            with trio.CancelScope(shield=True):
                await proc.wait()
            if warm is not None and not reason and proc.cpu_s is not None:
                # the kernel's count to the end, where the samples every RSS_POLL_S miss the last part
                # (most of a short run's): what a cold run's would be, had it been counted so
                cpu = max(cpu, proc.cpu_s + offset)
        finally:
            # Cancelled (Ctrl+C, daemon stop) or any error: never leave the child running.
            if proc.returncode is None:
                await _end(proc)
            kill_tree(proc.pid)  # stray grandchildren of the group
            if cgroup is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(cgroup.remove)
            if sandbox is not None and (sandbox.kind == "namespaces" or warm is not None):
                (run_dir / ".nsbox.json").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (run_dir / ".nsbox-root").rmdir()
    wall = time.monotonic() - started
    was_warm = warm is not None
    out = _tail(log_path)
    if reason:
        return RunOutcome(False, None, reason, wall, proc.returncode, log_path, cpu_seconds=cpu, warm=was_warm)
    if proc.returncode != 0:
        return RunOutcome(False, None, _failure_reason(proc.returncode, out), wall, proc.returncode, log_path,
                          cpu_seconds=cpu, warm=was_warm)
    try:
        summary = parse_summary(out)
    except SummaryError as e:
        return RunOutcome(False, None, str(e), wall, proc.returncode, log_path, cpu_seconds=cpu, warm=was_warm)
    return RunOutcome(True, summary, "ok", wall, proc.returncode, log_path, cpu_seconds=cpu, warm=was_warm)
