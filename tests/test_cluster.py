"""`simulate --cluster`: real daemons placed on the machines of a Ray cluster (sim/cluster/), and the
exemption of one's own machines from the limits per address and subnet that it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr
from net_helpers import cfg

from p2p_research.net import open_network
from p2p_research.net.addresses import AddressSlots, exempt_set
from p2p_research.net.libp2p_compat.guards import INBOUND_PER_ADDRESS
from p2p_research.net.peers import addr_subnet

ROOT = Path(__file__).resolve().parents[1]


def test_exempt_addresses_are_counted_like_loopback():
    exempt = exempt_set(["10.0.0.7", "::ffff:10.0.0.8"])
    slots = AddressSlots(1, 2, exempt)
    assert all(slots.take("10.0.0.7") is None for _ in range(10))
    assert slots.take("10.0.0.8") is None and slots.take("10.0.0.8") is None
    assert slots.take("10.0.0.9") is None and slots.take("10.0.0.9") is not None  # its neighbour is a stranger
    assert addr_subnet(Multiaddr("/ip4/10.0.0.7/tcp/1"), exempt) is None
    assert addr_subnet(Multiaddr("/ip4/10.0.0.9/tcp/1"), exempt) == "10.0.0.0/24"
    with pytest.raises(ValueError, match="not an IP address"):
        exempt_set(["10.0.0.0/24"])


async def test_a_cluster_machine_named_exempt_connects_past_the_limit_per_address():
    """Twelve identities connect from one address (127.0.7.1, a machine of the node's own cluster, say).
    A node that names it in `exempt_addresses` takes all twelve; one that does not takes the limit."""
    plain = trio.open_tcp_stream
    trio.open_tcp_stream = lambda h, p, **kw: plain(h, p, local_address="127.0.7.1", **kw)
    n = INBOUND_PER_ADDRESS + 4
    try:
        for exempt, expected in (([], INBOUND_PER_ADDRESS), (["127.0.7.1"], n)):
            async with open_network(cfg(exempt_addresses=exempt), lambda oid: None) as net, AsyncExitStack() as stack:
                target = info_from_p2p_addr(Multiaddr(net.addrs()[0]))
                connected = 0
                for _ in range(n):
                    host = new_host(key_pair=generate_new_ed25519_identity())
                    await stack.enter_async_context(host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]))
                    stack.push_async_callback(host.close)
                    try:
                        with trio.fail_after(10):
                            await host.connect(target)
                        await trio.sleep(0.2)  # a refused upgrade closes the connection just after the dial
                        connected += bool(host.get_network().connections)
                    except Exception:  # noqa: BLE001 - refused past the limit
                        pass
                assert connected == expected, (exempt, connected)
    finally:
        trio.open_tcp_stream = plain


def test_a_run_left_by_a_dead_agent_is_cleaned_and_its_daemons_stopped_a_live_one_is_not(tmp_path):
    """A driver killed outright takes its Ray actors (the host agents) with it, but not the daemons they
    started in sessions of their own: the next agent on that machine stops them and removes the folder."""
    from p2p_research.sim.cluster import AGENT_FILE, PIDS_FILE, clean_stale_runs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def daemon(run: str) -> subprocess.Popen:  # a process whose command line names a home of the run
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "node", "start", "--home",
                                 f"{tmp_path / run / 'nodes'}/n00"], start_new_session=True)

    left, other = daemon("stale"), daemon("live")
    elsewhere = daemon("elsewhere")  # the stale run's pid list names it, but it is not of that run
    try:
        for run, agent, proc in (("stale", dead.pid, left), ("live", os.getpid(), other)):
            (tmp_path / run).mkdir()
            (tmp_path / run / AGENT_FILE).write_text(str(agent))
            (tmp_path / run / PIDS_FILE).write_text(f"{proc.pid}\n{elsewhere.pid if run == 'stale' else ''}\n")
        assert clean_stale_runs(tmp_path) == ["stale"]
        assert left.wait(10) == -9 and other.poll() is None and elsewhere.poll() is None
        assert not (tmp_path / "stale").exists() and (tmp_path / "live").exists()
    finally:
        for p in (left, other, elsewhere):
            p.kill()
            p.wait()


def test_an_agent_gates_training_with_the_launcher_s_torch_gate(tmp_path):
    """`--objective torch` on a cluster: each machine's daemons start with sim/torchgate on their path and
    that machine's slot folder (a copy of the launcher's set-up had once pointed at a folder that does
    not exist)."""
    from p2p_research.sim.cluster import HostAgent

    agent = HostAgent("gate", str(tmp_path))
    agent.gate(3)
    path = agent.env["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(path) / "sitecustomize.py").is_file()
    folder, slots = agent.env["P2P_SIM_TRAIN_SLOTS"].rsplit(":", 1)
    assert slots == "3" and Path(folder).is_dir() and Path(folder).is_relative_to(tmp_path)


def test_cluster_mode_runs_real_daemons_only(tmp_path):
    r = subprocess.run([sys.executable, "-m", "p2p_research", "simulate", "--engine", "des", "--cluster", "local",
                        "--report", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--cluster runs real daemons" in r.stderr + r.stdout
    r = subprocess.run([sys.executable, "-m", "p2p_research", "simulate", "--cluster", "127.0.0.1:1",
                        "--report", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot join the Ray cluster at 127.0.0.1:1" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_swarm_on_a_two_machine_ray_cluster_reports_like_a_local_one(tmp_path):
    """Two Ray machines (two raylets on this one: Ray's own test cluster), four swarm daemons and a solo
    node placed over them, every one listening on its machine's address. The report gathers every
    node's ledger from its machine, as after a local run, and the machines keep no run folder.
    The settle ends as soon as every node is on one baseline; its 120 s are for a loaded machine,
    where a 3-s re-run took far longer (45 s once ran out beside a DES load and two benchmarks)."""
    ray_utils = pytest.importorskip("ray.cluster_utils")
    cluster = ray_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        report = tmp_path / "report"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        r = subprocess.run(
            [sys.executable, "-m", "p2p_research", "simulate", "--cluster", cluster.address, "--nodes", "4",
             "--duration", "25s", "--cost", "3", "--settle", "120", "--seed", "3", "--report", str(report)],
            capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        cluster.shutdown()
    m = json.loads((report / "report.json").read_text())
    hosts = m["cluster"]["hosts"]
    assert len(hosts) == 2 and len({h["ray_node_id"] for h in hosts}) == 2
    assert sorted(len(h["nodes"]) for h in hosts) == [2, 3]  # two swarm nodes each, the solo node beside two
    assert all(abs(h["clock_offset_ms"]) < 1000 and not h["lost"] for h in hosts)
    assert not any(Path(h["root"]).exists() for h in hosts if h.get("root"))
    topology = json.loads((report / "topology.json").read_text())
    ips = {h["ip"] for h in hosts}
    assert {t["ip"] for t in topology.values()} == ips
    for name in topology:
        toml = (report / "nodes" / name / "node.toml").read_text()
        assert all(ip in toml for ip in ips)  # listen and exempt_addresses name the machine's address
    assert m["crashed_nodes"] == 0
    # (a loaded fresh-clone run once saw 0 experiments on every node, with no more said: the run's own
    # lines and the harvest's state come with a failure now)
    assert all(v > 0 for v in m["experiments_per_node"].values()), (
        m["experiments_per_node"], m["cluster"].get("ledgers_missing"), m.get("startup_s"), r.stdout[-4000:])
    assert len(m["experiments_per_node"]) == 4 and m["solo"]["experiments_completed"] > 0
    assert m["convergence"]["all_on_same_baseline"], m["convergence"]
    assert m["peers_at_stop"]["p50"] >= 2
    assert "Ray cluster" in (report / "report.md").read_text()
