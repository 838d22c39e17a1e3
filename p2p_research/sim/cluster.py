"""Real daemons on the machines of a Ray cluster: `simulate --cluster ADDRESS`.

One machine runs 35 daemons at most before CPU contention, not the protocol, sets the latencies, so the
discrete-event model (sim/des) had never been checked against more real daemons than that. Here the
launcher's `Simulation` runs unchanged on the driver (start plan, churn, drain and settle, stop, the
report's figures); only where its processes live changes. Each machine of the cluster gets one host
agent (a Ray actor pinned to that machine, taking no CPU of Ray's accounting), which keeps its nodes as
the launcher keeps local ones: the same `NodeProc` starting `p2p-research node start`, the same /proc and
`ss` sampling, the same control socket. The driver

- prepares every home here (identities first, so every peer id and address is known before anything
  starts), with each node listening on its machine's address and the cluster's machines exempt from the
  limits per address and /24 (`network.exempt_addresses`: 25 daemons share each address);
- ships each home to its machine, starts, signals and asks its processes through the agent, one
  batched snapshot per host and tick rather than a round trip per process;
- after the stop, copies every node's ledger (a consistent SQLite backup) and logs back into the
  report folder, so `sim/figures.collect` reads exactly what it reads after a local run.

Why Ray: it is what a Python user of a lab cluster already has running (`ray start --head` on one
machine, `ray start --address` on the others), it places an actor on each machine by node id and moves
bytes between them, and a one-machine cluster (`--cluster local`) starts in seconds for the tests. The
package is an optional extra (`pip install 'p2p-research[cluster]'`); a node's own install does not need it.

Clocks: the figures compare timestamps across ledgers. On one machine they share a clock; on a cluster
each machine's own (NTP) clock writes its ledgers, so the report gives every machine's offset from the
driver's clock, measured over Ray at the start (a round trip's half is its error bound).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.errors import P2PResearchError
from p2p_research.sim import probe
from p2p_research.sim.launcher import NodeProc, Simulation, free_port
from p2p_research.sim.options import SimOptions

CALL_TIMEOUT_S = 60.0
LOST_AFTER_TIMEOUTS = 3
SAMPLE_EVERY_S = 2.0
HARVEST_FILES = ("sim-stdout.log", "sim-stderr.log")
AGENT_FILE = "agent.pid"   # in a run folder: the agent's process, alive while the run is
PIDS_FILE = "node.pids"    # in a run folder: every daemon it started (each leads a process group)
LOG_TAIL_BYTES = 4 << 20


class ClusterError(P2PResearchError):
    """The cluster cannot run this simulation (Ray missing, no machine, a machine lost at the start)."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray on this machine and on every machine of the cluster: "
                           "pip install 'p2p-research[cluster]'") from None
    return ray


# --- on each machine ---------------------------------------------------------------------------------

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
        gate = self.root / "train-slots"
        gate.mkdir(exist_ok=True)
        here = Path(__file__).resolve().parent / "torchgate"
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), self.env.get("PYTHONPATH", "")]))
        self.env["P2P_SIM_TRAIN_SLOTS"] = f"{gate}:{slots}"

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
        return str(home)

    def start(self, name: str) -> int:
        node = self.nodes[name]
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
        shutil.rmtree(self.root, ignore_errors=True)


def private_base(base: Path) -> Path:
    """The agents' folder on a machine, this user's alone (0700, not a link): a folder of a shared /tmp
    that another user made could hand this user's daemons a home (node.toml, code) of theirs."""
    base.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(base)
    import stat

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


# --- on the driver -----------------------------------------------------------------------------------

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

    def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S, even_if_lost: bool = False) -> Any:
        """One call on the machine's agent. A machine known lost fails at once (a partitioned machine
        would cost every call its full timeout); it is lost when its agent dies (Ray says so) or after
        LOST_AFTER_TIMEOUTS timeouts in a row, not after one slow answer."""
        ray = _ray()
        if self.lost and not even_if_lost:
            raise ClusterError(f"machine {self.hostname} is lost: {self.lost}")
        try:
            out = ray.get(getattr(self.agent, method).remote(*args), timeout=timeout)
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

    def _host(self) -> HostLink:
        assert self.host is not None, "a remote node is placed before it starts"
        return self.host

    def start(self, env: dict[str, str]) -> None:
        from p2p_research.sim.launcher import Incarnation

        host = self._host()
        host.state.pop(self.name, None)
        try:
            pid = host.call("start", self.name)
        except Exception:  # noqa: BLE001 - a lost machine: the node cannot start, which the tick records as a crash
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


def connect(address: str) -> bool:
    """Join the Ray cluster at `address` ("local": start a one-machine cluster for this run, "auto": the
    one `ray start` made on this machine); True when this run started it (and so stops it)."""
    import logging

    ray = _ray()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address == "local":
        ray.init(address="local", **kw)  # a new one-machine cluster, never one RAY_ADDRESS names
        return True
    kw.pop("include_dashboard")
    _reachable(address)
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001 - Ray's own errors, as one line
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e}") from None
    return False


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, where a HOST:PORT address does not answer (Ray's own client retries
    for minutes, printing a warning every few seconds)."""
    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not port.isdigit():
        return  # "auto", "ray://...": Ray resolves those itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e.strerror or e}") from None


class ClusterSimulation(Simulation):
    """`Simulation` with its nodes spread over the machines of a Ray cluster (round robin; the solo
    node, when asked for, on the first machine with the fewest swarm nodes)."""

    def __init__(self, opts: SimOptions, address: str, log: Any = print) -> None:
        super().__init__(opts, log)
        self.address = address
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.hosts: list[HostLink] = []
        self.started_ray = False
        self.harvest_missing: list[str] = []

    # --- set-up -----------------------------------------------------------------------------------
    def open_hosts(self) -> None:
        ray = _ray()
        self.started_ray = connect(self.address)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = [n for n in ray.nodes() if n.get("Alive")]
        if not alive:
            raise ClusterError(f"the Ray cluster at {self.address} has no live machine")
        actor = ray.remote(num_cpus=0, max_concurrency=16)(HostAgent)
        agents = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                                name=f"p2p-research-{self.run_id}-{k}").remote(self.run_id)
                  for k, n in enumerate(alive)]
        try:
            infos = ray.get([a.info.remote() for a in agents], timeout=120)
        except Exception as e:  # noqa: BLE001 - Ray's own errors, as one line
            raise ClusterError(f"the host agents did not start: {e}") from None
        from p2p_research import __version__

        other = sorted({f"{i['hostname']}: {i['version']}" for i in infos if i["version"] != __version__})
        if other:
            raise ClusterError(f"this machine runs p2p-research {__version__}, others do not ({', '.join(other)}): "
                               "install one version everywhere")
        for a, n, info in zip(agents, alive, infos, strict=True):
            link = HostLink(agent=a, node_id=n["NodeID"], ip=info["ip"], hostname=info["hostname"],
                            cpus=info["cpus"], root=info["root"])
            link.clock_offset_s, link.clock_error_s = self._clock_offset(link)
            self.hosts.append(link)
            self.log(f"machine {info['hostname']} ({info['ip']}): {info['cpus']} cores, p2p-research "
                     f"{info['version']}, clock {link.clock_offset_s * 1000:+.1f} ms"
                     + (f"; removed {len(info['cleaned'])} run folder(s) left by a driver that died, and "
                        "stopped their daemons" if info["cleaned"] else ""))

    @staticmethod
    def _clock_offset(link: HostLink, tries: int = 5) -> tuple[float, float]:
        """(the machine's clock minus the driver's, half the round trip of the best of `tries`)."""
        best = (0.0, float("inf"))
        for _ in range(tries):
            t0 = time.time()
            remote = link.call("now")
            t1 = time.time()
            if (t1 - t0) / 2 < best[1]:
                best = (remote - (t0 + t1) / 2, (t1 - t0) / 2)
        return best

    def prepare(self) -> None:
        if not self.hosts:
            self.open_hosts()
        super().prepare()

    def place(self, specs: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
        load = {id(h): 0 for h in self.hosts}
        chosen: list[HostLink] = []
        swarm_k = 0
        for _name, role, _i in specs:
            if role == "solo":
                chosen.append(None)  # type: ignore[arg-type]  # placed after the swarm, where it is lightest
                continue
            h = self.hosts[swarm_k % len(self.hosts)]
            swarm_k += 1
            load[id(h)] += 1
            chosen.append(h)
        lightest = min(self.hosts, key=lambda h: load[id(h)])
        chosen = [h if h is not None else lightest for h in chosen]
        taken: dict[str, list[int]] = {}
        ports: dict[int, list[int]] = {}
        for h in self.hosts:
            k = sum(1 for c in chosen if c is h)
            got = h.call("ports", k, taken.get(h.ip, [])) if k else []
            taken.setdefault(h.ip, []).extend(got)
            ports[id(h)] = list(got)
        self._placed = chosen
        return [(h.ip, ports[id(h)].pop(0)) for h in chosen]

    def make_node(self, **fields: Any) -> NodeProc:
        k = len(self.nodes)
        return RemoteNode(**fields, host=self._placed[k])

    def exempt_addresses(self) -> list[str]:
        return sorted({h.ip for h in self.hosts} - {"127.0.0.1"})

    def configure(self, cfg: Any) -> None:
        """As on one machine, where loopback addresses keep NAT traversal off: the cluster's machines reach
        each other directly, and AutoNAT probes, relay reservations and relaying would be load that the
        local run and the DES do not have."""
        cfg.network.nat = "off"
        cfg.network.relay_service = "off"

    def setup_torch_gate(self) -> None:
        for h in self.hosts:
            h.call("gate", self.opts.max_trainings or h.cpus)

    def install(self) -> None:
        """Every home, packed here and unpacked on its machine (identity, node.toml, the workspace)."""
        ray = _ray()
        refs = []
        for n in self.nodes:
            assert isinstance(n, RemoteNode) and n.host is not None
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(n.home, arcname=".")
            fields = {"index": n.index, "name": n.name, "port": n.port, "role": n.role, "ip": n.ip, "liar": n.liar,
                      "peer_id": n.peer_id}
            refs.append(n.host.agent.install.remote(n.name, buf.getvalue(), fields))
        ray.get(refs, timeout=600)

    # --- running ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """One snapshot per machine, all asked at once."""
        ray = _ray()
        live = [h for h in self.hosts if not h.lost]
        refs = [h.agent.snapshot.remote() for h in live]
        for h, ref in zip(live, refs, strict=True):
            try:
                h.state = ray.get(ref, timeout=CALL_TIMEOUT_S)
                h.timeouts = 0
            except ray.exceptions.GetTimeoutError:
                h.timeouts += 1  # a slow answer: the last snapshot stands until LOST_AFTER_TIMEOUTS of them
                if h.timeouts >= LOST_AFTER_TIMEOUTS:
                    h.lost = f"{h.timeouts} snapshots in a row timed out"
            except Exception as e:  # noqa: BLE001 - the agent died (RayActorError) or cannot answer
                h.lost = f"its agent failed: {str(e).splitlines()[0][:200]}"
            if h.lost:
                self.log(f"machine {h.hostname} lost ({h.lost}): its nodes end as crashes")
                h.state = {n.name: {"pid": n.current.pid, "returncode": -signal.SIGKILL, "ready": False,
                                    "peer_id": "", "cpu_s": 0.0, "peak_rss_mb": 0.0}
                           for n in self.nodes if isinstance(n, RemoteNode) and n.host is h and n.current}

    def sample_tcp(self) -> None:
        ray = _ray()
        by_name = {n.name: n for n in self.nodes}
        live = [h for h in self.hosts if not h.lost]
        refs = [h.agent.tcp.remote() for h in live]
        for ref in refs:
            try:
                rows = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a byte count is not worth a stop
                continue
            for name, pid, local, peer, s, r in rows:
                node = by_name[name]
                old = node.tcp.get((pid, local, peer), (0, 0))
                node.tcp[(pid, local, peer)] = (max(old[0], s), max(old[1], r))

    def final_statuses(self, nodes: list[NodeProc]) -> dict[str, dict[str, Any]]:
        """Every node's status, every machine asked at once (each asks its nodes at once)."""
        ray = _ray()
        asked = []
        for h in self.hosts:
            names = [n.name for n in nodes if isinstance(n, RemoteNode) and n.host is h]
            if names and not h.lost:
                asked.append((h, h.agent.statuses.remote(names, 4.0)))
        out: dict[str, dict[str, Any]] = {}
        for h, ref in asked:
            try:
                out.update(ray.get(ref, timeout=CALL_TIMEOUT_S + 4.0))
            except Exception as e:  # noqa: BLE001 - missing is reported as missing
                self.log(f"no status from {h.hostname}: {e!r}"[:300])
        return out

    def stop_all(self) -> None:
        """Stop every node (the launcher's stop), then bring every ledger and log tail into the report
        folder and remove the run's folders from the machines."""
        try:
            super().stop_all()
        finally:
            try:
                self.harvest()
            finally:
                self.close()

    def harvest(self) -> None:
        """Every node's ledger and log tails into its folder of the report (a machine thought lost is
        still asked, briefly: a partition may have healed, and its ledgers are the figures)."""
        missing = []
        for n in self.nodes:
            if not isinstance(n, RemoteNode) or n.host is None or not n.incarnations:
                continue
            try:
                files = n.host.call("harvest", n.name, timeout=10 if n.host.lost else 300, even_if_lost=True)
            except Exception as e:  # noqa: BLE001 - one node's files are not worth the report
                missing.append(n.name)
                self.log(f"could not copy {n.name}'s ledger from {n.host.hostname}: {e!r}"[:300])
                continue
            for fname, data in files.items():
                for stale in (f"{fname}-wal", f"{fname}-shm"):
                    (n.home / stale).unlink(missing_ok=True)
                (n.home / fname).write_bytes(data)
        if missing:
            self.harvest_missing = missing
            self.log(f"the report's figures lack {len(missing)} node(s) whose ledgers could not be copied: "
                     + ", ".join(missing[:10]))

    def close(self) -> None:
        try:
            ray = _ray()
        except ClusterError:
            return  # Ray is missing: nothing was started
        for h in self.hosts:
            try:
                h.call("cleanup", timeout=10 if h.lost else 120, even_if_lost=True)
            except Exception:  # noqa: BLE001 - the next agent on that machine cleans it (clean_stale_runs)
                pass
            try:
                ray.kill(h.agent)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if ray.is_initialized():
            ray.shutdown()

    def cluster_report(self) -> dict[str, Any]:
        """report.json's `cluster`: each machine, its nodes and its clock against the driver's."""
        return {"address": self.address, "run_id": self.run_id, "hosts": [
            {"hostname": h.hostname, "ip": h.ip, "cpus": h.cpus, "ray_node_id": h.node_id, "root": h.root,
             "nodes": sorted(n.name for n in self.nodes if isinstance(n, RemoteNode) and n.host is h),
             "clock_offset_ms": round(h.clock_offset_s * 1000, 2),
             "clock_error_ms": round(h.clock_error_s * 1000, 2), "lost": h.lost or None}
            for h in self.hosts], "ledgers_missing": self.harvest_missing}
