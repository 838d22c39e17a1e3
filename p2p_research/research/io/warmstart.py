"""The node's side of the warm start (research/io/warmbox.py): find or start the warm interpreter for a
run's command, and start the run as a fork of it.

One warm interpreter serves every node of this user on the machine that runs the same interpreter with
the same import-time environment (thread and library settings read when torch loads): its socket is
`<folder>/<key>.sock`, the folder this user's alone (0700, checked). A node that finds none starts one
(detached; it ends after `IDLE_S` without a run) and waits for its imports, up to `START_WAIT_S` (a cold
run would spend that time importing). Before it listens, the warm interpreter starts a real sandbox
(`-c pass` in an empty run folder); where that fails it ends, its log's last line says why, and the
node's runs start cold (the node's log says so once).

`P2P_WARM_START=off` turns it off for a process and the nodes it starts (A/B runs); `sandbox.warm_start
= false` for a node.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import trio

from p2p_research.research.io.sandbox import (
    WORKDIR,
    SandboxSpec,
    interpreter_paths,
    namespaces_doc,
    safe_paths,
)

log = logging.getLogger("p2p_research.warmstart")

WARM_ENV = "P2P_WARM_START"        # off | 0: every run starts cold
FOLDER_ENV = "P2P_WARM_FOLDER"     # where the sockets are (default: $XDG_RUNTIME_DIR or /tmp, per user)
IDLE_S = 300.0                     # a warm interpreter with no run for this long ends
PRELOAD = ("torch",)
# what torch.optim and torch.compile import at their first call (TorchDynamo: 1.5 CPU-s here, as much as
# torch itself): preloaded for a run whose train.py uses them (`preload_for`)
COMPILER_PRELOAD = ("torch._dynamo",)
_COMPILER_NAMES = {"optim", "compile", "_dynamo"}
_MENTIONS_COMPILER = re.compile(rb"optim|compile|_dynamo")
RETRY_S = 600.0                    # a warm interpreter that did not come up is tried again after this long
START_WAIT_S = 60.0                # how long a run waits for a warm interpreter's imports before it starts cold
REPLY_TIMEOUT_S = 10.0
ENV_PAD_BYTES = 16384              # room in the warm interpreter's environment for a run's (warmbox._retitle)
ARG_PAD = 2048                     # empty arguments: room in its command line for a run's (warmbox._retitle)
ENV_PAD_VAR = "P2P_WARM_PAD"
WARMBOX = Path(__file__).with_name("warmbox.py")
LOST_STATUS = 255                  # a run whose warm interpreter ended before it: it ended, how is unknown
# read when torch and its libraries load (libgomp reads OMP_* once): part of a warm interpreter's key
IMPORT_ENV = ("LANG", "LANGUAGE", "TZ")
IMPORT_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH_", "PYTORCH_", "CUDA_", "NVIDIA_",
                       "NCCL_", "LC_")
_PYTHON = re.compile(r"python[0-9.]*")
_WHAT = {"train": "runs", "evaluate": "the harness's evaluators"}


def preload_for(script: Path) -> tuple[str, ...]:
    """What a run's warm interpreter imports beyond PRELOAD: TorchDynamo where the run's script uses
    torch.optim or torch.compile (autoresearch's train.py uses both; the default target uses neither, on
    purpose). Read from the run's own script, so it is a guess a run's code controls: either way it costs
    time only (a run that needs Dynamo and lacks it imports it itself), and it chooses between two warm
    interpreters at most."""
    try:
        with open(script, "rb") as f:
            source = f.read(1 << 20)
        if not _MENTIONS_COMPILER.search(source):  # most scripts: no parse (up to 2 CPU-s for 1 MiB)
            return ()
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _COMPILER_NAMES and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            uses = True
        elif isinstance(node, ast.ImportFrom):
            uses = (node.module == "torch" and any(a.name in _COMPILER_NAMES for a in node.names)) or \
                (node.module or "").split(".")[:2] in (["torch", "optim"], ["torch", "_dynamo"])
        elif isinstance(node, ast.Import):
            uses = any(a.name.split(".")[:2] in (["torch", "optim"], ["torch", "_dynamo"]) for a in node.names)
        else:
            continue
        if uses:
            return COMPILER_PRELOAD
    return ()


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "").strip().lower() not in ("0", "off", "no", "false")


def eligible(argv: list[str]) -> bool:
    """A command the warm start can run: a Python interpreter on a script (or `-c CODE`), no options."""
    if len(argv) < 2 or not _PYTHON.fullmatch(Path(argv[0]).name):
        return False
    return (argv[1] == "-c" and len(argv) >= 3) or not argv[1].startswith("-")


def import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items()) if k in IMPORT_ENV or k.startswith(IMPORT_ENV_PREFIXES)}


def folder() -> Path | None:
    """This user's folder of warm interpreters' sockets; None where it is not safely this user's."""
    base = os.environ.get(FOLDER_ENV) or ""
    if not base:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        base = (f"{runtime}/p2p-research-warm" if runtime and os.access(runtime, os.W_OK)
                else f"{tempfile.gettempdir()}/p2p-research-warm-{os.getuid()}")
    path = Path(base)
    if len(os.fsencode(path)) > 70:  # its sockets' paths (a 20-character key, a pid) must fit in 107 bytes
        _warn_once(f"runs start cold: the folder for warm interpreters' sockets has too long a path ({path})")
        return None
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=False)
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        _warn_once(f"runs start cold: {path} is not a folder of this user's alone")
        return None
    return path


def hidden() -> list[Path]:
    """Folders no sandbox may show (a run that could reach a warm interpreter's socket could ask it for
    a sandbox of its own choosing; the interpreter also refuses a peer in another user namespace)."""
    where = folder()
    return [where.resolve()] if where is not None else []


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    if line not in _WARNED:
        _WARNED.add(line)
        log.warning("%s", line)


def key_of(interpreter: str, env: dict[str, str], preload: tuple[str, ...] = PRELOAD, role: str = "train") -> str:
    """Which warm interpreter serves a run: the interpreter (path, size, time), the warm start's own
    code, what it preloads, the import-time environment, and the role (training runs and the harness's
    evaluators never fork from one process: a fork can read what its process kept of other requests)."""
    h = hashlib.sha256()
    st = os.stat(interpreter)
    h.update(f"{interpreter}\0{st.st_size}\0{st.st_mtime_ns}\0{','.join(preload)}\0{role}\0".encode())
    h.update(_context().encode())
    for packages in Path(interpreter).parent.parent.glob("lib/python*/site-packages"):
        h.update(f"{packages}\0{packages.stat().st_mtime_ns}\0".encode())  # a package installed or upgraded
    for name in ("warmbox.py", "nsbox.py"):
        h.update(Path(__file__).with_name(name).read_bytes())
    h.update(json.dumps(import_env(env)).encode())
    return h.hexdigest()[:20]


def _context() -> str:
    """What a warm interpreter takes from the process that starts it and a run must get from its own
    node: the cgroup (a service's limits, and its stop), the mount and user namespaces (what paths
    mean), the CPUs it may use (thread pools size themselves by them when torch loads)."""
    parts = []
    for path in ("/proc/self/cgroup", "/proc/self/ns/mnt", "/proc/self/ns/user"):
        try:
            parts.append(os.readlink(path) if "/ns/" in path else Path(path).read_text())
        except OSError:
            parts.append("?")
    parts.append(",".join(map(str, sorted(os.sched_getaffinity(0)))))
    return "\0".join(parts)


class WarmRun:
    """A run forked by a warm interpreter: what the runner uses of a trio.Process (pid, returncode,
    poll, wait). `pid` is the run's watchdog (W), a child of the warm interpreter in a session of its
    own; the run's processes are its descendants. `startup_cpu_s` is the warm interpreter's own start."""

    def __init__(self, conn: socket.socket, pid: int, startup_cpu_s: float, buf: bytes = b"") -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.startup_cpu_s = startup_cpu_s
        # the run's CPU from the fork to its end, its whole tree, as the kernel counted it (the warm
        # interpreter's wait4 of the watchdog); None until it ended, or where it was killed before
        self.cpu_s: float | None = None
        self.stdin: IO[bytes] | None = None   # set by a caller that passed pipes (the harness's evaluator)
        self.stdout: IO[bytes] | None = None
        self._conn: socket.socket | None = conn
        self._buf = buf
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None
        self._parse()

    def _parse(self) -> None:
        while b"\n" in self._buf and self.returncode is None:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("exit"), int):
                if isinstance(doc.get("cpu_s"), (int, float)):
                    self.cpu_s = float(doc["cpu_s"])
                self._set(doc["exit"])

    def _set(self, code: int) -> None:
        self.returncode = code
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _ended(self) -> bool:
        return self._pidfd is None or _readable(self._pidfd)  # a pidfd is readable once its process ended

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._conn is not None:
            try:
                data = self._conn.recv(4096)
            except BlockingIOError:
                return None
            except OSError:
                data = b""
            if data:
                self._buf += data
                self._parse()
                return self.returncode
            self._conn.close()  # the warm interpreter is gone: the run counts as running until it ends
            self._conn = None
        if self._ended():
            self._set(LOST_STATUS)
        return self.returncode

    async def wait(self) -> int:
        while self.poll() is None:
            if self._conn is not None:
                await trio.lowlevel.wait_readable(self._conn)
            elif self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
        assert self.returncode is not None
        return self.returncode

    def __del__(self) -> None:
        self._close()


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


@dataclasses.dataclass
class _Server:
    path: Path
    role: str = "train"
    preload: tuple[str, ...] = PRELOAD
    usable: bool | None = None      # None: not checked yet in this process
    failed_at: float = -1e9         # when it last did not come up: tried again after RETRY_S

    @property
    def lock(self) -> Path:
        return self.path.with_suffix(".lock")


class WarmStarter:
    """The warm interpreters this process uses, by key."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, idle_s: float = IDLE_S,
                 start_wait_s: float = START_WAIT_S) -> None:
        self.preload = preload
        self.idle_s = idle_s
        self.start_wait_s = start_wait_s
        self._servers: dict[str, _Server] = {}

    def _server(self, interpreter: str, env: dict[str, str], role: str = "train",
                extra: tuple[str, ...] = ()) -> _Server | None:
        where = folder()
        if where is None:
            return None
        preload = (*self.preload, *(m for m in extra if m not in self.preload))
        key = key_of(interpreter, env, preload, role)
        return self._servers.setdefault(key, _Server(where / f"{key}.sock", role, preload))

    async def _ready(self, server: _Server, interpreter: str, env: dict[str, str]) -> bool:
        """Whether the warm interpreter of `server` is up and a sandbox starts from it here; starts it
        when no process is starting or running it, and waits for its imports (a cold run would spend
        the same time importing) up to `start_wait_s`."""
        if server.usable is False and time.monotonic() - server.failed_at > RETRY_S:
            server.usable = None  # a start that failed or was slow once: try again now and then
        if server.usable is not None:
            return server.usable
        with trio.move_on_after(self.start_wait_s):
            started = False
            while True:
                conn = _connect(server.path)
                if conn is not None:  # up, and a sandbox started from it (it checks before it listens)
                    conn.close()
                    if server.usable is None:
                        log.info("%s start from a warm interpreter (%s)", _WHAT[server.role], server.path.name)
                    server.usable = True
                    return True
                if not _held(server.lock):  # nobody is starting it, or its start failed
                    if started:
                        break
                    started = True
                    await trio.to_thread.run_sync(self._start, interpreter, server, env)
                    continue
                await trio.sleep(0.05)
        tail = _tail(server.path.with_suffix(".log"))
        log.warning("%s start cold: the warm interpreter did not start%s; trying again in %.0f s",
                    _WHAT[server.role], f" ({tail})" if tail else "", RETRY_S)
        server.usable, server.failed_at = False, time.monotonic()
        return False

    async def spawn(self, argv: list[str], env: dict[str, str], spec: SandboxSpec, rlimits: list[tuple[int, int]],
                    cgroup: Path | None, fds: list[int], role: str = "train",
                    extra: tuple[str, ...] = ()) -> WarmRun | None:
        """Start `argv` (interpreter, script, arguments) in the sandbox of `spec` as a fork of a warm
        interpreter of `role` that has also imported `extra` (`preload_for`); None where there is none
        here (the caller starts it cold). `fds`: the run's log (its stdout and stderr), or its stdin,
        stdout and stderr."""
        interpreter = _interpreter(argv[0])
        server = self._server(interpreter, env, role, extra) if interpreter else None
        if server is None or not await self._ready(server, interpreter, env):
            return None
        conn = _connect(server.path)
        if conn is None:  # it ended (idle, or replaced) since: once more, from the start
            server.usable = None
            if not await self._ready(server, interpreter, env) or (conn := _connect(server.path)) is None:
                return None
        doc = {"argv": argv[1:], "executable": argv[0], "env": env, "spec": namespaces_doc(spec),
               "rlimits": [[int(r), int(v)] for r, v in rlimits], "cgroup": str(cgroup) if cgroup else None,
               "owner": os.getpid(), "env_first": ["P2P_RUN_OWNER", "P2P_RUN_DIR"]}
        return await _request(conn, doc, fds)

    async def ready(self, interpreter: str, env: dict[str, str], role: str = "train",
                    extra: tuple[str, ...] = ()) -> bool:
        """Start the warm interpreter for runs of `interpreter` in `env` (a run's environment) if none
        is up, and wait until it is and a sandbox starts from it (a test, before the run it checks)."""
        found = _interpreter(interpreter)
        server = self._server(found, env, role, extra) if found and enabled() else None
        return server is not None and await self._ready(server, found, env)

    def _start(self, interpreter: str, server: _Server, env: dict[str, str]) -> None:
        """Start a warm interpreter for `server` (it detaches at once, and takes the socket when ready).
        It holds the lock from here to its end: a held lock means one is starting or running."""
        fd = os.open(server.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for _ in range(10):  # another process's check (_held) holds it for a moment
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                return  # another process started it
            zenv = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": "/tmp",
                    **import_env(env), ENV_PAD_VAR: "x" * ENV_PAD_BYTES}
            # the sandbox it checks before it listens: an empty run folder, the interpreter's paths
            probe = Path(tempfile.mkdtemp(prefix="p2p-warm-probe-"))
            doc = namespaces_doc(SandboxSpec(probe, read_only=safe_paths(interpreter_paths(interpreter), [Path.home()]),
                                             kind="namespaces", max_processes=64))
            (probe / "probe.json").write_text(json.dumps(doc))
            with open(server.path.with_suffix(".log"), "wb") as out:
                p = subprocess.Popen(
                    [interpreter, "-I", str(WARMBOX), str(server.path), str(self.idle_s), ",".join(server.preload),
                     str(fd), str(probe / "probe.json"), *[""] * ARG_PAD],
                    env=zenv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, pass_fds=(fd,), cwd="/")
                p.wait(timeout=30)  # the parent it detaches from: a moment
            log.info("starting a warm interpreter for %s of %s (%s)", _WHAT[server.role], interpreter, server.path.name)
        except (OSError, subprocess.SubprocessError) as e:
            log.info("cannot start a warm interpreter: %s", e)
        finally:
            os.close(fd)  # the warm interpreter keeps the lock

def _held(lock: Path) -> bool:
    """Whether a warm interpreter (or the process starting one) holds `lock`."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _interpreter(name: str) -> str | None:
    found = name if os.path.isabs(name) else shutil.which(name)
    return found if found and os.path.exists(found) else None


def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    return s


async def _request(conn: socket.socket, doc: dict, fds: list[int]) -> WarmRun | None:
    try:
        socket.send_fds(conn, [json.dumps(doc).encode() + b"\n"], fds)
    except (OSError, ValueError) as e:
        conn.close()
        log.debug("the warm interpreter took no request: %s", e)
        return None
    conn.setblocking(False)
    buf = b""
    with trio.move_on_after(REPLY_TIMEOUT_S):
        while b"\n" not in buf:
            await trio.lowlevel.wait_readable(conn)
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            buf += data
    line, _, rest = buf.partition(b"\n")
    try:
        reply = json.loads(line) if line else {}
    except ValueError:
        reply = {}
    if not isinstance(reply, dict) or not isinstance(reply.get("pid"), int):
        conn.close()  # a run forked after this sees the close instead of its go, and starts nothing
        log.info("the warm interpreter did not start the run: %s", reply.get("error", "no answer")
                 if isinstance(reply, dict) else "a bad answer")
        return None
    run = WarmRun(conn, reply["pid"], float(reply.get("startup_cpu_s") or 0.0), rest)
    try:
        conn.send(b"g")  # the pid is ours now: its watchdog may start the run
    except OSError:
        pass  # it ended already: its status comes as for any run
    return run


def shutdown(interpreter: str | None = None) -> list[int]:
    """Ask this user's warm interpreters (of `interpreter`, when given) to end once their runs are
    done; returns their pids. For a test session's end, or a user who wants them gone now."""
    where = folder()
    ended: list[int] = []
    if where is None:
        return ended
    for info in where.glob("*.sock.info"):
        try:
            doc = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if interpreter is not None and doc.get("interpreter") != interpreter:
            continue
        conn = _connect(info.with_suffix(""))
        if conn is None:
            continue
        with conn:
            conn.settimeout(5)
            try:
                socket.send_fds(conn, [b'{"quit": true}\n'], [])
                conn.recv(4096)
                ended.append(int(doc.get("pid", 0)))
            except OSError:
                continue
    return ended


STARTER = WarmStarter()
