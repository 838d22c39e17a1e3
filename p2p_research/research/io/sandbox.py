"""The sandbox every training run goes through: train.py is code that agents and peers wrote.

Built on bubblewrap (`bwrap`), without root:
- its own network namespace (only a loopback of its own: the daemon's ports, its control socket and
  every other address are unreachable), PID namespace (it cannot see or signal the daemon; when the
  run ends every process in it dies), IPC and UTS namespaces, no new privileges;
- a filesystem of read-only system directories (`/usr`, the `/lib`s, a few files of `/etc`), the
  interpreter(s) the run needs, the data and the harness cache read-only, a fresh `/proc`, a minimal
  `/dev`, and one writable scratch directory: a tmpfs of `scratch_mb` that holds the run's files and
  is its working directory (plus a small `/tmp`). The node home (`identity.key`, `ledger.sqlite`,
  `control.sock`, `repo/`), the user's home and everything else on the machine are simply absent;
- a clean environment (no API keys or tokens reach it);
- no capabilities, no further user namespaces; process, file-size and open-file limits (on top of the
  runner's memory and time limits). The kernel applies no process limit (RLIMIT_NPROC) to root, so a
  node running as root puts each run in a pids cgroup of its own instead, where it can make one.

`detect()` checks once per process that a sandbox really starts (a real `bwrap ... true`), so a
machine whose kernel forbids user namespaces reports why instead of failing every run. Without a
sandbox, a node falls back to the `constants` trust policy for peers' changes and says so at start
and in `status`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from p2p_research.errors import P2PResearchError

WORKDIR = "/run/p2p-work"          # the run's scratch directory inside the sandbox
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group", "localtime",
             "alternatives", "hosts", "host.conf", "gai.conf", "ssl/openssl.cnf")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GPU_DEVICES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "dri", "nvidia-caps")
ENV_PASS = ("LANG", "LANGUAGE", "TZ", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ENV_PASS_PREFIXES = ("LC_", "OPENBLAS_", "PYTORCH_", "TORCH_", "NCCL_")
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
PROBE_TIMEOUT_S = 20.0


class SandboxError(P2PResearchError, RuntimeError):
    pass


@dataclass(frozen=True)
class SandboxInfo:
    """What this machine offers: `kind` is "bwrap" or "none"; `reason` says why there is none."""

    kind: str
    reason: str = ""
    version: str = ""

    @property
    def available(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        return f"{self.kind} {self.version}".strip() if self.available else f"none ({self.reason})"


@dataclass(frozen=True)
class SandboxSpec:
    """One run's sandbox: what it sees and what it may use."""

    run_dir: Path                      # the run's files (train.py, prepare.py, ...): copied into the scratch tmpfs
    read_only: tuple[Path, ...] = ()   # interpreters, data, caches, the target's environment
    read_write: tuple[Path, ...] = ()  # only for the harness's own data preparation (never peer code)
    scratch_mb: int = 1024
    tmp_mb: int = 256
    max_processes: int = 2048
    max_open_files: int = 4096
    gpu: bool = False
    kind: str = "bwrap"                # bwrap | namespaces (research/io/nsbox.py)
    # a run of this interpreter on a script starts as a fork of a warm one (research/io/warmbox.py: torch
    # imported once), its sandbox made as the namespaces backend makes it; else as `kind` starts it
    warm: bool = False
    # read-only paths that also appear under the run's HOME (WORKDIR) at the place they have under the
    # user's: a harness that finds its data through `~` (autoresearch's ~/.cache/autoresearch) finds it
    home_views: tuple[tuple[Path, str], ...] = ()
    # files inside the read-only binds the run must not read (autoresearch's validation shard, for
    # code that may not go on its own word): covered by an unreadable empty file, wherever they appear
    masked: tuple[Path, ...] = ()


def home_views(paths: tuple[Path, ...], home: Path | None = None) -> tuple[tuple[Path, str], ...]:
    """Each of `paths` under the user's home, with where it appears under the sandbox's HOME."""
    home = (home or Path.home()).resolve()
    return tuple((p, f"{WORKDIR}/{p.relative_to(home)}") for p in paths if p != home and p.is_relative_to(home))


def _mask_points(spec: SandboxSpec) -> list[str]:
    """Where each masked file appears in the sandbox: its own path, and its place in a home view."""
    out: list[str] = []
    for m in spec.masked:
        if not m.is_file():
            continue
        out.append(str(m))
        for src, dst in spec.home_views:
            if m.is_relative_to(src):
                out.append(f"{dst}/{m.relative_to(src)}")
    return out


def _bwrap() -> str | None:
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=4)
def detect(mode: str = "auto") -> SandboxInfo:
    """The sandbox this node can use. mode: auto (bubblewrap, else namespaces) | bwrap | namespaces | off."""
    if mode == "off":
        return SandboxInfo("none", "turned off (sandbox.mode = off)")
    if not sys.platform.startswith("linux"):
        return SandboxInfo("none", f"no sandbox on {sys.platform} (it needs Linux namespaces)")
    if mode == "namespaces":
        return _detect_namespaces()
    info = _detect_bwrap()
    if info.available or mode == "bwrap":
        return info
    fallback = _detect_namespaces()
    if fallback.available:
        return fallback
    return SandboxInfo("none", f"{info.reason}; {fallback.reason}")


def _probe(spec: SandboxSpec) -> str | None:
    """Start a real sandbox of `spec` running /bin/true; None when it works, else why not."""
    try:
        r = subprocess.run(wrap(["/bin/true"], spec), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                           env=clean_env({}), preexec_fn=functools.partial(apply_limits, spec))
    except (OSError, subprocess.SubprocessError) as e:
        return f"does not start: {e}"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1][:200]
    return None


def _detect_namespaces() -> SandboxInfo:
    if shutil.which("unshare") is None:
        return SandboxInfo("none", "unshare (util-linux) is not installed")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        why = _probe(SandboxSpec(run_dir=Path(tmp), kind="namespaces"))
    if why is not None:
        return SandboxInfo("none", f"namespaces cannot make a sandbox here: {why}")
    return SandboxInfo("namespaces", version="unshare + pivot_root")


def _detect_bwrap() -> SandboxInfo:
    exe = _bwrap()
    if exe is None:
        return SandboxInfo("none", "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` "
                                   "(`make install` does it where it can)")
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S).stdout.split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = ""
    why = _probe(SandboxSpec(run_dir=Path("/nonexistent")))
    if why is not None:
        return SandboxInfo("none", f"bwrap cannot make a sandbox here: {why} (are unprivileged user namespaces disabled?)")
    return SandboxInfo("bwrap", version=version)


def _is_root() -> bool:
    return os.geteuid() == 0


def _system_layout() -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """What both backends show of the system, read-only: (directories, symlinks as (target, path) for
    a merged /usr, the /etc files)."""
    dirs: list[str] = []
    links: list[tuple[str, str]] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            links.append((os.readlink(p), d))
        elif p.is_dir():
            dirs.append(d)
    etc = [str(Path("/etc") / n) for n in ETC_FILES if (Path("/etc") / n).exists()]
    return dirs, links, etc


def _gpu_devices() -> list[str]:
    dev = Path("/dev")
    return [str(p) for p in sorted(dev.glob("nvidia[0-9]*")) + [dev / n for n in GPU_DEVICES] if p.exists()]


def _system_binds() -> list[str]:
    dirs, links, etc = _system_layout()
    args: list[str] = []
    for target, path in links:
        args += ["--symlink", target, path]
    for d in dirs:
        args += ["--ro-bind", d, d]
    for f in etc:
        args += ["--ro-bind", f, f]
    return args


OWN_MOUNTS = (Path("/tmp"), Path("/dev"), Path("/proc"), Path("/run"))  # the sandbox's own, not 0555 parents


def _parents(binds: list[Path]) -> list[Path]:
    """The directories leading to the binds, shallowest first, minus / and the sandbox's own mounts."""
    out = {a for p in binds for a in p.parents if a != Path("/") and not _under_system(a) and a not in OWN_MOUNTS}
    return sorted(out, key=lambda a: len(a.parts))


def _under_system(p: Path) -> bool:
    """Already visible (read-only) through the system directories."""
    return any(p == Path(d) or p.is_relative_to(d) for d in SYSTEM_DIRS)


def _gpu_binds() -> list[str]:
    args: list[str] = []
    for p in _gpu_devices():
        args += ["--dev-bind", p, p]
    if Path("/sys").is_dir():
        args += ["--ro-bind", "/sys", "/sys"]
    return args


def _run_files(spec: SandboxSpec) -> list[Path]:
    if not spec.run_dir.is_dir():
        return []
    return [f for f in sorted(spec.run_dir.iterdir()) if f.is_file() and not f.is_symlink()
            and f.name != "run.log" and not f.name.startswith(".nsbox")]


def wrap(argv: list[str], spec: SandboxSpec) -> list[str]:
    """The command line that runs `argv` in WORKDIR inside the sandbox of `spec`."""
    if spec.kind == "namespaces":
        return wrap_namespaces(argv, spec)
    return wrap_bwrap(argv, spec)


def namespaces_doc(spec: SandboxSpec) -> dict:
    """What `nsbox.build` makes for `spec`: the same filesystem bwrap would (the cold namespaces backend
    reads it from a file, the warm start from its request). Makes the empty folder the root is built on."""
    binds = [p for p in (*spec.read_only, *spec.read_write) if not _under_system(p)]
    parents = [str(p) for p in _parents(binds)]
    system, symlinks, etc = _system_layout()
    devices = _gpu_devices() if spec.gpu else []
    root = spec.run_dir / ".nsbox-root"
    root.mkdir(parents=True, exist_ok=True)
    return {"root": str(root), "system": system, "symlinks": [list(link) for link in symlinks], "etc": etc,
            "dirs": parents, "read_only": [str(p) for p in spec.read_only if not _under_system(p)],
            "read_write": [str(p) for p in spec.read_write], "devices": devices, "sys": spec.gpu,
            "tmp_bytes": spec.tmp_mb * 2**20, "scratch_bytes": spec.scratch_mb * 2**20, "workdir": WORKDIR,
            "files": [[str(f), f.name] for f in _run_files(spec)],
            "views": [[str(src), dst] for src, dst in spec.home_views], "masked": _mask_points(spec)}


def wrap_namespaces(argv: list[str], spec: SandboxSpec) -> list[str]:
    """unshare's new user, mount, PID, network, IPC and UTS namespaces, and `nsbox.py` inside them to
    build the same filesystem bwrap would (its spec goes into a file in the run directory)."""
    import json

    spec_path = spec.run_dir / ".nsbox.json"
    spec_path.write_text(json.dumps(namespaces_doc(spec)))
    unshare = shutil.which("unshare") or "unshare"
    return [unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork", "--net", "--ipc", "--uts",
            "--kill-child", "--", sys.executable, "-I", str(Path(__file__).with_name("nsbox.py")), str(spec_path),
            "--", *argv]


def wrap_bwrap(argv: list[str], spec: SandboxSpec) -> list[str]:
    """The bwrap command line that runs `argv` in WORKDIR inside the sandbox of `spec`.

    The run's files are bound read-only into the scratch tmpfs one by one, so the
    run cannot change its own train.py or prepare.py, and can write only new files, within
    `scratch_mb`."""
    exe = _bwrap() or "bwrap"
    args = [exe, "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
            "--as-pid-1"]
    # --as-pid-1: the command is PID 1 of its namespace, so when it ends the kernel kills whatever it
    # left (bwrap's own reaper outlived a setsid()'d child). No --die-with-parent: its death signal
    # follows the *thread* that started bwrap, and trio starts processes from a worker thread that
    # exits when idle (measured: every run longer than ~10 s was SIGKILLed). The runner kills bwrap's
    # process group instead, and the namespace with it.
    args += _system_binds()
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(spec.tmp_mb * 2**20), "--tmpfs", "/tmp"]
    binds = [p for p in (*spec.read_only, *spec.read_write) if not _under_system(p)]
    # the directories leading to a bind: traversable, not writable (bwrap would make them 0700 and
    # writable; without capabilities even the sandbox's root obeys 0555)
    parents = _parents(binds)
    for d in parents:
        args += ["--perms", "0555", "--dir", str(d)]
    for p in spec.read_only:
        if not _under_system(p):
            args += ["--ro-bind-try", str(p), str(p)]
    for p in spec.read_write:
        args += ["--bind", str(p), str(p)]
    args += ["--perms", "1777", "--size", str(spec.scratch_mb * 2**20), "--tmpfs", WORKDIR]
    for f in _run_files(spec):
        args += ["--ro-bind", str(f), f"{WORKDIR}/{f.name}"]
    for src, dst in spec.home_views:
        args += ["--ro-bind-try", str(src), dst]
    for point in _mask_points(spec):
        args += ["--ro-bind", "/dev/null", point]
    if spec.gpu:
        args += _gpu_binds()
    args += ["--chdir", WORKDIR, "--"]  # the environment is bwrap's own: `clean_env`
    return args + argv


def limit_values(spec: SandboxSpec) -> list[tuple[int, int]]:
    """(resource, value) of each limit a run of `spec` gets. RLIMIT_NPROC counts this user's processes
    (it binds an unprivileged node; the kernel ignores it for root, hence the pids cgroup)."""
    import resource

    nproc = spec.max_processes + _processes_of(os.getuid())
    return [(resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_NOFILE, spec.max_open_files),
            (resource.RLIMIT_FSIZE, spec.scratch_mb * 2**20), (resource.RLIMIT_CORE, 0)]


def apply_limits(spec: SandboxSpec, cgroup: Path | None = None) -> None:
    """preexec_fn: the limits the sandboxed processes inherit (`limit_values`), in `cgroup` when given."""
    import resource

    if cgroup is not None:
        try:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            pass
    for limit, value in limit_values(spec):
        try:
            soft, hard = resource.getrlimit(limit)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


class PidsCgroup:
    """A pids cgroup for one run, where the node may make one (root, a writable pids hierarchy, v1 or
    v2): the process limit for a root node. `path` is None where it cannot be made."""

    def __init__(self, max_processes: int) -> None:
        self.path: Path | None = None
        base = _pids_base()
        if base is None:
            return
        path = base / f"run-{os.getpid()}-{time.monotonic_ns()}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_processes))
            self.path = path
        except OSError:
            self.remove(path)

    def remove(self, path: Path | None = None) -> None:
        path = path or self.path
        if path is None:
            return
        for _ in range(50):  # the run's processes may still be exiting
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


@functools.lru_cache(maxsize=1)
def _pids_base() -> Path | None:
    if not _is_root():
        return None
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if not (root / "cgroup.procs").exists():
            continue
        base = root / "p2p-research"
        try:
            base.mkdir(exist_ok=True)
            if not (base / "pids.max").exists() and (root / "cgroup.subtree_control").exists():
                (root / "cgroup.subtree_control").write_text("+pids")  # cgroup v2
                (base / "cgroup.subtree_control").write_text("+pids")
            probe = base / "probe"
            probe.mkdir(exist_ok=True)
            ok = (probe / "pids.max").exists()
            probe.rmdir()
            if ok:
                return base
        except OSError:
            continue
    return None


def process_limit() -> str:
    """How a run's process count is limited on this node (for `status`)."""
    if not _is_root():
        return "RLIMIT_NPROC"
    return "pids cgroup" if _pids_base() is not None else "none (root without a writable pids cgroup)"


def _processes_of(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += 1
            except OSError:
                continue
    return n


def clean_env(run_env: dict[str, str], home: str = WORKDIR) -> dict[str, str]:
    """The run's environment: the harness's variables, locale and thread settings; nothing else
    (no API keys, tokens or the daemon's variables)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp",
           "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for k, v in os.environ.items():
        if (k in ENV_PASS or k.startswith(ENV_PASS_PREFIXES)) and not any(w in k for w in SECRET_WORDS):
            env[k] = v
    env.update(run_env)
    return env


def interpreter_paths(executable: str) -> list[Path]:
    """What an interpreter needs to run, read-only: its virtualenv, the base installation the venv
    points to, and the directories its site-packages' .pth files add (an editable install, a venv
    that borrows another's packages)."""
    exe = Path(executable)
    if not exe.is_absolute():
        found = shutil.which(executable)
        if found is None:
            return []
        exe = Path(found)
    out: list[Path] = [exe.parent]
    venv = exe.parent.parent
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file():
        out.append(venv)
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                out.append(Path(value.strip()).parent)
        for pth in venv.glob("lib/python*/site-packages/*.pth"):
            for line in pth.read_text(errors="replace").splitlines():
                line = line.strip()
                if line.startswith("/") and Path(line).is_dir():
                    out.append(Path(line))
    real = exe.resolve()
    if real.name.startswith("python"):  # an interpreter: its installation (lib/pythonX.Y beside bin/)
        out.append(real.parent.parent)
    else:  # any other tool (uv): the file itself, not the folder it sits in (~/.local/bin)
        out[0] = exe
        out.append(real)
    return out


def safe_paths(paths: list[Path], hidden: list[Path]) -> tuple[Path, ...]:
    """`paths` minus any that is, or contains, a hidden one (the node home, the user's home): a
    .pth line pointing at `/` must not expose the node's key."""
    out: list[Path] = []
    for p in paths:
        try:
            p = p.resolve()
        except OSError:
            continue
        if p == Path("/") or any(h == p or h.is_relative_to(p) for h in hidden):
            continue
        if p not in out and p.exists():
            out.append(p)
    return tuple(out)
