"""Reading running daemons from outside: /proc (CPU, RSS), TCP byte counters (`ss`), control sockets."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from p2p_research.daemon.control_call import call

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_rss(pid: int) -> tuple[float, float] | None:
    """(CPU seconds of the process and its waited-for children, peak RSS in MiB), or None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14..17.
    ticks = sum(int(x) for x in fields[11:15])
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return ticks / CLK_TCK, (int(m.group(1)) / 1024 if m else 0.0)


_USERS = re.compile(r'pid=(\d+)')
_SENT = re.compile(r"\bbytes_sent:(\d+)")
_RECV = re.compile(r"\bbytes_received:(\d+)")


def tcp_bytes_by_socket(pids: set[int]) -> dict[tuple[int, str, str], tuple[int, int]]:
    """{(pid, local, peer): (bytes_sent, bytes_received)} of established TCP sockets owned by `pids`.

    From `ss -tinpH` (the kernel's per-socket tcp_info counters); empty when `ss` is unavailable.
    """
    try:
        out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    res: dict[tuple[int, str, str], tuple[int, int]] = {}
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        head = lines[i]
        info = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith(("\t", " ")) else ""
        i += 2 if info else 1
        cols = head.split()
        if len(cols) < 4:
            continue
        owners = {int(p) for p in _USERS.findall(head)} & pids
        if not owners:
            continue
        s, r = _SENT.search(info), _RECV.search(info)
        local, peer = cols[2], cols[3]
        for pid in owners:
            res[(pid, local, peer)] = (int(s.group(1)) if s else 0, int(r.group(1)) if r else 0)
    return res


def control(home: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 3.0) -> Any:
    """One request on a daemon's control socket; raises OSError/ValueError when it does not answer."""
    resp = call(home / "control.sock", cmd, args, timeout)
    if resp is None:
        raise ValueError("the daemon closed the connection without an answer")
    if not resp.get("ok"):
        raise ValueError(resp.get("error", "refused"))
    return resp.get("data")


def swarm_stats(status: dict[str, Any]) -> dict[str, Any]:
    """The coordinator's counters in a status answer (`swarm_stats`, formerly a dict under `swarm`)."""
    for key in ("swarm_stats", "swarm"):
        v = status.get(key)
        if isinstance(v, dict):
            return v
    return {}


def final_statuses(homes: dict[str, Path], timeout: float = 4.0) -> dict[str, dict[str, Any]]:
    """Every node's status at once (threads: a daemon under load may take seconds to answer)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, Path]) -> tuple[str, dict[str, Any] | None]:
        try:
            return item[0], control(item[1], "status", timeout=timeout)
        except Exception:  # noqa: BLE001 - missing is reported as missing
            return item[0], None

    with ThreadPoolExecutor(max_workers=16) as ex:
        return {k: v for k, v in ex.map(one, homes.items()) if v is not None}
