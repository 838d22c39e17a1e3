"""What runs on each machine of the cluster: the host agent (a Ray actor's body), and the clean-up of
run folders that a dead driver left (sim/cluster/__init__.py says how the pieces fit)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from p2p_research.errors import P2PResearchError
from p2p_research.sim import probe
from p2p_research.sim.forkserver import ForkServer, ForkServerError
from p2p_research.sim.launcher import NodeProc, free_port, torch_gate

SAMPLE_EVERY_S = 2.0
HARVEST_FILES = ("sim-stdout.log", "sim-stderr.log")
AGENT_FILE = "agent.pid"   # in a run folder: the agent's process, alive while the run is
PIDS_FILE = "node.pids"    # in a run folder: every daemon it started (each leads a process group)
LOG_TAIL_BYTES = 4 << 20
# The first start of a forked daemon waits this long at most for the machine's fork server, well inside
# the driver's 60-s call timeout; later starts never wait (a daemon asked for before it is ready is
# exec'd), so a server that takes minutes beside a load delays one answer by this much, once.
AGENT_FORK_WAIT_S = 15.0


class ClusterError(P2PResearchError):
    """The cluster cannot run this simulation (Ray missing, no machine, a machine lost at the start)."""


def ray_module() -> Any:
    """Ray, or a one-line ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray on this machine and on every machine of the cluster: "
                           "pip install 'p2p-research[cluster]'") from None
    return ray


class HostAgent:
    """The nodes of one machine (a Ray actor's body; plain Python, so it is testable without Ray).

    Methods take and return plain data: node names, bytes, numbers. Several calls may run at once (the
    actor is threaded: a drain that takes seconds must not hold up the tick's snapshot)."""

    def __init__(self, run_id: str, root: str | None = None) -> None:
        base = private_base(Path(root or tempfile.gettempdir()) / f"p2p-research-cluster-{os.getuid()}")
        self.cleaned = clean_stale_runs(base)
        self.root = base / run_id
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        (self.root / AGENT_FILE).write_text(str(os.getpid()))
        self.nodes: dict[str, NodeProc] = {}
        self.env = dict(os.environ)
        self._sampled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._forks: ForkServer | None = None
        self._forks_failed = False
        self._waited = False  # the first fork start has waited (AGENT_FORK_WAIT_S) for the server

    def _fork_server(self) -> ForkServer | None:
        """This machine's fork server for its daemons (sim/forkserver.py), started with the first home
        installed that asks for it. A call must answer within the driver's timeout, and on a loaded
        machine the server's imports took over a minute: the first start waits AGENT_FORK_WAIT_S at most,
        and a daemon asked for before the server is ready is exec'd instead."""
        with self._lock:
            if self._forks is None and not self._forks_failed:
                try:
                    self._forks = ForkServer(env=self.env, wait=False)
                except (OSError, ForkServerError):
                    self._forks_failed = True  # every daemon of this machine is exec'd
            return self._forks

    def info(self) -> dict[str, Any]:
        from p2p_research import __version__

        ip = self.env.get("P2P_CLUSTER_IP") or _node_ip()
        return {"ip": ip, "hostname": socket.gethostname(), "cpus": os.cpu_count() or 1, "pid": os.getpid(),
                "python": sys.version.split()[0], "version": __version__, "root": str(self.root),
                "cleaned": self.cleaned}

    def now(self) -> float:
        return time.time()

    def ports(self, k: int, taken: list[int]) -> list[int]:
        """`k` ports free on this machine, none of `taken` (agents of one machine share its ports)."""
        busy = set(taken)
        return [free_port(busy) for _ in range(k)]

    def gate(self, slots: int) -> None:
        """Real training under this machine's limit of concurrent trainings (sim/torchgate)."""
        torch_gate(self.env, self.root / "train-slots", slots)

    def install(self, name: str, archive: bytes, fields: dict[str, Any]) -> str:
        """Unpack a home prepared on the driver and point its cache at this machine's."""
        from p2p_research.home import NodeHome

        home = self.root / "nodes" / name
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                tar.extractall(home, filter="data")
            else:  # the driver packed it; still, nothing outside the home
                if any(m.name.startswith("/") or ".." in Path(m.name).parts or m.issym() or m.islnk()
                       for m in tar.getmembers()):
                    raise ValueError(f"{name}: a home archive with a path outside the home")
                tar.extractall(home)
        h = NodeHome(home)
        cfg = h.load_config()
        cache = self.root / "cache"
        cache.mkdir(exist_ok=True)
        cfg.research.cache_dir = str(cache)
        h.write_config(cfg)
        with self._lock:
            self.nodes[name] = NodeProc(home=home, **fields)
        if self.nodes[name].spawn == "fork":
            self._fork_server()
        return str(home)

    def start(self, name: str) -> int:
        node = self.nodes[name]
        if node.spawn == "fork" and node.forks is None:
            node.forks = self._fork_server()
            if node.forks is not None and not self._waited:
                # once, bounded well inside the driver's call timeout: the daemons exec'd while the server
                # still imports would each pay its imports on the same cores
                self._waited = True
                node.forks.ready(AGENT_FORK_WAIT_S)
        node.start(self.env)
        self._sampled.pop(name, None)
        pid = node.current.pid if node.current else 0
        with open(self.root / PIDS_FILE, "a") as f:  # for clean_stale_runs, should this agent die unstopped
            f.write(f"{pid}\n")
        return pid

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every node's process as the driver's tick needs it: pid, exit code, ready, peer id, CPU, RSS."""
        out: dict[str, dict[str, Any]] = {}
        now = time.time()
        with self._lock:
            nodes = list(self.nodes.items())
        for name, n in nodes:
            c = n.current
            if n.proc is None or c is None:
                continue
            n.check_ready()
            rc = n.proc.poll()
            if rc is None and now - self._sampled.get(name, 0.0) >= SAMPLE_EVERY_S:
                self._sampled[name] = now
                n.sample()
            out[name] = {"pid": c.pid, "returncode": rc, "ready": c.ready_at is not None, "peer_id": c.peer_id,
                         "cpu_s": c.cpu_s, "peak_rss_mb": c.peak_rss_mb}
        return out

    def send_signal(self, name: str, sig: int) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def signal_group(self, name: str, sig: int) -> None:
        self.nodes[name].signal_group(sig)

    def wait(self, name: str, timeout: float | None) -> int | None:
        proc = self.nodes[name].proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def control(self, name: str, command: str, timeout: float) -> tuple[str, Any]:
        """("ok", data), or ("oserror" | "valueerror", message): exceptions cross Ray as plain data."""
        try:
            return "ok", self.nodes[name].control(command, timeout)
        except OSError as e:
            return "oserror", str(e)
        except ValueError as e:
            return "valueerror", str(e)

    def acked(self, name: str) -> list[tuple]:
        return self.nodes[name].acked()

    def statuses(self, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        return probe.final_statuses({n: self.nodes[n].home for n in names if n in self.nodes}, timeout=timeout)

    def stderr_tail(self, name: str, n: int) -> str:
        return self.nodes[name].stderr_tail(n)

    def tcp(self) -> list[tuple[str, int, str, str, int, int]]:
        """(node, pid, local, peer, bytes sent, bytes received) of every live node's established sockets."""
        live = {n.current.pid: name for name, n in self.nodes.items()
                if n.current is not None and n.running()}
        if not live:
            return []
        return [(live[pid], pid, local, peer, s, r)
                for (pid, local, peer), (s, r) in probe.tcp_bytes_by_socket(set(live)).items()]

    def harvest(self, name: str) -> dict[str, bytes]:
        """What the report reads of a stopped node: its ledger (a consistent copy, WAL included) and the
        tails of its logs."""
        home = self.nodes[name].home
        out: dict[str, bytes] = {}
        ledger = home / "ledger.sqlite"
        if ledger.exists():
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "ledger.sqlite"
                src, dst = sqlite3.connect(ledger, timeout=10), sqlite3.connect(copy)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                    src.close()
                out["ledger.sqlite"] = copy.read_bytes()
        for f in HARVEST_FILES:
            p = home / f
            if p.exists():
                with open(p, "rb") as fh:
                    fh.seek(max(0, p.stat().st_size - LOG_TAIL_BYTES))
                    out[f] = fh.read()
        return out

    def cleanup(self) -> None:
        """Kill whatever is left and remove this run's folder from the machine."""
        for n in self.nodes.values():
            n.signal_group(signal.SIGKILL)
        if self._forks is not None:
            self._forks.close()
        shutil.rmtree(self.root, ignore_errors=True)


def private_base(base: Path) -> Path:
    """The agents' folder on a machine, this user's alone (0700, not a link): a folder of a shared /tmp
    that another user made could hand this user's daemons a home (node.toml, code) of theirs."""
    base.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ClusterError(f"{base} is not a private folder of this user (owner {st.st_uid}, mode "
                           f"{oct(st.st_mode & 0o777)}): remove it")
    return base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_runs(base: Path) -> list[str]:
    """Remove the run folders of agents that died without stopping their nodes, killing what is left of
    those nodes (a driver killed outright takes its Ray actors with it, not the daemons they started, which
    run in sessions of their own). An agent that is still alive is another simulation's: left alone.
    Returns the run ids cleaned."""
    cleaned: list[str] = []
    if not base.is_dir():
        return cleaned
    for run in base.iterdir():
        try:
            agent = int((run / AGENT_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            agent = 0
        if agent and _alive(agent):
            continue
        try:
            if not agent and time.time() - run.stat().st_mtime < 60:
                continue  # an agent that has made its folder and not yet written its pid
        except OSError:
            continue  # another agent of this machine is cleaning it
        mine = f"{run / 'nodes'}/".encode()
        try:
            pids = [int(x) for x in (run / PIDS_FILE).read_text().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone already
            if mine in cmdline:  # a daemon of that run, not a pid reused since by another process
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        shutil.rmtree(run, ignore_errors=True)
        cleaned.append(run.name)
    return cleaned


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (the agent's own tests): the address a route out uses
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect(("192.0.2.1", 9))
                return s.getsockname()[0]
            except OSError:
                return "127.0.0.1"
