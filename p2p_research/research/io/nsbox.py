"""The sandbox from the kernel's namespaces directly, for machines without bubblewrap.

Run as `unshare --user --map-root-user --mount --pid --fork --net --ipc --uts --kill-child -- python -I
nsbox.py SPEC.json -- COMMAND...` (see `sandbox.wrap_namespaces`). Inside the new namespaces it builds
the same filesystem bubblewrap would: a tmpfs root holding read-only binds of the system directories,
the interpreter, the data and the cache, a fresh /proc, a minimal /dev, a sized /tmp and the sized
scratch directory with the run's files bound read-only; then pivot_root, the old root detached. It
drops every capability (bounding set, securebits so that uid 0 regains none on exec, no_new_privs)
and lets no process inside make another user namespace,
then stays PID 1 as a reaper, in a session of its own, while COMMAND runs as its child: when COMMAND ends, PID 1 exits and the
kernel kills whatever is left in the namespace.

Standalone on purpose: it runs under `python -I` with the standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
# statvfs flags -> the mount flags a remount inside a user namespace must keep (they are locked)
ST_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME,
            4096: MS_RELATIME}
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 24, 28, 38, 47
SECBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20  # noroot, no_setuid_fixup, keep_caps: all locked
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
DEV_FILES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(src.encode() if src else None, dst.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None), f"mount {dst}")


def _locked_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST_TO_MS.items() if f & st and ms != MS_RDONLY)


def bind(root: str, src: str, dst: str | None = None, read_only: bool = True, extra: int = 0) -> None:
    dst = root + (dst or src)
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "w").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _locked_flags(src) | extra)


def no_more_user_namespaces() -> None:
    """No process in this user namespace may make another (bwrap's --disable-userns): its limit of
    user namespaces is 0 (the limit is per user namespace, and its root may lower it)."""
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def loopback_up() -> None:
    """The network namespace's own loopback up, as bwrap brings it up (127.0.0.1 reaches only this
    sandbox): SIOCGIFFLAGS / SIOCSIFFLAGS on `lo` (CAP_NET_ADMIN in the new namespaces)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, ifreq))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def build(spec: dict) -> None:
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    for target, link in spec["symlinks"]:
        os.symlink(target, root + link)
    for src in spec["system"] + spec["etc"]:
        bind(root, src)
    # /tmp first: binds below it (a venv under /tmp) go on top of it, not under it
    os.makedirs(root + "/tmp", exist_ok=True)
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={spec['tmp_bytes']}")
    for d in spec["dirs"]:  # leading to binds: traversable, not writable (root here still may, with caps)
        os.makedirs(root + d, exist_ok=True)
        os.chmod(root + d, 0o555)
    for src in spec["read_only"]:
        if os.path.exists(src):
            bind(root, src)
    for src in spec["read_write"]:
        bind(root, src, read_only=False)
    # /dev: a few device files, /dev/shm, the fd links
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=1m")
    for name in DEV_FILES:
        if os.path.exists(f"/dev/{name}"):
            bind(root, f"/dev/{name}", read_only=False)
    for path in spec["devices"]:
        bind(root, path, read_only=False)
    os.makedirs(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if spec["sys"]:
        bind(root, "/sys")
    work = root + spec["workdir"]
    os.makedirs(work, exist_ok=True)
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={spec['scratch_bytes']}")
    for src, name in spec["files"]:
        bind(root, src, f"{spec['workdir']}/{name}")
    for src, dst in spec.get("views", []):  # read-only paths under the user's home, under the run's HOME
        if os.path.exists(src):
            bind(root, src, dst)
    for point in spec.get("masked", []):  # files the run must not read: /dev/null over each, on a
        if os.path.exists(root + point):    # nodev mount, so that opening it fails (as under bwrap)
            bind(root, "/dev/null", point, extra=MS_NODEV | MS_NOSUID | MS_NOEXEC)
    # pivot into the new root and let go of the old one
    os.chdir(root)
    os.mkdir(".old")
    _check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b".old"), "pivot_root")
    os.chdir("/")
    _check(libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    libc.sethostname(b"sandbox", 7)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_privileges() -> None:
    """No capability now or after exec (uid 0 in the namespace regains none), no new privileges."""
    _check(libc.prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT, 0, 0, 0), "securebits")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last
            break
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # clear all ambient capabilities
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    command = argv[argv.index("--") + 1:]
    try:
        os.setsid()  # a session of its own: kill(0, ...) from inside reaches nothing outside (bwrap's --new-session)
        loopback_up()
        no_more_user_namespaces()
        build(spec)
        drop_privileges()
        os.chdir(spec["workdir"])
    except OSError as e:
        print(f"sandbox: {e}", file=sys.stderr, flush=True)
        return 125
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        except OSError as e:
            print(f"sandbox: cannot run {command[0]}: {e.strerror}", file=sys.stderr, flush=True)
            os._exit(127)
    # PID 1: reap everything; leave (taking the namespace with us) when the command ends
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            return 0
        if done == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


if __name__ == "__main__":
    if not stat.S_ISREG(os.stat(__file__).st_mode):
        sys.exit(125)
    sys.exit(main(sys.argv))
