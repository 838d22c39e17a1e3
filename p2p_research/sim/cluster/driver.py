"""The driver of a cluster run: joining Ray, one agent per machine, placing the nodes, and the
launcher's hooks answered for remote machines (sim/cluster/__init__.py says how the pieces fit)."""

from __future__ import annotations

import io
import itertools
import os
import signal
import socket
import tarfile
import time
import uuid
from typing import Any

from p2p_research.sim.cluster.agent import ClusterError, HostAgent, ray_module
from p2p_research.sim.cluster.remote import CALL_TIMEOUT_S, HostLink, RemoteNode
from p2p_research.sim.launcher import NodeProc, Simulation
from p2p_research.sim.options import SimOptions


def connect(address: str) -> None:
    """Join the Ray cluster at `address` ("local": start a one-machine cluster for this run, which
    `ray.shutdown` stops again; "auto": the one `ray start` made on this machine)."""
    import logging

    ray = ray_module()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    if address == "local":
        ray.init(address="local", **kw)  # a new one-machine cluster, never one RAY_ADDRESS names
        return
    kw.pop("include_dashboard")
    _reachable(address)
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001 - Ray's own errors, as one line
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e}") from None


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
        self.harvest_missing: list[str] = []

    # --- set-up -----------------------------------------------------------------------------------
    def open_hosts(self) -> None:
        ray = ray_module()
        connect(self.address)
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
        swarm = sum(role != "solo" for _, role, _ in specs)
        lightest = self.hosts[swarm % len(self.hosts)]  # the next in the round robin holds the fewest
        ring = itertools.cycle(self.hosts)
        chosen = [lightest if role == "solo" else next(ring) for _, role, _ in specs]
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
        ray = ray_module()
        refs = []
        for n in self.nodes:
            assert isinstance(n, RemoteNode) and n.host is not None
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(n.home, arcname=".")
            fields = {"index": n.index, "name": n.name, "port": n.port, "role": n.role, "ip": n.ip, "liar": n.liar,
                      "spawn": n.spawn,
                      "peer_id": n.peer_id}
            refs.append(n.host.agent.install.remote(n.name, buf.getvalue(), fields))
        ray.get(refs, timeout=600)

    # --- running ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """One snapshot per machine, all asked at once; a machine lost (here or in any other call) has its
        nodes recorded as crashed, once."""
        ray = ray_module()
        live = [h for h in self.hosts if not h.lost]
        for h, ref in [(h, h.ask("snapshot")) for h in live]:
            try:
                h.state = h.answer(ref)
            except ray.exceptions.GetTimeoutError:
                pass  # a slow answer: the last snapshot stands (answer counts the timeouts)
            except Exception as e:  # noqa: BLE001 - the agent died (RayActorError) or cannot answer
                h.lost = h.lost or f"its agent failed: {str(e).splitlines()[0][:200]}"
        for h in self.hosts:
            if h.lost and not h.ended:
                h.ended = True
                self.log(f"machine {h.hostname} lost ({h.lost}): its nodes end as crashes")
                h.state = {n.name: {"pid": n.current.pid, "returncode": -signal.SIGKILL, "ready": False,
                                    "peer_id": "", "cpu_s": 0.0, "peak_rss_mb": 0.0}
                           for n in self.nodes if isinstance(n, RemoteNode) and n.host is h and n.current}

    def sample_tcp(self) -> None:
        by_name = {n.name: n for n in self.nodes}
        for h, ref in [(h, h.ask("tcp")) for h in self.hosts if not h.lost]:
            try:
                rows = h.answer(ref)
            except Exception:  # noqa: BLE001 - a byte count is not worth a stop
                continue
            for name, pid, local, peer, s, r in rows:
                node = by_name[name]
                old = node.tcp.get((pid, local, peer), (0, 0))
                node.tcp[(pid, local, peer)] = (max(old[0], s), max(old[1], r))

    def final_statuses(self, nodes: list[NodeProc]) -> dict[str, dict[str, Any]]:
        """Every node's status, every machine asked at once (each asks its nodes at once)."""
        asked = []
        for h in self.hosts:
            names = [n.name for n in nodes if isinstance(n, RemoteNode) and n.host is h]
            if names and not h.lost:
                asked.append((h, h.ask("statuses", names, 4.0)))
        out: dict[str, dict[str, Any]] = {}
        for h, ref in asked:
            try:
                out.update(h.answer(ref, CALL_TIMEOUT_S + 4.0))
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
            ray = ray_module()
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
