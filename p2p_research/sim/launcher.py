"""Starting, watching, churning and stopping N node daemons (one OS process each) on loopback.

Every process is started in its own session and tracked here; `Simulation.run` stops all of them
(SIGTERM, a grace period, then SIGKILL to the process group) however it ends: the duration elapsed,
Ctrl+C/SIGTERM, or an error.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.sim import probe
from p2p_research.sim.forkserver import ForkedProcess, ForkServer, ForkServerError
from p2p_research.sim.options import SimOptions
from p2p_research.store import queries
from p2p_research.store.status import FINAL

STOP_GRACE_S = 30.0
PROC_SAMPLE_S = 2.0
TCP_SAMPLE_S = 5.0
READY_TIMEOUT_S = 120.0
# How long `run` waits for its fork server's imports before the first daemon starts. Exec'ing daemons
# while it still imports pays those imports once per daemon on the same cores (a 5-node run here
# exec'd all 6 and spent a third of its daemons' CPU importing); waiting costs at most what the first
# daemon would spend on them anyway. Past this, daemons are exec'd as before.
FORK_SERVER_WAIT_S = 60.0
ACKED = tuple(s.value for s in FINAL)


def _ephemeral_start() -> int:
    """The first port the kernel hands out for outgoing connections and binds to port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(taken: set[int] | None = None) -> int:
    """A free port below the kernel's ephemeral range. The nodes' ports are chosen before they start, over
    half a minute; a port from the ephemeral range (where a bind to port 0 picks) can meanwhile become the
    source port of an earlier node's outgoing connection, and the node then fails to listen (seen once in
    a 35-node run: "the port is in use")."""
    lo = _ephemeral_start()
    first = max(1024, lo - 20000)
    for _ in range(200 if lo > first else 0):
        port = random.randrange(first, lo)
        if taken is not None and port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if taken is not None:
            taken.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Incarnation:
    started_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    pid: int = 0
    peer_id: str = ""
    killed_by: str = ""        # "" | "churn" | "stop"
    returncode: int | None = None
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass
class NodeProc:
    index: int
    name: str
    home: Path
    port: int
    role: str                  # swarm | solo
    ip: str = "127.0.0.1"      # the address it listens on and is dialed at (a cluster machine's, sim/cluster/)
    liar: bool = False
    peer_id: str = ""
    bootstrap: list[str] = field(default_factory=list)
    proc: subprocess.Popen | ForkedProcess | None = None
    spawn: str = "fork"        # fork | exec (SimOptions.spawn)
    forks: ForkServer | None = None  # where it is forked from, set by its owner for spawn=fork (None: exec'd)
    incarnations: list[Incarnation] = field(default_factory=list)
    tcp: dict[tuple[int, str, str], tuple[int, int]] = field(default_factory=dict)
    crashed: bool = False
    crash_info: str = ""
    _stdout_offset: int = 0

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def up(self) -> bool:
        c = self.current
        return self.running() and c is not None and c.ready_at is not None

    def start(self, env: dict[str, str]) -> None:
        out = self.home / "sim-stdout.log"
        self._stdout_offset = out.stat().st_size if out.exists() else 0
        with open(out, "ab") as so, open(self.home / "sim-stderr.log", "ab") as se:
            self.proc = None
            if self.forks is not None and self.forks.alive():
                try:
                    self.proc = self.forks.spawn(["node", "start", "--home", str(self.home)], env=env,
                                                 cwd=str(self.home), stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                                 start_new_session=True)
                except ForkServerError:
                    self.forks = None  # exec'd from now on
            if self.proc is None:
                self.proc = subprocess.Popen(
                    # -P: the home (the working folder) is not on the import path
                    [sys.executable, "-P", "-m", "p2p_research", "node", "start", "--home", str(self.home)],
                    stdin=subprocess.DEVNULL, stdout=so, stderr=se, start_new_session=True, env=env,
                    cwd=str(self.home))
        self.incarnations.append(Incarnation(started_at=time.time(), pid=self.proc.pid))

    def check_ready(self) -> bool:
        c = self.current
        if c is None or c.ready_at is not None:
            return c is not None and c.ready_at is not None
        try:
            with open(self.home / "sim-stdout.log", "rb") as f:
                f.seek(self._stdout_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            if line.startswith("peer id:"):
                c.peer_id = line.split()[2]
            elif line.startswith("control:"):
                c.ready_at = time.time()
        return c.ready_at is not None

    def sample(self) -> None:
        c = self.current
        if c is None or not self.running():
            return
        got = probe.proc_cpu_rss(c.pid)
        if got:
            c.cpu_s, c.peak_rss_mb = got[0], max(c.peak_rss_mb, got[1])

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self, killed_by: str) -> None:
        """Record the end of the current incarnation (the process has exited)."""
        c = self.current
        if c is None or self.proc is None or c.ended_at is not None:
            return
        c.ended_at = time.time()
        c.returncode = self.proc.returncode
        c.killed_by = killed_by

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return (self.home / "sim-stderr.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def control(self, command: str, timeout: float) -> Any:
        """One request on the daemon's control socket (probe.control: OSError or ValueError when it does
        not answer)."""
        return probe.control(self.home, command, timeout=timeout)

    def acked(self) -> list[tuple]:
        """The runs the daemon has recorded as finished (`acked_runs`)."""
        return acked_runs(self.home)


def torch_gate(env: dict[str, str], gate: Path, slots: int) -> None:
    """Put the daemons started with `env` under a limit of `slots` concurrent trainings on this machine:
    torchgate/sitecustomize.py on their PYTHONPATH, and `gate` the folder of its slot files."""
    gate.mkdir(exist_ok=True)
    here = Path(__file__).resolve().parent / "torchgate"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH", "")]))
    env["P2P_SIM_TRAIN_SLOTS"] = f"{gate}:{slots}"


def acked_runs(home: Path) -> list[tuple]:
    """The runs a node has recorded as finished (what a kill must not lose), read-only."""
    try:
        with queries.read_only(home / "ledger.sqlite", timeout=5) as db:
            return queries.local_runs_in(db, ACKED)
    except sqlite3.Error:
        return []


class Simulation:
    def __init__(self, opts: SimOptions, log: Callable[[str], None] = print) -> None:
        self.opts = opts.validate()
        self.log = log
        self.rng = random.Random(opts.seed)
        self.root = Path(opts.report).resolve()
        self.nodes: list[NodeProc] = []
        self.events: list[dict[str, Any]] = []
        self.churn_plan: list[dict[str, Any]] = []
        self.t_start = 0.0
        self.t_end = 0.0
        self.all_up_at: float | None = None
        self.interrupted = ""
        self.env = dict(os.environ)
        self.acked_before_kill: dict[str, list[list[tuple]]] = {}
        self.slow_start: set[str] = set()
        self.experiments_ended_at: float | None = None
        self.settle_note = ""
        self.final_status: dict[str, dict[str, Any]] = {}
        self.forks: ForkServer | None = None

    # --- set-up -----------------------------------------------------------------------------------
    def event(self, kind: str, node: str = "", **kw: Any) -> None:
        e = {"t": time.time(), "kind": kind, "node": node, **kw}
        self.events.append(e)

    def prepare(self) -> None:
        """Node homes, identities (so every peer id is known before anything starts) and node.toml."""
        from p2p_research.net.identity import load_or_create_identity, peer_id_of_keypair
        from p2p_research.research.io.home_init import init_home

        o = self.opts
        if self.root.exists() and any(self.root.iterdir()):
            raise ValueError(f"--report {self.root} exists and is not empty; choose another folder")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        cache = self.root / "cache"
        cache.mkdir(exist_ok=True)
        liars = set(self.rng.sample(range(1, o.nodes), o.liars)) if o.liars else set()
        specs = [("solo", "solo", -1)] if o.solo else []
        specs += [(f"n{i:02d}", "swarm", i) for i in range(o.nodes)]
        places = self.place(specs)
        for (name, role, i), (ip, port) in zip(specs, places, strict=True):
            home = init_home(self.root / "nodes" / name)
            kp = load_or_create_identity(home.identity)
            node = self.make_node(index=i, name=name, home=home.path, ip=ip, port=port, role=role, liar=i in liars,
                                  peer_id=peer_id_of_keypair(kp), spawn=o.spawn)
            self.nodes.append(node)
        swarm = [n for n in self.nodes if n.role == "swarm"]
        for k, node in enumerate(swarm):
            earlier = swarm[:k]
            node.bootstrap = [e.addr for e in self.rng.sample(earlier, min(o.fanout, len(earlier)))]
        for node in self.nodes:
            home_obj = _home(node.home)
            cfg = home_obj.load_config()
            r = cfg.research
            r.objective = o.objective
            r.surrogate_cost_s = float(o.cost_s)
            r.surrogate = o.surrogate
            r.seed = o.seed * 1000 + (node.index + 1 if node.role == "swarm" else 0) + (500 if node.role == "solo" else 0)
            r.threads = 1
            r.cache_dir = str(cache)
            if o.budget_tokens:
                r.budget_tokens = o.budget_tokens
            if o.margin is not None:
                r.margin = o.margin
            if o.objective == "torch":
                r.device = "cpu"
            cfg.node.name = node.name + ("-liar" if node.liar else "")
            cfg.network.listen = [f"/ip4/{node.ip}/tcp/{node.port}"]
            cfg.network.exempt_addresses = self.exempt_addresses()
            self.configure(cfg)
            cfg.network.bootstrap = list(node.bootstrap)
            cfg.network.target_peers = o.target_peers
            cfg.network.announce = o.announce
            cfg.research.genesis = o.genesis
            cfg.verification.policy = o.verification
            cfg.simulation.liar = node.liar
            home_obj.write_config(cfg)
        if o.churn > 0:
            k = round(o.churn * len(swarm))
            for node in self.rng.sample(swarm, k):
                at = self.rng.uniform(0.15, 0.7) * o.duration_s
                self.churn_plan.append({"node": node.name, "kill_at": at, "restart_after": o.churn_downtime_s,
                                        "done": False, "restarted": False})
        if o.objective == "torch":
            self.setup_torch_gate()
        if o.spawn == "fork" and any(type(n).start is NodeProc.start for n in self.nodes):
            # started now; `run` waits for it (FORK_SERVER_WAIT_S) while the rest of `prepare` goes on
            self.forks = ForkServer(env=self.env, wait=False)
            for n in self.nodes:
                n.forks = self.forks
        (self.root / "topology.json").write_text(json.dumps(
            {n.name: {"peer_id": n.peer_id, "ip": n.ip, "port": n.port, "role": n.role, "liar": n.liar,
                      "bootstrap": n.bootstrap} for n in self.nodes}, indent=1))
        self.install()

    # --- where the nodes run (this machine; sim/cluster/ overrides these for a Ray cluster) --------
    def place(self, specs: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
        """(address, port) for each node of `specs` (name, role, index): here, 127.0.0.1 and free ports."""
        ports: set[int] = set()
        return [("127.0.0.1", free_port(ports)) for _ in specs]

    def make_node(self, **fields: Any) -> NodeProc:
        return NodeProc(**fields)

    def exempt_addresses(self) -> list[str]:
        """network.exempt_addresses of every node: none here (127.0.0.1 is exempt already)."""
        return []

    def configure(self, cfg: Any) -> None:
        """Last changes to every node's configuration where the nodes run: none here."""

    def install(self) -> None:
        """Make the prepared homes available where the nodes run: they already are, here."""

    def refresh(self) -> None:
        """Bring what is known of the node processes up to date before a tick reads it: nothing to do for
        processes of this machine, which are asked directly."""

    def final_statuses(self, nodes: list[NodeProc]) -> dict[str, dict[str, Any]]:
        return probe.final_statuses({n.name: n.home for n in nodes})

    def close(self) -> None:
        """Release what the run holds besides its processes (`stop_all` stops those): the fork server
        here; a cluster's agents and its Ray connection (sim/cluster/)."""
        if self.forks is not None:
            self.forks.close()

    def setup_torch_gate(self) -> None:
        """Real training under a machine-wide limit of concurrent trainings (see torchgate/sitecustomize.py)."""
        torch_gate(self.env, self.root / "train-slots", self.opts.max_trainings or os.cpu_count() or 1)

    # --- running ----------------------------------------------------------------------------------
    def node(self, name: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == name)

    def poll_processes(self) -> None:
        self.refresh()
        for n in self.nodes:
            if n.proc is None:
                continue
            n.check_ready()
            c = n.current
            if n.proc.poll() is not None and c is not None and c.ended_at is None:
                n.reap("")
                n.crashed = True
                n.crash_info = f"exit code {n.proc.returncode}: {n.stderr_tail(600)}"
                self.event("crash", n.name, returncode=n.proc.returncode)
                self.log(f"{n.name} exited by itself (code {n.proc.returncode})")

    def sample_tcp(self) -> None:
        live = {n.current.pid: n for n in self.nodes if n.current and n.current.ended_at is None}
        if not live:
            return
        for (pid, local, peer), v in probe.tcp_bytes_by_socket(set(live)).items():
            node = live[pid]
            old = node.tcp.get((pid, local, peer), (0, 0))
            node.tcp[(pid, local, peer)] = (max(old[0], v[0]), max(old[1], v[1]))

    def window_start(self) -> float | None:
        """Start of the experiment window (None: not started yet, nodes still coming up)."""
        return self.all_up_at if self.opts.count_from == "all-up" else self.t_start

    def do_churn(self, now: float) -> None:
        w0 = self.window_start()
        if w0 is None:
            return
        for c in self.churn_plan:
            node = self.node(c["node"])
            if not c["done"] and now - w0 >= c["kill_at"] and node.up():
                self.acked_before_kill.setdefault(node.name, []).append(node.acked())
                node.sample()
                node.signal_group(signal.SIGKILL)
                node.proc.wait(10)
                node.reap("churn")
                c["done"], c["killed_at"] = True, time.time()
                self.event("kill", node.name)
                self.log(f"churn: SIGKILL {node.name}")
            elif c["done"] and not c["restarted"] and time.time() - c["killed_at"] >= c["restart_after"]:
                node.start(self.env)
                c["restarted"], c["restarted_at"] = True, time.time()
                self.event("restart", node.name)
                self.log(f"churn: restarted {node.name}")

    def run(self, on_tick: Callable[[Simulation], None] | None = None) -> None:
        """Start everything, run for the duration, stop everything (always)."""
        o = self.opts
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def stop_handler(signum: int, frame: Any) -> None:
            self.interrupted = signal.Signals(signum).name

        for s in old:
            signal.signal(s, stop_handler)
        try:
            if self.forks is not None and not self.forks.ready(FORK_SERVER_WAIT_S):
                self.log(f"the fork server is not ready after {FORK_SERVER_WAIT_S:.0f} s: daemons are exec'd")
            self.t_start = time.time()
            order = [n for n in self.nodes if n.role == "solo"] + [n for n in self.nodes if n.role == "swarm"]
            pending = list(order)
            last_proc = last_tcp = last_tick = 0.0
            tcp_thread: threading.Thread | None = None
            while not self.interrupted:
                now = time.time()
                if now >= self.deadline():
                    break
                while pending and now >= self.t_start + order.index(pending[0]) / o.start_rate:
                    n = pending.pop(0)
                    n.start(self.env)
                    self.event("start", n.name)
                self.poll_processes()
                if self.all_up_at is None and not pending and all(n.current and n.current.ready_at for n in self.nodes):
                    self.all_up_at = time.time()
                    self.event("all_up")
                    forked = sum(isinstance(n.proc, ForkedProcess) for n in self.nodes)
                    how = f" ({forked} forked, {len(self.nodes) - forked} exec'd)" if self.forks is not None else ""
                    self.log(f"all {len(self.nodes)} nodes up after {self.all_up_at - self.t_start:.1f} s{how}")
                for n in self.nodes:
                    c = n.current
                    if c and c.ready_at is None and n.running() and now - c.started_at > READY_TIMEOUT_S \
                            and n.name not in self.slow_start:
                        self.slow_start.add(n.name)
                        self.event("slow_start", n.name)
                        self.log(f"{n.name} is not up after {READY_TIMEOUT_S:.0f} s")
                self.do_churn(now)
                if now - last_proc >= PROC_SAMPLE_S:
                    last_proc = now
                    for n in self.nodes:
                        n.sample()
                if now - last_tcp >= TCP_SAMPLE_S and (tcp_thread is None or not tcp_thread.is_alive()):
                    last_tcp = now  # `ss -p` walks /proc: off the main loop, which must keep time for churn
                    tcp_thread = threading.Thread(target=self.sample_tcp, name="sim-tcp", daemon=True)
                    tcp_thread.start()
                if on_tick and now - last_tick >= 1.0:
                    last_tick = now
                    on_tick(self)
                time.sleep(0.2)
            if not self.interrupted and o.settle_s > 0:
                self.settle(on_tick)
        finally:
            self.t_end = time.time()
            self.stop_all()
            if self.forks is not None:
                self.forks.close()
            for s, h in old.items():
                signal.signal(s, h)

    def deadline(self) -> float:
        """When experimenting ends: the duration counts from the first start or from when every node is up."""
        if self.opts.count_from == "all-up":
            # Nodes that never come up must not stretch the run forever: at most READY_TIMEOUT_S of start-up.
            base = self.all_up_at or (self.t_start + READY_TIMEOUT_S + len(self.nodes) / self.opts.start_rate)
            return base + self.opts.duration_s
        return self.t_start + self.opts.duration_s

    def settle(self, on_tick: Callable[[Simulation], None] | None) -> None:
        """Stop experimenting (the `drain` control command) and let adoptions settle, up to settle_s.

        Without a drain command in the daemon, nodes would keep finding better results, so there is
        nothing to settle: this is skipped and noted in the report.
        """
        self.experiments_ended_at = time.time()
        self.event("drain")
        pending = [n for n in self.nodes if n.up()]
        drained: list[str] = []

        def drain_pending() -> bool:
            """Send `drain` to the nodes that have not taken it yet (a busy node may time out: retried
            on every tick); False when the daemon has no such command."""
            for n in list(pending):
                if not n.up():
                    pending.remove(n)
                    continue
                try:
                    n.control("drain", timeout=5.0)
                except ValueError as e:
                    self.settle_note = f"no drain: {e}"
                    self.log(f"settle skipped: the daemon does not drain ({e})")
                    return False
                except OSError:
                    continue
                pending.remove(n)
                drained.append(n.name)
            self.settle_note = f"drained {len(drained)} nodes" + (f", {len(pending)} never answered" if pending else "")
            return True

        if not drain_pending():
            return
        end = time.time() + self.opts.settle_s
        while not self.interrupted and time.time() < end:
            self.poll_processes()  # a node that dies while settling is a crash too
            if pending:
                drain_pending()
            honest = [n for n in self.nodes if n.role == "swarm" and not n.liar and n.up()]
            statuses = self.final_statuses(honest)  # all at once: one that does not answer counts as None
            commits = {((statuses.get(n.name) or {}).get("baseline") or {}).get("commit") for n in honest}
            # a drained node finishes the run it has in flight, and a keep there moves its baseline after
            # the others agreed (a cluster test ended on two baselines so, 0.2 s into its settle)
            busy = any((statuses.get(n.name) or {}).get("current") for n in honest)
            if len(commits) == 1 and not pending and not busy:
                self.log(f"settled: every honest node on {str(next(iter(commits)))[:10]}")
                break
            if on_tick:
                on_tick(self)
            time.sleep(2.0)
        self.event("settled")

    def stop_all(self) -> None:
        self.poll_processes()  # exits before the stop are crashes, not stops
        live = [n for n in self.nodes if n.running()]
        for n in live:
            n.sample()
        try:
            self.final_status = self.final_statuses([n for n in live if n.up()])
        except Exception as e:  # noqa: BLE001 - stopping matters more than these counters
            self.log(f"could not read the final statuses: {e}")
        try:
            self.sample_tcp()
        except Exception:  # noqa: BLE001 - stopping matters more than a last byte count
            pass
        for n in live:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + STOP_GRACE_S
        for n in live:
            assert n.proc is not None
            try:
                n.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.log(f"{n.name} did not stop within {STOP_GRACE_S:.0f} s: SIGKILL")
                self.event("stop_timeout", n.name)
        for n in self.nodes:
            if n.proc is not None:
                n.signal_group(signal.SIGKILL)   # the daemon and anything it left in its group
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                if n.current and n.current.ended_at is None:
                    n.reap("stop")
        self.event("stopped")


def _home(path: Path):
    from p2p_research.home import NodeHome

    return NodeHome(path)
