"""The warm start for sandboxed runs: one interpreter imports torch once; each run is a fork of it
that makes its sandbox from inside (standalone: the target's interpreter runs it, standard library
and `nsbox.py` beside it only).

A cold run starts an interpreter inside bwrap (or unshare + nsbox.py) and imports torch: about 2.3
CPU-s on the machines this project is tested on, before the first step of training. Here a server
process (`python -I warmbox.py SOCKET IDLE_S PRELOAD ...`, started by `warmstart.py`) imports the
modules in PRELOAD once and listens on a UNIX socket. For each request it forks:

- **W**, the run's watchdog, a child of this server in a session of its own: it takes the run's log as
  its stdout and stderr, joins the run's pids cgroup, sets the run's limits, watches the node that asked
  (a pidfd: the node's death ends the run, as run_guard's watchdog does for a cold run), and makes new
  user, PID, network, IPC and UTS namespaces;
- **G**, PID 1 of the new PID namespace: a mount namespace of its own, no further user namespaces, the
  filesystem `nsbox.build` makes for a cold run of the same spec, no capabilities; it reaps, and when
  the run ends it exits and the kernel ends whatever the run left in the namespace;
- **R**, the run: the run's environment, arguments, working folder and streams, its command line and
  environment written over the server's in /proc (`ps`, `pgrep -f` and the node's leftover check see
  the run as they see a cold one), fresh random seeds; then the script runs as
  `python SCRIPT ARGS` would run it, and the interpreter ends the process as it ends any.

The server sends the client W's pid, then W's exit status. It ends after IDLE_S seconds without a
request or a run, or when its socket is removed or replaced. The CPU its own start cost (interpreter
and PRELOAD) is sent with each pid: the node adds it to what the kernel counts for the run from the
fork, so a warm run's CPU compares with a cold one's (the harness's compute check).

Nothing of a run's is trusted here: a request comes from a process of this user over a socket only
that user can reach, and the run is forked only after the request is read.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.machinery
import io
import json
import os
import random
import resource
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsbox  # noqa: E402  (beside this file; the sandbox does not see it)

del sys.path[0]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG = 1
MAX_REQUEST = 1 << 20
SETUP_FAILED = 125   # as nsbox.py: the sandbox could not be made
OWNER_GONE = 137     # the node that asked is gone: so is its run
QUIT = object()
GO_TIMEOUT_S = 30.0  # how long a forked run waits for its client's go

libc = ctypes.CDLL(None, use_errno=True)
_DEFAULT_HANDLERS = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                        signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ)}


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------------------------
# the server


def serve(path: str, idle_s: float, preload: list[str], cpu_before: float, lock_fd: int, probe: str = ""):
    """Import `preload`, check that a sandbox starts (`probe`: a spec file), listen on `path`, fork a run
    per request. Returns only in a forked run (R): what `main` then runs, outside this loop's frames.
    A failed check ends the process (SystemExit, its reason in the log) before it listens."""
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a module that cannot preload: the runs import it and say why
            print(f"warmbox: cannot preload {name}: {e}", flush=True)
    # what the preload made is never collected in a run: a collection there would walk it (and copy
    # every page it touches out of this process's memory), and so would the run's interpreter at its end
    # (about 0.35 CPU-s with torch loaded)
    gc.freeze()
    startup_cpu = cpu_before + _cpu_s()
    if probe:  # a real sandbox of an empty run folder, before any client sees this server
        req = _probe(probe, lock_fd)
        if req is not None:
            return req  # in the probe's run (R)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"  # a socket's path is at most 107 bytes
    listener.bind(staging)
    listener.listen(64)
    os.rename(staging, path)  # clients see a server only once it is ready
    mine = os.stat(path).st_ino
    with open(path + ".info", "w") as f:
        json.dump({"pid": os.getpid(), "interpreter": sys.executable, "preload": preload,
                   "startup_cpu_s": round(startup_cpu, 3)}, f)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        try:
            events = dict(poller.poll(1000))
        except InterruptedError:
            events = {}
        if wake_r in events:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        _reap(children)
        if children:
            last = time.monotonic()
        elif time.monotonic() - last > idle_s or not _still_mine(path, mine):
            _leave(path, mine)
            return None
        if listener.fileno() in events:
            try:
                conn, _ = listener.accept()
            except OSError:
                time.sleep(0.1)
                continue
            last = time.monotonic()
            run = _start(conn, children, [listener, wake_r, wake_w, lock_fd], startup_cpu)
            if run is QUIT:  # no more requests; the runs in flight still get their statuses
                _leave(path, mine)
                idle_s, mine = 0.0, -1
            elif run is not None:
                return run


def _probe(spec_file: str, lock_fd: int):
    """`-c pass` in a real sandbox of the spec in `spec_file` (the starter wrote it: an empty run folder,
    the interpreter's paths). Returns in the probe's run (R) only; raises SystemExit if it fails."""
    import shutil

    with open(spec_file) as f:
        spec = json.load(f)
    req = {"argv": ["-c", "pass"], "env": {"PATH": "/usr/bin:/bin"}, "spec": spec, "owner": os.getpid()}
    pid = os.fork()
    if pid == 0:
        os.close(lock_fd)
        return _watchdog(req, [os.dup(1)])
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(os.path.dirname(spec_file), ignore_errors=True)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"warmbox: a sandbox does not start from here (exit code {code}; the line above says why)")
    return None


def _still_mine(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _leave(path: str, inode: int) -> None:
    """Take this server's files away (its socket, and beside it .info, .log, .lock), unless they are
    another's now."""
    if _still_mine(path, inode):
        stem = path[:-len(".sock")] if path.endswith(".sock") else path
        for p in (path, path + ".info", stem + ".log", stem + ".lock"):
            try:
                os.unlink(p)
            except OSError:
                pass


def _reap(children: dict[int, socket.socket]) -> None:
    """Each ended watchdog's status and CPU: its own and all it reaped, so the run's whole tree (G reaps
    R and whatever R left; W reaps G), counted by the kernel to the end, not sampled."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            doc = {"exit": os.waitstatus_to_exitcode(status), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3)}
            try:
                conn.sendall(json.dumps(doc).encode() + b"\n")
            except OSError:
                pass
            conn.close()


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    msg, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    buf = msg
    while not buf.endswith(b"\n"):
        more = conn.recv(MAX_REQUEST)
        if not more or len(buf) > MAX_REQUEST:
            for fd in fds:
                os.close(fd)
            raise ValueError("incomplete request")
        buf += more
    req = json.loads(buf)
    if not isinstance(req, dict):
        raise ValueError("a request is an object")
    return req, fds


def _start(conn: socket.socket, children: dict[int, socket.socket], own: list, startup_cpu: float):
    try:
        req, fds = _read_request(conn)
    except (OSError, ValueError) as e:
        _answer(conn, {"error": str(e)[:300]})
        conn.close()
        return None
    if req.get("quit"):
        _answer(conn, {"bye": True})
        conn.close()
        return QUIT
    if not _same_user(conn):  # a process in another user namespace (a sandboxed run) asks for nothing here
        for fd in fds:
            os.close(fd)
        _answer(conn, {"error": "refused: not this user's, in this user namespace"})
        conn.close()
        return None
    if len(fds) not in (1, 3):
        for fd in fds:
            os.close(fd)
        _answer(conn, {"error": f"expected the run's log, or its stdin, stdout and stderr, got {len(fds)} descriptors"})
        conn.close()
        return None
    try:
        pid = os.fork()
    except OSError as e:
        for fd in fds:
            os.close(fd)
        _answer(conn, {"error": f"fork: {e}"})
        conn.close()
        return None
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for obj in [*own, *children.values()]:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()
        return _watchdog(req, fds, conn)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    _answer(conn, {"pid": pid, "startup_cpu_s": round(startup_cpu, 3)})
    return None


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer is this user in this user namespace (SO_PEERCRED; the kernel's word)."""
    import struct

    try:
        pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return uid == os.getuid() and pid > 0 and os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    except OSError:
        return False


def _answer(conn: socket.socket, doc: dict) -> None:
    try:
        conn.sendall(json.dumps(doc).encode() + b"\n")
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------
# W: the run's watchdog, outside its namespaces


def _watchdog(req: dict, fds: list[int], conn: socket.socket | None = None):
    """`fds`: the run's log (stdout and stderr; stdin is /dev/null), or its stdin, stdout and stderr.
    With `conn` (a client's request), nothing starts until the client says go, after it has the pid:
    a client that gave up (it may have started the run cold) leaves nothing running here."""
    for sig, handler in _DEFAULT_HANDLERS.items():
        signal.signal(sig, handler)
    if conn is not None:
        try:
            conn.settimeout(GO_TIMEOUT_S)
            go = conn.recv(1)
        except OSError:
            go = b""
        conn.close()
        if go != b"g":
            os._exit(OWNER_GONE)
    os.setsid()
    streams = [os.open(os.devnull, os.O_RDONLY), fds[0], fds[0]] if len(fds) == 1 else fds
    moved = [os.dup(fd) for fd in streams]  # above 2 first: a descriptor may be 0, 1 or 2 already
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
    os.closerange(3, max(1 << 16, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    try:
        owner_fd = os.pidfd_open(int(req["owner"]))
    except (OSError, KeyError, ValueError):
        os._exit(OWNER_GONE)
    uid, gid = os.getuid(), os.getgid()
    try:
        cgroup = req.get("cgroup")
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass
        for res, value in req.get("rlimits", []):
            try:
                hard = resource.getrlimit(int(res))[1]
                value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
                resource.setrlimit(int(res), (value, value))
            except (ValueError, OSError):
                pass
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
               "unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        alive_r, alive_w = os.pipe()  # W holds the write end while it lives: G reads EOF once W is gone
        g = os.fork()
    except OSError as e:
        print(f"sandbox: {e}", file=sys.stderr, flush=True)
        os._exit(SETUP_FAILED)
    if g == 0:
        os.close(owner_fd)
        os.close(alive_w)
        return _pid1(req, alive_r)
    os.close(alive_r)

    def end(signum, frame):  # told to stop: the run goes first (G is PID 1: its end ends the namespace)
        try:
            os.kill(g, signal.SIGKILL)
        except OSError:
            pass
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, end)
    g_fd = os.pidfd_open(g)
    poller = select.poll()
    poller.register(g_fd, select.POLLIN)
    poller.register(owner_fd, select.POLLIN)
    while True:
        done, status = os.waitpid(g, os.WNOHANG)
        if done:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
        events = dict(poller.poll(5000))
        if owner_fd in events:  # the node is gone: so is its run
            try:
                os.kill(g, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(g, 0)
            os._exit(OWNER_GONE)


# ---------------------------------------------------------------------------------------------------
# G: PID 1 of the run's namespaces


def _pid1(req: dict, alive_fd: int):
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # W killed (kill_tree): the namespace goes too
    poller = select.poll()
    poller.register(alive_fd, select.POLLIN)
    if poller.poll(0):  # W died before the line above: nothing would end this namespace
        os._exit(OWNER_GONE)
    os.close(alive_fd)
    spec = req["spec"]
    try:
        os.setsid()  # W's session is outside: kill(0, ...) from the run must reach nothing there
        _check(libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
        nsbox.loopback_up()
        nsbox.no_more_user_namespaces()
        nsbox.build(spec)
        nsbox.drop_privileges()
        os.chdir(spec["workdir"])
        r = os.fork()
    except (OSError, KeyError, TypeError) as e:
        print(f"sandbox: {e}", file=sys.stderr, flush=True)
        os._exit(SETUP_FAILED)
    if r == 0:
        return req
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if done == r:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


# ---------------------------------------------------------------------------------------------------
# R: the run


def _overwrite(start: int, end: int, data: bytes, last: bytes = b"\0") -> None:
    """Write `data` over [start, end) of this process's memory, NULs after it and `last` at the end."""
    size = end - start
    data = data[:size - 1]
    ctypes.memmove(start, data + b"\0" * (size - 1 - len(data)) + last, size)


def _retitle(argv: list[str], env: dict[str, str], first: tuple[str, ...]) -> None:
    """What /proc/PID/cmdline and /proc/PID/environ show: the run's, over the server's (the areas the
    kernel reads them from; the server started with room in both). The command line is one string of
    the arguments joined by spaces, as setproctitle writes it (the kernel shows it up to its first NUL
    when the area's last byte is not one); the environment is NUL-separated whole entries that fit,
    `first` first."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    _overwrite(arg_start, arg_end, " ".join(argv).encode("utf-8", "surrogateescape"), last=b" ")
    keys = [k for k in first if k in env] + [k for k in env if k not in first]
    out = b""
    for k in keys:
        item = f"{k}={env[k]}".encode("utf-8", "surrogateescape") + b"\0"
        if len(out) + len(item) >= env_end - env_start:
            break
        out += item
    _overwrite(env_start, env_end, out)


def _binary_out(fd: int, unbuffered: bool):
    """The binary layer of an output stream as the interpreter makes it: the raw file where
    PYTHONUNBUFFERED asks for unbuffered output (-u), else a buffered writer over it."""
    raw = io.FileIO(fd, "w", closefd=False)
    return raw if unbuffered else io.BufferedWriter(raw)


def run(req: dict) -> None:
    """Become `python ARGV...` in the sandbox G made: returns when the script does (main then returns,
    and the interpreter ends this process with the script's status)."""
    env = {str(k): str(v) for k, v in req.get("env", {}).items()}
    os.environ.clear()  # libc's environment no longer points into the area _retitle overwrites
    os.environ.update(env)
    argv = [str(a) for a in req["argv"]]
    _retitle([req.get("executable", sys.executable), *argv], env, tuple(req.get("env_first", ())))
    for name in ("nsbox", "warmbox", "__mp_main__"):
        sys.modules.pop(name, None)
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    # the encoding and error handler this interpreter chose at its start for the same kind of environment
    # (UTF-8 mode under the C locale: surrogateescape)
    out_enc, out_err = sys.__stdout__.encoding, sys.__stdout__.errors
    sys.stdout = io.TextIOWrapper(_binary_out(1, unbuffered), encoding=out_enc, errors=out_err,
                                  write_through=unbuffered, line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(_binary_out(2, unbuffered), encoding=out_enc, errors="backslashreplace",
                                  line_buffering=True, write_through=unbuffered)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    random.seed()  # a fresh interpreter's seeds, not the server's copy
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    # __main__ as `python SCRIPT ARGS` makes it: sys.argv as given, __file__ and the code's file name
    # absolute, a source loader, the script's folder first on sys.path
    main = type(sys)("__main__")
    main.__dict__.update(__builtins__=__builtins__, __spec__=None, __cached__=None, __package__=None)
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path.insert(0, "")
        main.__loader__ = importlib.machinery.BuiltinImporter
        code = compile(argv[1], "<string>", "exec")
    else:
        script = os.path.abspath(argv[0])
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(script))
        main.__file__ = script
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
        with io.open_code(script) as f:
            code = compile(f.read(), script, "exec")
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def main(argv: list[str]) -> int:
    """warmbox.py SOCKET IDLE_S PRELOAD LOCK_FD PROBE_SPEC [padding...]: detach, then serve until idle
    (holding LOCK_FD's lock, which the starter took: a held lock says a warm interpreter is starting or
    up)."""
    cpu_before = _cpu_s()  # the interpreter's start, before the fork that detaches (rusage starts anew)
    if os.fork() != 0:  # detach from the node that started it: it reaps only this short-lived parent
        os._exit(0)
    path, idle_s, preload, lock_fd = argv[1], float(argv[2]), [m for m in argv[3].split(",") if m], int(argv[4])
    req = serve(path, idle_s, preload, cpu_before, lock_fd, argv[5] if len(argv) > 5 else "")
    if req is None:
        return 0
    run(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
