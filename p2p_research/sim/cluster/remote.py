"""The driver's view of the cluster's machines and of the processes on them: what the launcher's
`Simulation` asks of a local process (sim/launcher.py), answered through each machine's agent."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from p2p_research.sim.cluster.agent import ClusterError, ray_module
from p2p_research.sim.launcher import Incarnation, NodeProc

CALL_TIMEOUT_S = 60.0
LOST_AFTER_TIMEOUTS = 3


@dataclass
class HostLink:
    """One machine of the cluster as the driver sees it: its agent, and the last snapshot of its nodes."""

    agent: Any
    node_id: str
    ip: str
    hostname: str
    cpus: int
    root: str
    clock_offset_s: float = 0.0
    clock_error_s: float = 0.0
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost: str = ""
    timeouts: int = 0   # calls in a row that timed out (LOST_AFTER_TIMEOUTS of them: the machine is lost)
    ended: bool = False  # its nodes were recorded as crashed, once it was lost

    def ask(self, method: str, *args: Any) -> Any:
        """Start a call on the machine's agent (a Ray object ref): several machines are asked at once,
        then each `answer` waited for."""
        return getattr(self.agent, method).remote(*args)

    def answer(self, ref: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        """The result of an `ask`. The machine is lost when its agent dies (Ray says so), its call fails
        otherwise, or after LOST_AFTER_TIMEOUTS timeouts in a row, not after one slow answer."""
        ray = ray_module()
        try:
            out = ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.timeouts += 1
            if self.timeouts >= LOST_AFTER_TIMEOUTS and not self.lost:
                self.lost = f"{self.timeouts} calls in a row timed out"
            raise
        except ray.exceptions.RayActorError as e:
            self.lost = self.lost or f"its agent died: {str(e).splitlines()[0][:200]}"
            raise
        self.timeouts = 0
        return out

    def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S, even_if_lost: bool = False) -> Any:
        """One call on the machine's agent, waited for. A machine known lost fails at once (a partitioned
        machine would cost every call its full timeout)."""
        if self.lost and not even_if_lost:
            raise ClusterError(f"machine {self.hostname} is lost: {self.lost}")
        return self.answer(self.ask(method, *args), timeout)


class RemoteProc:
    """The launcher's view of a process on another machine: what `subprocess.Popen` offers it."""

    def __init__(self, node: RemoteNode, pid: int) -> None:
        self.node = node
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            st = self.node.host.state.get(self.node.name) if self.node.host else None
            if st is not None and st["pid"] == self.pid and st["returncode"] is not None:
                self.returncode = st["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is not None:
            return self.returncode  # type: ignore[return-value]
        host = self.node.host
        try:
            rc = host.call("wait", self.node.name, timeout, timeout=(timeout or 0) + CALL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - no answer: gone with a lost machine, else not yet ended
            if not host.lost:
                raise subprocess.TimeoutExpired(f"{self.node.name} on {host.hostname}", timeout or 0) from None
            rc = -signal.SIGKILL
        if rc is None:
            raise subprocess.TimeoutExpired(f"{self.node.name} on {host.hostname}", timeout or 0)
        self.returncode = rc
        return rc

    def send_signal(self, sig: int) -> None:
        try:
            self.node.host.call("send_signal", self.node.name, int(sig))
        except Exception:  # noqa: BLE001 - a lost machine: nothing left to signal
            pass


@dataclass
class RemoteNode(NodeProc):
    """A node whose process runs on a cluster machine; `home` is its folder in the report, where the
    ledger and logs land after the stop."""

    host: HostLink | None = None
    start_error: str = ""  # why the last start call failed: the crash's info, where a stderr tail would be

    def _host(self) -> HostLink:
        assert self.host is not None, "a remote node is placed before it starts"
        return self.host

    def start(self, env: dict[str, str]) -> None:
        host = self._host()
        host.state.pop(self.name, None)
        self.start_error = ""
        try:
            pid = host.call("start", self.name)
        except Exception as e:  # noqa: BLE001 - a lost machine: the node cannot start, which the tick records as a crash
            self.start_error = f"the start call to {host.hostname} failed: {e!r}"
            self.proc = RemoteProc(self, 0)  # type: ignore[assignment]
            self.proc.returncode = -signal.SIGKILL  # type: ignore[union-attr]
            self.incarnations.append(Incarnation(started_at=time.time(), pid=0))
            return
        self.proc = RemoteProc(self, pid)  # type: ignore[assignment]
        self.incarnations.append(Incarnation(started_at=time.time(), pid=pid))

    def check_ready(self) -> bool:
        c = self.current
        if c is None or c.ready_at is not None:
            return c is not None and c.ready_at is not None
        st = self._host().state.get(self.name)
        if st is not None and st["pid"] == c.pid and st["ready"]:
            c.peer_id, c.ready_at = st["peer_id"], time.time()
        return c.ready_at is not None

    def sample(self) -> None:
        c = self.current
        st = self._host().state.get(self.name)
        if c is not None and st is not None and st["pid"] == c.pid:
            c.cpu_s, c.peak_rss_mb = st["cpu_s"], max(c.peak_rss_mb, st["peak_rss_mb"])

    def signal_group(self, sig: int) -> None:
        try:
            self._host().call("signal_group", self.name, int(sig))
        except Exception:  # noqa: BLE001 - a lost machine: nothing left to signal
            pass

    def stderr_tail(self, n: int = 1500) -> str:
        if self.start_error:
            return self.start_error[:n]
        try:
            return self._host().call("stderr_tail", self.name, n)
        except Exception as e:  # noqa: BLE001 - a lost machine
            return f"(no stderr: {e!r})"[:n]

    def control(self, command: str, timeout: float) -> Any:
        try:
            kind, data = self._host().call("control", self.name, command, timeout, timeout=timeout + CALL_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - no answer from the machine is no answer from the daemon
            raise OSError(f"{self.name} on {self._host().hostname}: {e}") from None
        if kind == "oserror":
            raise OSError(data)
        if kind == "valueerror":
            raise ValueError(data)
        return data

    def acked(self) -> list[tuple]:
        try:
            return [tuple(r) for r in self._host().call("acked", self.name)]
        except Exception as e:  # noqa: BLE001 - unknown: the churn check then counts nothing as lost
            self.crash_info = self.crash_info or f"acknowledged runs unknown before a kill: {e}"
            return []
