"""Start many node processes on one machine without paying for their imports each time.

A daemon's start is mostly imports: 1.6-1.9 CPU-s on a 2-core machine, py-libp2p's alone about 0.8
(docs/testing.md). Starting 35 of them for `simulate`, or the hundred-odd a test suite starts, spends
minutes of CPU on the same work. A fork server imports the node once and forks a child for each
`python -m p2p_research ARGS` asked of it. Each child is a real OS process of its own (its own pid,
session, sockets, signals and exit status) that runs the CLI exactly as `python -m p2p_research` would:
`runpy` sets `__main__`, argv, the working folder, the environment and the standard streams first.

A child's command line (`ps`, `pgrep -f`, /proc/PID/cmdline) is set to the one it runs, with the
setproctitle library, so that a user and the tools that look for a node's processes see
`python -m p2p_research node start --home ...` and not the server's.

What a forked child does not get afresh, and why that is acceptable:
- the interpreter's start-up flags and hash seed are the server's (`-P`, no site customisation by
  PYTHONPATH at start-up: the node reads its environment when it runs, and its runs are exec'd
  processes that read theirs);
- modules are already imported, so nothing the node reads from the environment at import time may
  differ per child: the project reads its environment when it runs (tests/test_forkserver.py checks the
  project's modules the server preloads). Libraries may not: typer reads TYPER_USE_RICH and
  TERMINAL_WIDTH at import, so a child sees the server's values of those.

The server is single-threaded and forks only from its select loop, never while a lock is held. It
runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP (a `timeout` or a Ctrl+C aimed at
the client's group must not take the exit statuses with it); it ends when its client closes the pipe it
was started with. The children keep running, as children of a `subprocess.Popen` with
`start_new_session` do when their parent ends. Should the server end first anyway, a child still
counts as running, by its pidfd, until it ends (`ForkedProcess`).

A forked child ends as an exec'd interpreter does: the CLI's SystemExit, exception or Ctrl+C propagates
up through the server's frames to the interpreter, so module teardown runs (files flushed, sqlite
connections closed) and the status, traceback or signal are the interpreter's own.

Its socket lies in a folder of this user's alone (`tempfile.mkdtemp`, mode 0700): only this user can
ask it for a child, and this user can start the CLI anyway.

Protocol (one UNIX stream connection per child): the client sends one JSON line and the child's
stdin, stdout and stderr as SCM_RIGHTS descriptors; the server answers `{"pid": N}` and, when the child
has ended, `{"exit": status}` (`os.waitpid`'s status), then closes the connection.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import setproctitle

from p2p_research.errors import P2PResearchError

#: what a child of the server has imported before it is forked: the CLI and the daemon
PRELOAD = ("p2p_research.cli", "p2p_research.daemon.node")
MAX_REQUEST = 1 << 20  # one request's JSON (argv, environment, folder)


class ForkServerError(P2PResearchError, RuntimeError):
    """The fork server could not start or stopped answering."""


# ---------------------------------------------------------------------------------------------------
# the server


def _child(req: dict[str, Any], fds: list[int], inherited: list[socket.socket | int]) -> None:
    """Become `python -m p2p_research *req["argv"]` in this forked process. It never returns: it raises
    SystemExit (or whatever the CLI raised) up through the server's frames to the interpreter, which
    ends the child as it ends any process, module teardown included (files flushed and closed, sqlite
    connections closed), with the status, traceback or signal it would give."""
    signal.set_wakeup_fd(-1)
    for obj in inherited:
        if isinstance(obj, int):
            os.close(obj)
        else:
            obj.close()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if req.get("new_session"):
        os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    # the standard streams as Python makes them for a process whose streams are pipes or files
    # (unbuffered where the child's environment asks for it, as the interpreter would at start-up)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(_binary_out(1, unbuffered), write_through=unbuffered, line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(_binary_out(2, unbuffered), errors="backslashreplace", line_buffering=True,
                                  write_through=unbuffered)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    _fresh_consoles()
    import runpy

    sys.argv = ["-m", *req["argv"]]
    # what `ps`, `pgrep -f` and /proc/PID/cmdline show: the command it runs, not the server's
    setproctitle.setproctitle(" ".join([sys.executable, "-m", "p2p_research", *req["argv"]]))
    runpy.run_module("p2p_research", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def _binary_out(fd: int, unbuffered: bool):
    """The binary layer of an output stream as the interpreter makes it: the raw file where
    PYTHONUNBUFFERED asks for unbuffered output (-u), else a buffered writer over it."""
    raw = io.FileIO(fd, "w", closefd=False)
    return raw if unbuffered else io.BufferedWriter(raw)


def _fresh_consoles() -> None:
    """Make the CLI's module-level rich consoles again, as a fresh import would in this environment:
    rich reads COLUMNS, NO_COLOR, TERM and the stream's terminal state when a console is made."""
    from rich.console import Console

    for name, module in list(sys.modules.items()):
        if not name.startswith("p2p_research.") or module is None:
            continue
        for value in list(vars(module).values()):
            if type(value) is Console:
                Console.__init__(value, stderr=value.stderr, soft_wrap=value.soft_wrap)


def serve(path: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """The server's loop: import `preload`, listen on `path`, fork a child per request."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    setproctitle.getproctitle()  # its set-up (moving the environment to make room) once, not in every child
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # a Ctrl+C, a `timeout` or a hang-up reaches the client, which stops its children; the server ends
    # when the client closes its pipe, never before the children it holds the exit statuses of
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            ready, _, _ = select.select([listener, wake_r, sys.stdin], [], [], 1.0)
        except InterruptedError:
            ready = []
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            return  # the client has gone
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
        _reap(children)
        if listener in ready:
            try:
                conn, _ = listener.accept()
            except OSError:  # out of descriptors, or a client gone: it retries or has given up
                time.sleep(0.1)
                continue
            _start(conn, children, [listener, wake_r, wake_w])


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": status}).encode() + b"\n")
            conn.close()


def _refuse(conn: socket.socket, fds: list[int], why: str | None) -> None:
    """Fork nothing for this request: close its descriptors and its connection, saying why if anyone
    is still listening (`why` None: the client has gone)."""
    for fd in fds:
        os.close(fd)
    if why is not None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"error": why}).encode() + b"\n")
    conn.close()


def _start(conn: socket.socket, children: dict[int, socket.socket], own: list[Any]) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(10)
        msg, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
        buf = msg
        while not buf.endswith(b"\n"):
            more = conn.recv(MAX_REQUEST)
            if not more or len(buf) > MAX_REQUEST:
                raise ValueError("incomplete request")
            buf += more
        req = json.loads(buf)
        if len(fds) != 3:
            raise ValueError(f"expected 3 descriptors, got {len(fds)}")
    except (OSError, ValueError) as e:
        _refuse(conn, fds, str(e))
        return
    conn.setblocking(False)  # a peek, not a wait: with a timeout set, recv would wait for data
    try:
        if conn.recv(1, socket.MSG_PEEK) == b"":
            raise ConnectionError("the client gave up waiting")  # it may have started it another way
    except BlockingIOError:
        pass  # connected, and nothing more to read: as it should be
    except OSError:
        _refuse(conn, fds, None)
        return
    conn.setblocking(True)
    try:
        pid = os.fork()
    except OSError as e:  # no memory or no pids left: refused, and the server goes on
        _refuse(conn, fds, f"fork: {e}")
        return
    if pid == 0:
        _child(req, fds, [*own, conn, *children.values(), sys.stdin.fileno()])
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


# ---------------------------------------------------------------------------------------------------
# the client


def _close_all(*things: socket.socket | IO | None) -> None:
    for thing in things:
        if thing is not None:
            thing.close()


#: the status of a child whose server ended before it did: it has ended, and how is not known
LOST_STATUS = 255


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether `fd` is readable within `timeout` (poll: a Ray worker's descriptors pass 1024)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))


class ForkedProcess:
    """A child of the fork server, used as a `subprocess.Popen` is: pid, poll, wait, signals, streams.

    Its exit status comes over the connection the server answered on, since the client is not its
    parent. A pidfd (opened at once, before the pid could be reused) keeps the child's identity should
    the server end first: then the child counts as running until its pidfd says it has ended, and
    signals go through the pidfd, never to a pid reused since."""

    def __init__(self, pid: int, conn: socket.socket, args: list[str], stdout: IO | None,
                 stderr: IO | None) -> None:
        self.pid = pid
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.stdin: IO | None = None
        self.returncode: int | None = None
        self._conn: socket.socket | None = conn
        self._buf = b""
        self._lock = threading.Lock()  # one reader of the connection (a cluster agent polls and waits at once)
        self._fd_lock = threading.Lock()  # the pidfd, used by a signal while another thread waits
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # ended and reaped already: its status is on the connection
            self._pidfd = None

    def _read(self, timeout: float | None) -> None:
        if self.returncode is not None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return
        try:
            self._read_locked(deadline)
        finally:
            self._lock.release()

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _read_locked(self, deadline: float | None) -> None:
        while self.returncode is None and self._conn is not None and b"\n" not in self._buf:
            if not _readable(self._conn.fileno(), self._left(deadline)):
                return
            more = self._conn.recv(4096)
            if not more:  # the server has ended; the child may still run
                self._conn.close()
                self._conn = None
                break
            self._buf += more
        if self.returncode is None and b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            self.returncode = os.waitstatus_to_exitcode(json.loads(line)["exit"])
        elif self.returncode is None and self._conn is None:
            if self._pidfd is not None and not _readable(self._pidfd, self._left(deadline)):
                return  # still running, as far as its pidfd says
            self.returncode = LOST_STATUS
        self._release()

    def _release(self) -> None:
        if self.returncode is None:
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._fd_lock:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.poll()
        with self._fd_lock:
            if self.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:
                    os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Close stdin, read stdout and stderr to their ends (pipes made by `run`), then wait."""
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        pipes = [self.stdout, self.stderr]
        open_fds = {s.fileno(): i for i, s in enumerate(pipes) if s is not None}
        chunks: list[list[bytes]] = [[], []]
        while open_fds:
            p = select.poll()
            for fd in open_fds:
                p.register(fd, select.POLLIN)
            left = self._left(deadline)
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            for fd, _ in p.poll(None if left is None else int(left * 1000) + 1):
                stream: Any = pipes[open_fds[fd]]
                data = (stream.buffer if isinstance(stream, io.TextIOWrapper) else stream).read1(65536)
                if data:
                    chunks[open_fds[fd]].append(data)
                else:
                    pipes[open_fds.pop(fd)].close()  # type: ignore[union-attr]
        self.wait(self._left(deadline))
        out, err = (None if p is None else b"".join(c).decode(errors="replace") if isinstance(p, io.TextIOWrapper)
                    else b"".join(c) for c, p in zip(chunks, pipes, strict=True))
        return out, err


class ForkServer:
    """A running fork server that this process started (see the module's docstring)."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, env: dict[str, str] | None = None,
                 wait: bool = True) -> None:
        """Start the server; with `wait`, return once it has imported `preload` (seconds on a loaded
        machine), else at once: `ready()` says when it can fork, and a caller that must not wait (a
        cluster agent answering a call under a timeout) execs its first daemons instead."""
        self._dir = tempfile.mkdtemp(prefix="p2p-forkserver-")
        self.path = os.path.join(self._dir, "sock")
        self._proc = subprocess.Popen([sys.executable, "-P", "-m", "p2p_research.sim.forkserver", self.path,
                                       *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                      start_new_session=True)  # a signal to the client's group spares it
        self._ready = False
        self._lock = threading.Lock()
        if wait and not self.ready(None):
            self.close()
            raise ForkServerError(f"the fork server did not start (exit {self._proc.poll()})")

    def ready(self, timeout: float | None = 0) -> bool:
        """Whether the server has imported what it preloads and listens (waiting up to `timeout`, None:
        until it is or has ended)."""
        with self._lock:
            if self._ready or self._proc.poll() is not None:
                return self._ready and self._proc.poll() is None
            assert self._proc.stdout is not None
            if _readable(self._proc.stdout.fileno(), timeout):
                self._ready = self._proc.stdout.readline().strip() == b"ready"
            return self._ready

    def alive(self) -> bool:
        """Ready and still running: a child asked of it now is forked at once."""
        return self.ready() and self._proc.poll() is None

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
              stdin: Any = None, stdout: Any = None, stderr: Any = None,
              start_new_session: bool = False, text: bool = False) -> ForkedProcess:
        """`python -m p2p_research *argv` as a child of the server. stdin/stdout/stderr are as Popen's:
        None (this process's), subprocess.PIPE, subprocess.DEVNULL, a file object or a descriptor."""
        if not self.alive():
            raise ForkServerError(f"the fork server is not ready for {argv[:2]}")
        mine: list[int] = []  # descriptors made here for the child, closed once sent
        ours: list[IO | None] = [None, None, None]
        sent: list[int] = []
        try:
            for i, spec in enumerate((stdin, stdout, stderr)):
                if spec is None:
                    sent.append(i)
                elif spec == subprocess.DEVNULL:
                    fd = os.open(os.devnull, os.O_RDWR)
                    mine.append(fd)
                    sent.append(fd)
                elif spec == subprocess.PIPE:
                    r, w = os.pipe()
                    child, own = (r, w) if i == 0 else (w, r)
                    mine.append(child)
                    sent.append(child)
                    ours[i] = open(own, ("w" if i == 0 else "r") + ("" if text else "b"))  # noqa: SIM115 - the caller's
                elif isinstance(spec, int):
                    sent.append(spec)
                else:
                    sent.append(spec.fileno())
            req = {"argv": [str(a) for a in argv], "env": dict(os.environ if env is None else env),
                   "cwd": str(cwd if cwd is not None else os.getcwd()), "new_session": start_new_session}
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.path)
                data = json.dumps(req).encode() + b"\n"
                socket.send_fds(conn, [data[:1]], sent)
                conn.sendall(data[1:])
                conn.settimeout(30)
                buf = b""
                while b"\n" not in buf:
                    more = conn.recv(4096)
                    if not more:
                        raise ForkServerError("the fork server closed the connection")
                    buf += more
                conn.settimeout(None)
            except (OSError, ForkServerError) as e:
                _close_all(conn, *ours)
                raise ForkServerError(f"the fork server did not start {argv[:2]}: {e}") from e
            line, _, rest = buf.partition(b"\n")
            answer = json.loads(line)
            if "pid" not in answer:
                _close_all(conn, *ours)
                raise ForkServerError(f"the fork server refused {argv[:2]}: {answer.get('error')}")
        finally:
            for fd in mine:
                os.close(fd)
        proc = ForkedProcess(answer["pid"], conn, list(argv), ours[1], ours[2])
        proc._buf = rest
        if ours[0] is not None:
            proc.stdin = ours[0]  # type: ignore[assignment]
        return proc

    def run(self, argv: list[str], *, timeout: float | None = None, env: dict[str, str] | None = None,
            cwd: str | os.PathLike | None = None, text: bool = True) -> subprocess.CompletedProcess:
        """`subprocess.run(python -m p2p_research *argv, capture_output=True)`, through the server."""
        proc = self.spawn(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, start_new_session=True, text=text)
        try:
            out, err = proc.communicate(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode or 0, out, err)

    def close(self) -> None:
        if not self._ready and self._proc.poll() is None:
            self._proc.kill()  # still importing: it has no child yet
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]) or PRELOAD)
    with contextlib.suppress(OSError):
        Path(sys.argv[1]).unlink()
