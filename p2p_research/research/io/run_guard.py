"""No run outlives the node that started it, even one killed with SIGKILL.

The runner kills a run's whole tree when it stops it (runner.kill_tree), but a node that is SIGKILLed,
or crashes in C, runs no cleanup: the sandbox (bwrap in a session of its own, the command as PID 1 of
its namespace) would go on training with parent PID 1. bwrap's `--die-with-parent` cannot be used: its
death signal follows the *thread* that started bwrap, and trio starts processes from worker threads
that exit when idle. So every run starts under a watchdog (`WATCHDOG`, a few lines of Python with no
imports beyond the standard library's `os`, `select`, `signal`, `sys`, `time`): it starts the command,
waits for it or for the node's death (a pidfd of each, no polling where the kernel has pidfds), and in
the second case kills the command's tree. A watchdog told to stop (SIGTERM, SIGHUP, SIGINT: a service
manager stopping the node's whole group, pkill) kills the command's tree before it exits. Its exit
status is the command's.

If the watchdog itself was killed with the node (a kill of both), `end_leftovers` finds the run's
processes at the next start: every run carries `P2P_RUN_OWNER=<pid>:<start time>` of the node process
and `P2P_RUN_DIR` in its environment; a process under this home's runs whose owner is not alive is
ended.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

OWNER_ENV = "P2P_RUN_OWNER"
RUN_DIR_ENV = "P2P_RUN_DIR"

WATCHDOG = r'''
import os, select, signal, sys, time
parent = os.getppid()
argv = sys.argv[1:]
try:
    parent_fd = os.pidfd_open(parent)
except (AttributeError, OSError):
    parent_fd = None
if os.getppid() != parent:
    sys.exit(137)
child = os.fork()
if child == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"cannot start {argv[0]}: {e.strerror or e}", file=sys.stderr, flush=True)
    os._exit(127)

def tree(root):
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    table[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    members, grew = {root}, True
    while grew:
        new = {p for p, pp in table.items() if pp in members and p not in members}
        members |= new
        grew = bool(new)
    return members

def finish(status):
    if os.WIFSIGNALED(status):  # the same death, so the runner reads the same status
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 1)

def end_run(signum, frame):
    # the watchdog itself is told to stop (a service manager's SIGTERM to the whole group, pkill, a
    # closed terminal): the run goes with it, instead of training on under init
    for p in sorted(tree(child)):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    os._exit(128 + signum)

for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, end_run)

try:
    child_fd = os.pidfd_open(child)
except (AttributeError, OSError):
    child_fd = None
while True:
    done, status = os.waitpid(child, os.WNOHANG)
    if done:
        finish(status)
    if os.getppid() != parent:  # the node is gone: so is its run
        for p in sorted(tree(child)):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        os.waitpid(child, 0)
        os._exit(137)
    fds = [fd for fd in (child_fd, parent_fd) if fd is not None]
    if len(fds) == 2:
        select.select(fds, [], [], 5.0)
    else:
        time.sleep(0.2)
'''


def guarded(argv: list[str]) -> list[str]:
    """`argv` under the watchdog (this interpreter, isolated and without site: it starts in ~20 ms)."""
    return [sys.executable, "-I", "-S", "-c", WATCHDOG, *argv]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def owner_mark(pid: int | None = None) -> str:
    """This process as the owner of the runs it starts: its pid and start time (a pid alone may be
    reused by an unrelated process after a reboot or a long while)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid) or '?'}"


def is_alive(mark: str) -> bool:
    """Whether the process an `owner_mark` names still runs (the same pid and start time)."""
    pid, _, started = mark.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == started


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (OWNER_ENV.encode(), RUN_DIR_ENV.encode()):
            out[key.decode()] = value.decode("utf-8", "replace")
    return out


def end_leftovers(runs: Path) -> list[int]:
    """SIGKILL every process of a run under `runs` whose node is not alive (an earlier life of this
    node that was killed with its watchdogs); returns their pids."""
    prefix = str(runs.resolve()) + os.sep
    ended = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        run_dir, owner = env.get(RUN_DIR_ENV, ""), env.get(OWNER_ENV, "")
        if run_dir.startswith(prefix) and owner and not is_alive(owner):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                ended.append(int(entry.name))
            except OSError:
                continue
    return ended
