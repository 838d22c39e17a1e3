"""Reachability behind NAT, across Linux network namespaces the test creates itself.

The topology: a "wan" namespace with a bridge, where a relay (a `--no-research` node) listens on a
public address; two "homes", each behind its own router namespace that masquerades (NAT) and drops
unsolicited inbound TCP, as home routers do. Two research nodes, one in each home, bootstrap from the
relay. Every node is a real daemon in its own OS process, and every address is inside the namespaces.

What must hold: each home node learns it is private (peers' dial-backs fail), reserves a slot on the
relay and announces a relayed address; the relay learns it is public and holds both reservations; the
two homes reach each other through the relay, then DCUtR gives them a direct connection (the
masquerading routers keep the source port, so a TCP hole punch works) and the relayed one is closed;
results flow; `doctor` says "relayed". A research node on a public address finds itself public and
offers relaying, and the homes reserve their second slot on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from daemon_helpers import Daemon, stop_all, surrogate_home, wait_for

from p2p_research.research.io.home_init import init_home

PREFIX = f"p2pt{os.getpid() % 10000}"
WAN, PUB, R1, R2, H1, H2 = (f"{PREFIX}{n}" for n in ("w", "p", "r1", "r2", "h1", "h2"))


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


def missing_tools() -> str:
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 iptables; .ci/run installs them)"
    probe = f"{PREFIX}probe"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "exec", probe, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE")
    except (subprocess.CalledProcessError, OSError) as e:
        return f"network namespaces with NAT are not available here: {getattr(e, 'stderr', '') or e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return ""


def build_topology() -> None:
    for ns in (WAN, PUB, R1, R2, H1, H2):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", WAN, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", WAN, "link", "set", "br0", "up")
    sh("ip", "-n", WAN, "addr", "add", "10.77.0.1/24", "dev", "br0")
    # a public research node in a namespace of its own on the WAN bridge
    sh("ip", "link", "add", f"{PREFIX}pe", "type", "veth", "peer", "name", f"{PREFIX}pb")
    sh("ip", "link", "set", f"{PREFIX}pe", "netns", PUB)
    sh("ip", "link", "set", f"{PREFIX}pb", "netns", WAN)
    sh("ip", "-n", WAN, "link", "set", f"{PREFIX}pb", "master", "br0")
    sh("ip", "-n", WAN, "link", "set", f"{PREFIX}pb", "up")
    sh("ip", "-n", PUB, "addr", "add", "10.77.0.2/24", "dev", f"{PREFIX}pe")
    sh("ip", "-n", PUB, "link", "set", f"{PREFIX}pe", "up")
    for i, (router, home) in enumerate(((R1, H1), (R2, H2)), start=1):
        wan_end, br_end, lan_end, home_end = f"{PREFIX}w{i}", f"{PREFIX}b{i}", f"{PREFIX}l{i}", f"{PREFIX}e{i}"
        sh("ip", "link", "add", wan_end, "type", "veth", "peer", "name", br_end)
        sh("ip", "link", "set", wan_end, "netns", router)
        sh("ip", "link", "set", br_end, "netns", WAN)
        sh("ip", "-n", WAN, "link", "set", br_end, "master", "br0")
        sh("ip", "-n", WAN, "link", "set", br_end, "up")
        sh("ip", "-n", router, "addr", "add", f"10.77.0.1{i}/24", "dev", wan_end)
        sh("ip", "-n", router, "link", "set", wan_end, "up")
        sh("ip", "link", "add", lan_end, "type", "veth", "peer", "name", home_end)
        sh("ip", "link", "set", lan_end, "netns", router)
        sh("ip", "link", "set", home_end, "netns", home)
        sh("ip", "-n", router, "addr", "add", f"192.168.{i}.1/24", "dev", lan_end)
        sh("ip", "-n", router, "link", "set", lan_end, "up")
        sh("ip", "-n", home, "addr", "add", f"192.168.{i}.2/24", "dev", home_end)
        sh("ip", "-n", home, "link", "set", home_end, "up")
        sh("ip", "-n", home, "route", "add", "default", "via", f"192.168.{i}.1")
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan_end, "-j", "MASQUERADE")
        # a home router: nothing from outside gets in unless the inside started it
        sh("ip", "netns", "exec", router, "iptables", "-A", "INPUT", "-i", wan_end, "-p", "tcp", "-m", "conntrack",
           "--ctstate", "NEW", "-j", "DROP")
        sh("ip", "netns", "exec", router, "iptables", "-A", "FORWARD", "-i", wan_end, "-m", "conntrack",
           "--ctstate", "NEW", "-j", "DROP")


def tear_down() -> None:
    for ns in (H1, H2, R1, R2, PUB, WAN):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def topology():
    why = missing_tools()
    if why:
        pytest.skip(why)
    tear_down()
    try:
        build_topology()
        yield
    finally:
        tear_down()


def in_ns(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns)


@pytest.mark.slow
@pytest.mark.alone  # under load the homes once met by a direct dial, never through the relay (docs/testing.md)
def test_two_homes_behind_nat_meet_through_a_relay_and_connect_directly(tmp_path, topology):
    relay = Daemon(init_home(tmp_path / "relay").path, "--no-research", "--listen", "/ip4/10.77.0.1/tcp/4001",
                   wrap=in_ns(WAN)).start()
    daemons = [relay]
    try:
        boot = relay.addrs[0]
        assert boot.startswith("/ip4/10.77.0.1/tcp/4001/p2p/")
        homes = []
        for i, ns in ((1, H1), (2, H2)):
            h = surrogate_home(tmp_path / f"home{i}", i, cost=3.0)
            homes.append(Daemon(h.path, "--listen", f"/ip4/192.168.{i}.2/tcp/4001", "--bootstrap", boot, "-n", "200",
                                wrap=in_ns(ns)).spawn())
        daemons += homes
        a, b = homes
        # a research node on a public address: it finds itself public and offers relaying (kubo's default)
        public = Daemon(surrogate_home(tmp_path / "public", 3, cost=3.0).path, "--listen", "/ip4/10.77.0.2/tcp/4001",
                        "--bootstrap", boot, "-n", "200", wrap=in_ns(PUB)).spawn()
        daemons.append(public)
        for d in (a, b, public):  # the three start side by side, each bootstrapping from the relay
            d.ready()

        def relayed(d):
            r = d.json("status")["reachability"]
            return r if r.get("status") == "private" and r.get("relayed") else None

        for d in (a, b):
            r = wait_for(lambda d=d: relayed(d), 60, what="a home node learns it is private and reserves a relay slot")
            assert f"{boot}/p2p-circuit/p2p/{d.peer_id}" in r["relayed_addrs"] or wait_for(
                lambda d=d: f"{boot}/p2p-circuit/p2p/{d.peer_id}" in d.json("status")["reachability"]["relayed_addrs"],
                30, what="a slot on the relay")
            assert all(x.endswith(f"/p2p-circuit/p2p/{d.peer_id}") for x in r["relayed_addrs"])
            assert any(x.endswith("/p2p-circuit/p2p/" + d.peer_id) for x in d.json("id")["addrs"])
        st = wait_for(lambda: (s := relay.json("status")["reachability"])["status"] == "public" and s, 60,
                      what="the relay learns it is public")
        assert st["relay_service"] and st["reservations_held"] == 2
        pub = wait_for(lambda: (s := public.json("status")["reachability"])["status"] == "public"
                       and s["relay_service"] and s["reservations_held"] >= 1 and s, 90,
                       what="the public research node offers relaying and a home reserves a slot on it")
        assert not pub["relayed"]

        # the homes find each other (peer exchange through the relay hands out relayed addresses),
        # connect through the relay, then DCUtR gives them a direct connection and the relayed one closes
        def direct_between():
            peers = {p["peer_id"]: p for p in a.json("peers")}
            return peers.get(b.peer_id, {}).get("connection") == "direct"
        # DCUtR tries three times, and again 30 s after its attempts are spent (nat.punch_again)
        wait_for(direct_between, 240, what="a direct connection between the two homes")
        ra, rb = (d.json("status")["reachability"] for d in (a, b))
        assert ra["relayed_dials"] + rb["relayed_dials"] >= 1   # they first met through the relay
        assert ra["upgraded"] + rb["upgraded"] >= 1               # and the relayed connection was replaced
        # results flow between the homes
        wait_for(lambda: any(e["peer"] == a.peer_id for e in b.json("experiments")), 60, what="A's results at B")
        doctor = a.json("doctor")
        (reach,) = [c for c in doctor["checks"] if c["name"] == "reachability"]
        assert reach["status"] == "ok" and reach["detail"].startswith("relayed:")
        assert "peer(s) dialed back" in [c for c in relay.json("doctor")["checks"] if c["name"] == "reachability"][0]["detail"]
    finally:
        stop_all(daemons)
    for d in daemons:  # one line per network event: no libp2p ERROR storm from relaying or hole punching
        assert d.stderr().count("ERROR") <= 3, d.stderr()[-3000:]
