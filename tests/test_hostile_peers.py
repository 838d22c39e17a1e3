"""A hostile peer against a swarm of real daemons (separate OS processes): every cheap attack of issue 9.

The swarm: a relay R, a research node V (2 experiments, then it follows the swarm) bootstrapped from R,
and a research node W that keeps experimenting. The adversary (tests/adversary.py) is a real
py-libp2p host in the test process speaking our wire format. After each attack: the victims are
alive, answer `status` within 2 s, their baseline is untouched, and the rejection shows in `status`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pygit2
import pytest
import trio
from adversary import (
    adversary,
    claim,
    exchange_answering,
    fresh_keys,
    honest_node,
    listening_host,
    objects_answering,
    pid_of,
    random_hex40,
    receipt,
    result,
    verification,
)
from conftest import run_cli
from daemon_helpers import Daemon, surrogate_home, wait_for

from p2p_research.daemon.control_call import call
from p2p_research.daemon.messages import commit_objects
from p2p_research.net.dht import KAD_PROTOCOL
from p2p_research.net.transfer import OBJECTS_PROTOCOL
from p2p_research.research.ids import experiment_id
from p2p_research.research.io.home_init import init_home
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.ownership import assignment_order
from p2p_research.wire import GitObject, Presence, decode

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile")]  # its module fixture is built once, on one worker


class Swarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []

    def start(self) -> None:
        r_home = surrogate_home(self.root / "r", 1)
        self.r = Daemon(r_home.path, "--no-research").start()
        self.daemons.append(self.r)
        v_home = surrogate_home(self.root / "v", 2, cost=0.2, verification__defer_s=5.0)
        self.v = Daemon(v_home.path, "-n", "2", "--bootstrap", self.r.addrs[0]).start()
        self.daemons.append(self.v)
        w_home = surrogate_home(self.root / "w", 3, cost=0.4)
        self.w = Daemon(w_home.path, "-n", "60", "--bootstrap", self.r.addrs[0]).start()
        self.daemons.append(self.w)
        wait_for(lambda: self.status(self.v)["research"].startswith("done"), 120, 1.0, what="V done")
        self.v_baseline = self.status(self.v)["baseline"]["commit"]

    @staticmethod
    def status(d: Daemon, timeout: float = 15.0) -> dict:
        out = call(d.home / "control.sock", "status", timeout=timeout)
        assert out is not None and out["ok"], out
        return out["data"]

    def healthy(self, d: Daemon) -> dict:
        """Alive, `status` within 2 s, no traceback in its log."""
        assert d.proc is not None and d.proc.poll() is None, f"daemon died: {d.stderr()[-3000:]}"
        t0 = time.monotonic()
        st = self.status(d, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        assert "Traceback" not in d.stderr(), d.stderr()[-3000:]
        return st

    def check_all(self) -> dict:
        """Every node healthy, and every baseline in the swarm found by an honest node: the victims keep
        following each other (V adopts W's results), never the adversary."""
        out = {d.home.name: self.healthy(d) for d in self.daemons}
        honest = {d.peer_id for d in self.daemons}
        for name, s in out.items():
            finders = {step["found_by"] for step in s["baseline"]["lineage"]}
            assert finders <= honest | {"", None}, f"{name}'s baseline came from {finders - honest}"
        return out

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        for d in self.daemons:
            d.kill()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    s = Swarm(tmp_path_factory.mktemp("hostile"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def st(swarm: Swarm, d: Daemon) -> dict:
    return swarm.status(d)


async def in_thread(fn, *args):
    return await trio.to_thread.run_sync(fn, *args)


def liar_commit(root: Path, value_line: bytes) -> tuple[Workspace, str]:
    """A real constants-only experiment on the swarm's genesis, made by the attacker's own workspace."""
    home = init_home(root / f"liar-{value_line.hex()}")
    ws = Workspace(home.repo)
    train = ws.files_of(ws.baseline)["train.py"]
    new = train.replace(b"LEARNING_RATE = 0.002", value_line)
    assert new != train
    return ws, ws.commit_experiment(ws.baseline, {"train.py": new}, "lr", "0" * 40)


# --- 1. malformed git objects that hash to their ids ---------------------------------------------


async def test_malformed_git_objects_reach_no_repo_and_stop_no_node(swarm):
    """Sent to the relay only; before objects were parsed, the research node two hops away died too."""
    s0 = await in_thread(st, swarm, swarm.r)
    proto = s0["protocol_id"]
    bad_commit = GitObject.from_raw(1, b"tree nonsense\nthis is not a commit\n")
    blob = GitObject.from_raw(3, b"x = 1\n")
    gitlink_tree = GitObject.from_raw(2, b"160000 sub\x00" + bytes.fromhex(blob.oid))
    tree_says_dir = GitObject.from_raw(2, b"40000 train.py\x00" + bytes.fromhex(blob.oid))  # a blob as a tree
    commits = [bad_commit]
    served: dict[str, GitObject] = {o.oid: o for o in (bad_commit, blob, gitlink_tree, tree_says_dir)}
    for tree in (gitlink_tree, tree_says_dir):
        c = GitObject.from_raw(1, f"tree {tree.oid}\nparent {s0['genesis']}\nauthor a <a@b> 1 +0000\n"
                                  f"committer a <a@b> 1 +0000\n\nx\n".encode())
        served[c.oid] = c
        commits.append(c)

    async with adversary() as adv:
        adv.serve(OBJECTS_PROTOCOL, objects_answering(served))
        await adv.join(swarm.r.addrs[0], s0["swarm"])
        for i, c in enumerate(commits):
            r = receipt(adv.kp, protocol_id=proto, exp_id=random_hex40(), parent=s0["genesis"], commit=c.oid,
                        tree=random_hex40(), value=0.1, description=f"malformed {i}")
            inline = [c] if i == 0 else []  # the first inline, the others fetched from us
            await adv.publish(result(adv.kp, r, inline, total=3).to_wire())
            await trio.sleep(0.3)
        await trio.sleep(6)  # fetches and processing at R, gossip to V and W
    both = await in_thread(swarm.check_all)
    assert both["r"]["intake"]["rejected"] + both["r"]["intake"]["fetch_failures"] >= 1
    for d in swarm.daemons:
        repo = pygit2.Repository(str(d.home / "repo"))
        for o in (bad_commit, gitlink_tree):  # do not parse: never written
            assert pygit2.Oid(hex=o.oid) not in repo.odb, f"{o.oid} landed in {d.home.name}'s repo"
        # a tree naming a blob as a subtree may land before the blob does; its commit never completes
        refs = {str(repo.references[n].target) for n in repo.references if n.startswith("refs/p2p/exp/")}
        assert not refs & {c.oid for c in commits}


async def test_a_train_py_too_large_to_parse_is_refused_unparsed(swarm, tmp_path):
    """A result whose train.py is the genesis's plus 3 MiB of `x = 1` lines: Python's parser would spend
    about 6 CPU-s and 1.2 GB of memory on it (a git blob may be 16 MiB). V fetches it, refuses it by its
    size before any parse (research/constants.MAX_SOURCE_CHARS), answers throughout, and its memory peak
    does not move."""
    from p2p_research.research.constants import MAX_SOURCE_CHARS

    s0 = await in_thread(st, swarm, swarm.v)
    proto = s0["protocol_id"]
    home = init_home(tmp_path / "big")
    ws = Workspace(home.repo)
    train = ws.files_of(ws.baseline)["train.py"]
    big = train + b"x = 1\n" * (3 * 2**20 // 6)
    assert len(big) > MAX_SOURCE_CHARS
    commit = ws.commit_experiment(ws.baseline, {"train.py": big}, "pad", "0" * 40)
    served = {o.oid: o for o, _ in ws.new_objects_with_bases(commit)}
    assert max(len(o.data) for o in served.values()) == len(big)

    def peak_mb() -> float:
        for line in Path(f"/proc/{swarm.v.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    before = peak_mb()
    async with adversary() as adv:
        adv.serve(OBJECTS_PROTOCOL, objects_answering(served))
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        r = receipt(adv.kp, protocol_id=proto, exp_id=experiment_id(proto, ws.tree_of(commit)),
                    parent=ws.baseline, commit=commit, tree=ws.tree_of(commit), value=0.05,
                    description="a little padding")
        await adv.publish(result(adv.kp, r, [], total=len(served)).to_wire())

        def refused():
            return st(swarm, swarm.v)["swarm_stats"]["trust_rejected"] > s0["swarm_stats"]["trust_rejected"]

        await in_thread(lambda: wait_for(refused, 60, 0.5, what="V refuses the oversized train.py"))
    assert peak_mb() < before + 300, (before, peak_mb())
    assert "too large to parse" in swarm.v.stderr(), swarm.v.stderr()[-2000:]
    after = await in_thread(swarm.check_all)
    assert all(step["found_by"] != adv.peer_id for step in after["v"]["baseline"]["lineage"])


# --- 2. sybil confirmations ---------------------------------------------------------------------


async def test_confirmations_from_fresh_identities_do_not_make_a_lie_the_baseline(swarm, tmp_path):
    s0 = await in_thread(st, swarm, swarm.v)
    proto, v_id = s0["protocol_id"], s0["peer_id"]
    sybils = fresh_keys(12)
    pool = [pid_of(k) for k in sybils] + [v_id]
    for n in range(40):  # a change V is not designated to re-run at once: it must wait, then decide
        ws, commit = liar_commit(tmp_path, f"LEARNING_RATE = 0.00{n + 21}".encode())
        exp = experiment_id(proto, ws.tree_of(commit))
        if v_id not in assignment_order(exp, pool)[:3]:
            break
    objs, _, total = commit_objects(ws, commit, deltas=False)
    async with adversary() as adv:
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        r = receipt(adv.kp, protocol_id=proto, exp_id=exp, parent=ws.parent_of(commit), commit=commit,
                    tree=ws.tree_of(commit), value=0.05, description="LEARNING_RATE: much better, trust me")
        for k in sybils:  # votes first: a quorum is waiting when the result lands
            await adv.publish_as(k, verification(k, r, adv.peer_id).to_wire())
            await trio.sleep(0.05)
        await adv.publish(result(adv.kp, r, objs, total).to_wire())

        def refuted():
            return st(swarm, swarm.v)["swarm_stats"]["verified_refuted"] > s0["swarm_stats"]["verified_refuted"]

        await in_thread(lambda: wait_for(refuted, 60, 1.0, what="V re-runs the claim and refutes it"))
    after = await in_thread(swarm.check_all)
    v = after["v"]
    assert all(step["found_by"] != adv.peer_id for step in v["baseline"]["lineage"])


async def test_presence_from_sybils_another_protocol_or_in_another_name_changes_nothing(swarm):
    """Presence (network.announce = kept) is the cheapest message a peer can send: from a dozen fresh
    keys, under a made-up protocol, and in another peer's name. The node stays up, answers, keeps its
    baseline; the forgery is dropped by gossip, the foreign protocol by intake, the sybils only join the
    ring of members (bounded)."""
    s0 = await in_thread(st, swarm, swarm.v)
    proto, v_id = s0["protocol_id"], s0["peer_id"]
    sybils = fresh_keys(12)
    async with adversary() as adv:
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        for k in sybils:
            await adv.publish_as(k, Presence(pid_of(k), proto, time.time()).to_wire())
            await trio.sleep(0.05)
        await adv.publish(Presence(adv.peer_id, "cd" * 16, time.time()).to_wire())  # not this swarm's protocol
        await adv.publish(Presence(v_id, proto, time.time()).to_wire())             # in the victim's own name

        def seen():
            v = st(swarm, swarm.v)
            return (v["intake"].get("presence", 0) > s0["intake"].get("presence", 0)
                    and v["intake"]["rejected_by"].get("other_protocol", 0) > s0["intake"]["rejected_by"].get("other_protocol", 0)
                    and v["net"]["rejected"].get("peer_mismatch", 0) > s0["net"]["rejected"].get("peer_mismatch", 0))

        await in_thread(lambda: wait_for(seen, 30, 0.5, what="V takes the presences and rejects the two others"))
    await in_thread(swarm.check_all)  # alive, answering, every baseline found by an honest node


# --- 3. back-dated counter-claims ---------------------------------------------------------------


async def test_back_dated_counter_claims_take_at_most_the_yield_budget(swarm):
    s0 = await in_thread(st, swarm, swarm.w)
    yielded0 = s0["swarm_stats"]["yielded"]
    done0 = s0["experiments"]["local"]
    sybils = fresh_keys(20)
    countered = 0
    async with adversary() as adv:
        await adv.join(swarm.w.addrs[0], s0["swarm"])
        sub = adv.subscription(adv.topics[0])
        with trio.move_on_after(40):
            while countered < 15:  # enough to spend the yield budget several times over
                msg = await sub.get()
                try:
                    m = decode(msg.data)
                except Exception:  # noqa: BLE001 - not ours to judge here
                    continue
                for one in getattr(m, "messages", (m,)):
                    if type(one).__name__ != "Claim" or one.peer != s0["peer_id"]:
                        continue
                    for k in (adv.kp, sybils[countered % len(sybils)]):
                        c = claim(k, protocol_id=one.protocol_id, exp_id=one.exp_id, parent=one.parent,
                                  ts=one.ts - 3600)
                        if k is adv.kp:
                            await adv.publish(c.to_wire())
                        else:
                            await adv.publish_as(k, c.to_wire())
                    countered += 1
    after = await in_thread(swarm.check_all)
    w = after["w"]
    runs = w["experiments"]["local"] - done0
    yielded = w["swarm_stats"]["yielded"] - yielded0
    assert countered >= 10, "the attack needs W's claims"
    assert yielded <= 2 + 0.01 * max(runs, countered), (yielded, runs, countered)
    assert w["swarm_stats"]["yield_refused"] + w["intake"]["claims_refused"] >= 1


# --- 4. a flood under a fresh key per message through one connection -----------------------------


async def test_one_connection_cannot_flood_with_fresh_keys_and_junk_gets_it_banned(swarm):
    """Over-budget messages are only dropped (an honest relay may pass them on); invalid ones score."""
    # V's count of received messages also holds the honest nodes' own (W researches beside it): what
    # they published while the flood went on is taken off, so what is left is the flood's
    others = [d for d in swarm.daemons if d is not swarm.v]

    async def published() -> int:
        return sum([(await in_thread(st, swarm, d))["net"]["published"] for d in others])

    honest0 = await published()
    s0 = await in_thread(st, swarm, swarm.v)
    received0 = s0["net"]["received"]
    sent = 0
    t0 = time.monotonic()
    async with adversary() as adv:
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        keys = fresh_keys(1500)
        # until V has dropped 50 as over budget: how many of the flood reach V, directly or relayed by the
        # peers that dialled the adversary, depends on the machine's load (a loaded run here had V see 321
        # of 600 sent in 8 s, all within three connections' budgets), so a fixed flood may test nothing
        rejected0 = s0["net"]["rejected"].get("new_originators", 0)
        # peer exchange hands the adversary's address to the other nodes, which dial it: each of its
        # connections into the swarm is one budget (V also hears the flood relayed by R and W); the
        # most it had at once while it flooded, not only at the end (one may have closed meanwhile)
        connections = 0
        with trio.move_on_after(40):
            for k in keys:
                c = claim(k, protocol_id=s0["protocol_id"], exp_id=random_hex40(), parent=s0["genesis"], ts=time.time())
                await adv.publish_as(k, c.to_wire())
                sent += 1
                await trio.sleep(0.01)
                if sent % 50 == 0:
                    connections = max(connections, len(adv.host.get_connected_peers()))
                if sent >= 300 and sent % 50 == 0:
                    now = await in_thread(st, swarm, swarm.v)
                    if now["net"]["rejected"].get("new_originators", 0) - rejected0 >= 60:
                        break
        connections = max(connections, len(adv.host.get_connected_peers()))
        mid = await in_thread(st, swarm, swarm.v)
        honest = await published() - honest0
        elapsed = time.monotonic() - t0
        assert mid["net"]["bans"] == s0["net"]["bans"]  # budgets alone never ban
    async with adversary() as junk:
        await junk.join(swarm.v.addrs[0], s0["swarm"])
        junk_sent = 0
        with trio.move_on_after(60):  # junk (not even msgpack) until V closes the connection
            while junk.connected_to(s0["peer_id"]) and junk_sent < 2000:
                junk_sent += junk.send_to(s0["peer_id"], b"\xc1junk" + junk_sent.to_bytes(2, "big"))
                await trio.sleep(0.01)
        assert not junk.connected_to(s0["peer_id"]), f"still connected after {junk_sent} junk messages"
    with trio.fail_after(30):
        while (await in_thread(st, swarm, swarm.v))["net"]["bans"] < s0["net"]["bans"] + 1:
            await trio.sleep(0.5)
    after = await in_thread(swarm.check_all)
    v = after["v"]
    accepted = mid["net"]["received"] - received0 - honest  # what V took in of the flood
    assert sent >= 300
    assert 1 <= connections <= 3
    assert accepted <= connections * (128 + 2 * elapsed + 5), (accepted, sent, elapsed, connections)
    assert v["net"]["rejected"].get("new_originators", 0) - rejected0 >= 50, (v["net"]["rejected"], accepted, sent,
                                                                              elapsed, connections)
    assert v["net"]["bans"] >= s0["net"]["bans"] + 1


async def test_messages_whose_signatures_fail_get_their_connection_banned(swarm):
    """py-libp2p drops a message whose pubsub signature fails before any topic validator, with a debug
    line: before the guard (libp2p_compat guard `bad_signature`) a connection could send them without
    end and was never scored. Now each counts as a rejected message of its forwarder, which is banned.
    The attacker writes straight onto its connection and keeps going until the connection is closed:
    a mesh or an outbound queue on the attacker's side decides nothing."""
    s0 = await in_thread(st, swarm, swarm.v)
    victim = s0["peer_id"]
    sent = 0
    async with adversary(strict_signing=False) as bad:
        await bad.join(swarm.v.addrs[0], s0["swarm"])
        with trio.move_on_after(60):
            while bad.connected_to(victim) and sent < 2000:
                sent += bad.send_to(victim, b"\x81\xa1v\x01" + sent.to_bytes(2, "big"), signed=False)
                await trio.sleep(0.01)
        assert not bad.connected_to(victim), f"still connected after {sent} badly signed messages"
    with trio.fail_after(30):
        while (v := await in_thread(st, swarm, swarm.v))["net"]["bans"] < s0["net"]["bans"] + 1:
            await trio.sleep(0.5)
    rejected = v["net"]["rejected"].get("bad_signature", 0) - s0["net"]["rejected"].get("bad_signature", 0)
    assert rejected >= 50, v["net"]["rejected"]  # the forwarder score's threshold: one point each


# --- 5. idle streams: KAD and objects ------------------------------------------------------------


async def test_idle_streams_hold_no_slot_an_honest_peer_needs(swarm):
    """Six identities each open three idle KAD and three idle object streams (libp2p's own KAD handler
    allowed 12 for the whole node, with no read deadline): an honest peer is still served."""
    s0 = await in_thread(st, swarm, swarm.v)
    v_id = s0["peer_id"]
    async with AsyncExitStack() as stack:
        for _ in range(6):
            adv = await stack.enter_async_context(adversary())
            await adv.connect(swarm.v.addrs[0])
            for proto in (KAD_PROTOCOL, OBJECTS_PROTOCOL):
                for _ in range(3):
                    with trio.move_on_after(5):
                        try:
                            await adv.open_stream(v_id, proto)
                        except Exception:  # noqa: BLE001 - refused at once is the point
                            pass
        async with honest_node(swarm.v.addrs[0], s0["swarm"]) as net:
            t0 = time.monotonic()
            objs = await net.fetch_objects(v_id, [s0["baseline"]["commit"]], timeout=5)
            assert [o.oid for o in objs] == [s0["baseline"]["commit"]]
            assert time.monotonic() - t0 < 3
            exps = [e["id"] for e in (await in_thread(lambda: swarm.v.json("experiments")))
                    if e["origin"] == "local" and e["kind"] == "experiment"]
            rec = None
            with trio.move_on_after(10):
                rec = await net.dht.get(exps[0])
            assert rec is not None, "an honest DHT lookup was locked out"
    v = (await in_thread(swarm.check_all))["v"]
    refused, waited = v["net"]["streams_refused"], v["net"]["streams_waited"]
    # each identity's third stream got no slot at once: an object stream is refused; a KAD stream waits up
    # to 3 s for one of its two (StreamLimits.wait_s), then is refused, or served once an idle one was reset
    assert waited.get(KAD_PROTOCOL, 0) >= 6 and refused.get(OBJECTS_PROTOCOL, 0) >= 6, (waited, refused)


# --- 6. multistream-select with an unbounded length ---------------------------------------------


async def test_a_huge_multistream_length_prefix_costs_nothing(swarm):
    from libp2p.utils.varint import encode_uvarint

    port = int(swarm.v.addrs[0].split("/")[4])
    rss0 = _rss_mb(swarm.v)
    for n in (2**33, 2**40):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        line = b"/multistream/1.0.0\n"
        try:
            await s.send_all(encode_uvarint(len(line)) + line + encode_uvarint(n))
            with trio.move_on_after(3):
                for _ in range(100):
                    await s.send_all(b"y" * 1_000_000)
        except trio.BrokenResourceError:
            pass  # the node reset the connection: the point
        finally:
            await s.aclose()
    v = (await in_thread(swarm.check_all))["v"]
    assert v["net"]["multistream_refused"] >= 2
    assert _rss_mb(swarm.v) - rss0 < 64


def _rss_mb(d: Daemon) -> float:
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_ihave_and_iwant_carry_at_most_five_thousand_ids_each(swarm):
    """An IHAVE of 20,000 made-up message ids (0.4 MB: py-libp2p decodes each, looks it up and asks
    for all it lacks in one IWANT) and an IWANT of 20,000: the node looks at the first 5,000 of each
    (libp2p_compat/guards.py, as go-libp2p's GossipSubMaxIHaveLength), and its IWANT back holds 5,000."""
    from google.protobuf.message import DecodeError

    s0 = await in_thread(st, swarm, swarm.v)
    asked_back: list[int] = []
    for _ in range(3):  # the attacker's own py-libp2p sometimes fails to decode a reply under load (seen at
        try:            # the end of the test, and once before the IWANT came back: CI-like load, 2 cores)
            await _ask_for_the_moon(swarm, await in_thread(st, swarm, swarm.v), asked_back)
        except* DecodeError:
            pass
        if asked_back:
            break
    assert asked_back == [5000], asked_back
    after = await in_thread(swarm.check_all)
    dropped = after["v"]["net"]["gossip_control_ids_dropped"] - s0["net"].get("gossip_control_ids_dropped", 0)
    assert dropped >= 30_000, dropped


async def _ask_for_the_moon(swarm, s0: dict, asked_back: list[int]) -> None:
    from libp2p.peer.id import ID

    async with adversary() as adv:
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        router = adv.ps.router

        async def captured(msg, sender):  # the node's IWANT, before this process's own guard sees it
            asked_back.append(len(msg.messageIDs))
        router.handle_iwant = captured
        v = ID.from_base58(s0["peer_id"])
        await router.emit_ihave(adv.topics[0], [os.urandom(20) for _ in range(20_000)], v)
        await router.emit_iwant([os.urandom(20) for _ in range(20_000)], v)
        before = s0["net"].get("gossip_control_ids_dropped", 0)
        with trio.fail_after(30):  # the IHAVE's 15,000 ids dropped, and the IWANT's (each in its own RPC)
            while not asked_back or (await in_thread(st, swarm, swarm.v))["net"]["gossip_control_ids_dropped"] \
                    - before < 30_000:
                await trio.sleep(0.3)


def test_a_hostile_about_in_the_peer_exchange_changes_nothing(tmp_path):
    """The peer exchange's `about` (swarm, protocol, budget) is peer input: junk types, a thousand keys,
    huge and control-character strings are dropped or bounded, and the node stays up and answers."""
    from libp2p.network.stream.exceptions import StreamError

    from p2p_research.net.framing import FrameError, frame, pack, read_frame, reset_quietly
    from p2p_research.net.peers import PEERS_PROTOCOL

    home = init_home(tmp_path / "v")
    d = Daemon(home.path, "--no-research").start()
    junk = [
        "not a map", 12, None, ["protocol", "x"],
        {f"k{i}": "v" for i in range(1000)},
        {"protocol": "a" * 100_000, "budget": 5, "swarm": {"nested": "map"}},
        {"protocol": "\x1b[31mred\x00", "budget": "9 tokens\n", "swarm": ""},
        {"protocol": "f" * 40, "budget": "[/]1 tokens", "extra": "ignored"},  # well-formed: kept, bounded
    ]

    async def send_all() -> None:
        async with adversary() as adv:
            await adv.connect(d.addrs[0])
            for about in junk:
                with trio.fail_after(10):
                    stream = await adv.open_stream(d.peer_id, PEERS_PROTOCOL)
                    try:
                        await stream.write(frame(pack({"addrs": [], "about": about})))
                        await read_frame(stream, 64 * 1024)
                    except (FrameError, StreamError):
                        pass  # refused (an oversized frame is reset unanswered): that is allowed
                    finally:
                        await reset_quietly(stream)
                await trio.sleep(0.2)  # one exchange stream per peer at a time
            with trio.fail_after(10):
                while not any(p["peer_id"] == adv.peer_id and p["protocol"] for p in d.json("peers")):
                    await trio.sleep(0.2)
            (mine,) = [p for p in d.json("peers") if p["peer_id"] == adv.peer_id]
            assert mine["protocol"] == "f" * 40 and mine["budget"] == "[/]1 tokens" and mine["same_protocol"] is False
            # the peer's words reach the tables as text, never as markup (Rich raised on "[/]"); read while the
            # peer is still connected: `peers` lists connected peers only, and drops this one once it leaves
            wide = await trio.to_thread.run_sync(lambda: run_cli(
                ["peers", "--home", home.path], timeout=60,
                env={**os.environ, "COLUMNS": "250"}))  # a table as wide as it needs
            assert wide.returncode == 0, wide.stderr[-2000:]
            (row,) = [line for line in wide.stdout.splitlines() if adv.peer_id[:16] in line]
            assert "other ([/]1 tokens)" in row, wide.stdout

    try:
        trio.run(send_all)
        status = d.json("status")
        assert status["peer_id"] == d.peer_id and d.proc.poll() is None
        assert all(len(o["protocol"]) <= 80 for o in status["other_protocols"])
        d.cli("status")
    finally:
        d.stop()
        d.kill()


def test_a_peer_announcing_made_up_swarms_cannot_crowd_a_real_swarm_out_of_a_relay(tmp_path):
    """A real peer subscribes to 200 made-up swarm topics (and junk topics) at a relay before any honest
    node arrives: the relay joins at most MAX_SWARMS of them, then gives a research node's swarm a
    place at once (one peer with one swarm outweighs one peer with dozens), stays up and stores the
    research node's results."""
    from p2p_research.net.topics import MAX_SWARMS, topic_names

    relay = Daemon(init_home(tmp_path / "relay").path, "--no-research").start()
    research = None

    async def flood_then_watch() -> None:
        nonlocal research
        async with adversary() as adv:
            for i in range(200):
                await adv.ps.subscribe(topic_names(f"{i:016x}")[0])
            for junk in ("/p2p-research/NOTHEX/exp/1", "/x" * 500, "/p2p-research/ab/exp/9"):
                await adv.ps.subscribe(junk)
            await adv.connect(relay.addrs[0])
            with trio.fail_after(30):
                while len(relay.json("status")["swarms"]) < MAX_SWARMS:
                    await trio.sleep(0.5)
            home = surrogate_home(tmp_path / "v", 1, cost=0.3)
            research = Daemon(home.path, "--bootstrap", relay.addrs[0], "-n", "3").start()
            swarm = research.json("status")["swarm"]
            with trio.fail_after(60):
                while not any(s["swarm"] == swarm for s in relay.json("status")["swarms"]):
                    await trio.sleep(0.5)
            st = relay.json("status")
            assert len(st["swarms"]) <= MAX_SWARMS + 1   # + stored protocols whose swarm nobody uses now
            assert all(s["swarm"] != "" or s["peers"] == 0 for s in st["swarms"])
            with trio.fail_after(90):
                while not any(e["peer"] == research.peer_id for e in relay.json("experiments")):
                    await trio.sleep(0.5)

    try:
        trio.run(flood_then_watch)
        assert relay.proc.poll() is None and relay.json("status")["peer_id"] == relay.peer_id
    finally:
        for d in (relay, research):
            if d is not None:
                d.stop()
                d.kill()


def test_hostile_relay_reservations_dial_backs_and_junk_change_nothing(tmp_path):
    """Against a relay daemon, from a real peer: 20 reservations under made-up peer ids (0.8.1 would
    grant each a slot), a dial-back request aimed at a third party's address, and junk bytes on every
    NAT protocol. The relay holds at most the attacker's own reservation, dials no third party, and
    stays up and answers."""
    import socket

    from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
    from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNATMessage
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
    from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
    from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

    from p2p_research.net.framing import reset_quietly

    relay = Daemon(init_home(tmp_path / "relay").path, "--no-research").start()
    bystander = socket.socket()
    bystander.bind(("127.0.0.2", 0))  # a third party the attacker would like the relay to dial
    bystander.listen(8)
    bystander.setblocking(False)
    target = f"/ip4/127.0.0.2/tcp/{bystander.getsockname()[1]}"
    verdicts: list[int] = []

    async def attack() -> None:
        async with adversary() as adv:
            await adv.connect(relay.addrs[0])
            pid = ID.from_base58(relay.peer_id)
            for kp in fresh_keys(20):
                with trio.fail_after(10):
                    try:  # the relay may also refuse the stream: HOP streams are limited per peer
                        stream = await adv.host.new_stream(pid, [HOP_PROTOCOL_ID])
                        msg = HopMessage(type=HopMessage.RESERVE)
                        msg.peer.id = ID.from_pubkey(kp.public_key).to_bytes()
                        await write_delimited_msg(stream, msg)
                        await read_delimited_msg(stream, HopMessage)
                        await stream.close()
                    except Exception:  # noqa: BLE001
                        pass
            with trio.fail_after(30):
                req = AutoNATMessage()
                req.type = AutoNATMessage.DIAL
                req.dial.peer.id = ID.from_base58(adv.peer_id).to_bytes()
                req.dial.peer.addrs.append(__import__("multiaddr").Multiaddr(target).to_bytes())
                stream = await adv.host.new_stream(pid, [AUTONAT_PROTOCOL_ID])
                await stream.write(encode_varint_prefixed(req.SerializeToString()))
                resp = AutoNATMessage()
                resp.ParseFromString(await read_varint_prefixed_bytes_limited(stream, 4096))
                verdicts.append(resp.dialResponse.status)
                await reset_quietly(stream)
            for proto in (HOP_PROTOCOL_ID, STOP_PROTOCOL_ID, AUTONAT_PROTOCOL_ID, DCUTR_PROTOCOL_ID):
                for junk in (b"\xff" * 64, b"\x05\x08\x01\x12\x01", b"\x80" * 10):
                    with trio.fail_after(10):
                        try:
                            stream = await adv.host.new_stream(pid, [proto])
                            await stream.write(junk)
                            with trio.move_on_after(1):
                                await stream.read(100)
                        except Exception:  # noqa: BLE001 - a reset is a fine answer to junk
                            pass
                        finally:
                            await reset_quietly(stream)

    try:
        trio.run(attack)
        st = relay.json("status")
        assert st["peer_id"] == relay.peer_id and relay.proc.poll() is None
        assert st["reachability"]["relay_service"] and st["reachability"]["reservations_held"] <= 1
        assert verdicts and verdicts[0] != AutoNATMessage.OK
        try:
            bystander.accept()
            raise AssertionError("the relay dialed a third party for a peer")
        except BlockingIOError:
            pass
    finally:
        bystander.close()
        relay.stop()
        relay.kill()
    assert "Traceback" not in relay.stderr()


def test_a_relay_s_reservations_are_bounded_per_address_and_subnet_and_end_with_the_connection(tmp_path):
    """Sybils on three hosts of one /24 ask a relay daemon for a reservation each, four identities per
    host (0.8.1 granted 127, and they kept blocking an honest newcomer behind NAT after they had gone).
    The relay grants at most 4 per address and 8 per /24; an honest newcomer on another subnet gets a
    slot while the sybils hold theirs, and once they disconnect a newcomer on their own /24 gets one."""
    from libp2p import generate_new_ed25519_identity, new_host
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
    from multiaddr import Multiaddr

    relay = Daemon(init_home(tmp_path / "relay").path, "--no-research").start()
    ok = to_proto_status(StatusCode.OK)

    async def reserve_from(stack: AsyncExitStack, source_ip: str) -> int:
        """A fresh identity whose one connection to the relay leaves from `source_ip` (the attacker's
        own TCP stack picks its source address), asking for a reservation: the answer's status."""
        host = new_host(key_pair=generate_new_ed25519_identity())
        await stack.enter_async_context(host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        stack.push_async_callback(host.close)  # runs before the host's service stops: its connections close
        plain = trio.open_tcp_stream
        trio.open_tcp_stream = lambda h, p, **kw: plain(h, p, local_address=source_ip, **kw)
        try:
            await host.connect(info_from_p2p_addr(Multiaddr(relay.addrs[0])))
        finally:
            trio.open_tcp_stream = plain
        with trio.fail_after(10):
            stream = await host.new_stream(ID.from_base58(relay.peer_id), [HOP_PROTOCOL_ID])
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            resp = await read_delimited_msg(stream, HopMessage)
            await stream.close()
        return resp.status

    granted: dict[str, list[bool]] = {}

    async def attack() -> None:
        async with AsyncExitStack() as sybils:
            for ip in ("127.0.5.1", "127.0.5.2", "127.0.5.3"):
                for _ in range(5):
                    granted.setdefault(ip, []).append(await reserve_from(sybils, ip) == ok)
            held = (await in_thread(relay.json, "status"))["reachability"]
            assert held["reservations_held"] == 8 and held["reservations_refused_by_address"] == 7, held
            async with AsyncExitStack() as honest:
                granted["newcomer"] = [await reserve_from(honest, "127.0.9.1") == ok]
        # the sybils are gone: their reservations end with their connections
        with trio.fail_after(20):
            while (await in_thread(relay.json, "status"))["reachability"]["reservations_held"] > 0:
                await trio.sleep(0.5)
        async with AsyncExitStack() as late:
            granted["late, the sybils' /24"] = [await reserve_from(late, "127.0.5.9") == ok]

    try:
        trio.run(attack)
        assert granted["127.0.5.1"] == [True] * 4 + [False]  # 4 per address
        assert granted["127.0.5.2"] == [True] * 4 + [False]  # 8 per /24
        assert granted["127.0.5.3"] == [False] * 5
        assert granted["newcomer"] == [True] and granted["late, the sybils' /24"] == [True]
        assert relay.proc.poll() is None and "Traceback" not in relay.stderr()
        assert "relay reservation refused to" in relay.stderr()
    finally:
        relay.stop()
        relay.kill()


def test_a_peer_announcing_sibling_protocols_holds_one_place_at_most_and_a_wrong_swarm_none(tmp_path):
    """A research node follows sibling protocols (the same genesis, another protocol) that connected peers
    announce in the peer exchange. One hostile connection announces a swarm of another genesis (never
    followed), then ten made-up protocols one after another with this genesis's swarm: the node follows at
    most one at a time (the one announced now). On it, a discarded result is refused with its reason and
    a kept one is stored under its own protocol, never this node's. When the peer leaves, so does the
    sibling; the node stays up throughout."""
    from libp2p.network.stream.exceptions import StreamError
    from libp2p.peer.id import ID

    from p2p_research.net.framing import FrameError, frame, pack, read_frame, reset_quietly
    from p2p_research.net.peers import PEERS_PROTOCOL
    from p2p_research.research.ids import swarm_id_of

    home = surrogate_home(tmp_path / "v", 1, cost=0.5)
    d = Daemon(home.path, "-n", "2").start()
    st0 = d.json("status")
    genesis, own = st0["genesis"], st0["protocol_id"]
    made_up = [random_hex40() for _ in range(10)]
    most: list[int] = [0]

    async def followed() -> list[str]:
        sibs = (await in_thread(d.json, "status"))["siblings"]
        most[0] = max(most[0], len(sibs))
        return [s["protocol"] for s in sibs]

    async def announce(adv, about: dict) -> None:
        with trio.fail_after(10):
            stream = await adv.open_stream(d.peer_id, PEERS_PROTOCOL)
            try:
                await stream.write(frame(pack({"addrs": [], "about": about})))
                await read_frame(stream, 64 * 1024)
            except (FrameError, StreamError):
                pass
            finally:
                await reset_quietly(stream)

    async def attack() -> None:
        async with adversary() as adv:
            await adv.connect(d.addrs[0])
            other_genesis = swarm_id_of("8" * 40, made_up[0])
            await announce(adv, {"protocol": made_up[0], "swarm": other_genesis, "budget": "1 s", "role": "research"})
            for _ in range(10):  # five looks of the follower
                assert await followed() == []
                await trio.sleep(0.5)
            for p in made_up:
                await announce(adv, {"protocol": p, "swarm": swarm_id_of(genesis, p), "budget": "1 s",
                                     "role": "research"})
                await followed()
                await trio.sleep(0.5)
            last = made_up[-1]
            with trio.fail_after(15):
                while await followed() != [last]:
                    await trio.sleep(0.3)
            adv.swarm = swarm_id_of(genesis, last)
            await adv.ps.subscribe(adv.topics[0])
            await adv.ps.wait_for_mesh(ID.from_base58(d.peer_id), adv.topics[0], timeout=30)
            kp = adv.kp
            for status in ("discarded", "kept"):
                r = receipt(kp, protocol_id=last, exp_id=random_hex40(), parent=genesis, commit=random_hex40(),
                            tree=random_hex40(), value=0.5, status=status)
                await adv.publish(result(kp, r).to_wire())
            with trio.fail_after(20):
                while True:
                    st = await in_thread(d.json, "status")
                    if st["intake"]["rejected_by"].get("sibling_not_kept", 0) >= 1 and st["intake"].get(
                            "sibling_results", 0) >= 1:
                        break
                    await trio.sleep(0.3)
        with trio.fail_after(15):  # the peer left: nobody announces its protocol any more
            while await followed():
                await trio.sleep(0.3)

    try:
        trio.run(attack)
        assert most[0] == 1, f"one connection held {most[0]} sibling places"
        st = d.json("status")
        assert st["peer_id"] == d.peer_id and d.proc.poll() is None and st["protocol_id"] == own
        assert {b["commit"] for b in st["baseline"]["lineage"]} and all(
            step["found_by"] != "" for step in st["baseline"]["lineage"])
        db = sqlite3.connect(f"file:{home.ledger}?mode=ro", uri=True)
        rows = db.execute("SELECT protocol_id, status FROM runs WHERE origin='peer'").fetchall()
        bases = {p for (p,) in db.execute("SELECT protocol_id FROM baselines")}
        db.close()
        assert rows == [(made_up[-1], "kept")] and bases == {own}
        assert "Traceback" not in d.stderr()
    finally:
        d.stop()
        d.kill()


def _hold_every_slot(tmp_path: Path, hosts: list[str], per_host: int, asks: int) -> dict:
    """A node V (no research) and sybils: `per_host` identities on each address of `hosts`, each holding
    what KAD and object streams it can (two of each, fed a byte every 4 s and re-opened as soon as V
    resets one). Then an honest peer on another subnet (127.0.9.1) asks V `asks` FIND_NODE lookups and
    `asks` object fetches. Then, the sybils gone, 8 identities on the first host connect again.
    Returns the counts, what was answered, V's `status` and its stderr."""
    import contextvars

    import varint
    from libp2p import generate_new_ed25519_identity, new_host
    from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.utils import read_varint_prefixed_bytes
    from multiaddr import Multiaddr

    home = init_home(tmp_path / "v")
    genesis = Workspace(home.repo).baseline
    v = Daemon(home.path, "--no-research").start()
    source: contextvars.ContextVar[str | None] = contextvars.ContextVar("source", default=None)
    plain = trio.open_tcp_stream

    def from_source(h, p, **kw):  # the TCP source address of the task's host (a context variable)
        ip = source.get()
        return plain(h, p, local_address=ip, **kw) if ip else plain(h, p, **kw)

    counts = {"connected": 0, "refused": 0}

    async def hold(host, proto: str) -> None:
        while True:
            try:
                stream = await host.new_stream(ID.from_base58(v.peer_id), [proto])
                while True:
                    await stream.write(b"\x80")  # a varint that never ends, a byte every 4 s
                    await trio.sleep(4)
            except Exception:  # noqa: BLE001 - reset by the node: take the slot again
                await trio.sleep(0.3)

    async def sybil(stack: AsyncExitStack):
        host = new_host(key_pair=generate_new_ed25519_identity())
        await stack.enter_async_context(host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        stack.push_async_callback(host.close)
        try:
            with trio.fail_after(10):
                await host.connect(info_from_p2p_addr(Multiaddr(v.addrs[0])))
        except Exception:  # noqa: BLE001 - refused is the point
            counts["refused"] += 1
            return None
        counts["connected"] += 1
        return host

    async def find_node(host) -> bool:
        with trio.move_on_after(5):
            try:
                stream = await host.new_stream(ID.from_base58(v.peer_id), [KAD_PROTOCOL])
                msg = KadMessage(type=KadMessage.MessageType.FIND_NODE, key=os.urandom(32)).SerializeToString()
                await stream.write(varint.encode(len(msg)) + msg)
                reply = KadMessage()
                reply.ParseFromString(await read_varint_prefixed_bytes(stream))
                await stream.close()
                return reply.type == KadMessage.MessageType.FIND_NODE
            except Exception:  # noqa: BLE001 - refused or reset: a failed lookup
                return False
        return False

    answered = {"find_node": 0, "objects": 0}

    async def attack() -> None:
        trio.open_tcp_stream = from_source
        try:
            async with AsyncExitStack() as stack:
                sybils = []
                for ip in hosts:
                    source.set(ip)  # this host's sybils; their tasks keep it
                    sybils += [h for _ in range(per_host) if (h := await sybil(stack)) is not None]
                async with trio.open_nursery() as nursery:
                    for host in sybils:
                        for proto in (KAD_PROTOCOL, OBJECTS_PROTOCOL) * 2:
                            nursery.start_soon(hold, host, proto)
                    await trio.sleep(3)  # the sybils' streams are open
                    source.set("127.0.9.1")  # the honest peer, on another subnet
                    swarm_id = (await in_thread(v.json, "status"))["swarm"]
                    async with honest_node(v.addrs[0], swarm_id) as net:
                        for _ in range(asks):
                            answered["find_node"] += await find_node(net.host)
                        for _ in range(asks):
                            try:
                                objs = await net.fetch_objects(v.peer_id, [genesis], timeout=5)
                                answered["objects"] += [o.oid for o in objs] == [genesis]
                            except Exception:  # noqa: BLE001 - refused: a failed fetch
                                pass
                    nursery.cancel_scope.cancel()
            # the sybils are gone: their host's slots are free again (a slot lives with its connection)
            await trio.sleep(2)
            async with AsyncExitStack() as stack:
                source.set(hosts[0])
                back = [h for _ in range(8) if (h := await sybil(stack)) is not None]
                counts["back"] = len(back)
        finally:
            trio.open_tcp_stream = plain

    try:
        trio.run(attack)
        out = {"counts": counts, "answered": answered, "status": v.json("status"), "stderr": v.stderr()}
        assert v.proc.poll() is None and "Traceback" not in out["stderr"]
        return out
    finally:
        v.stop()
        v.kill()


def test_seventeen_identities_on_one_host_leave_an_honest_peer_its_lookups_and_fetches(tmp_path):
    """Identities are free, addresses are not. Seventeen identities from one host each connect and
    hold what streams they can (two KAD and two object streams each, fed a byte at a time and
    re-opened as soon as the node resets one): they took every slot of the node before (an honest
    newcomer got 2-3 of 40 FIND_NODE answers and 11-13 of 40 object fetches). Now one address holds at
    most 8 inbound connections and a quarter of each protocol's streams (net/addresses.py), and an
    honest peer on another subnet gets >= 95 % of its lookups and fetches answered."""
    r = _hold_every_slot(tmp_path, ["127.0.7.1"], 17, asks=40)
    counts, answered, net = r["counts"], r["answered"], r["status"]["net"]
    assert counts["back"] == 8, counts
    assert counts["connected"] == 8 + 8 and counts["refused"] == 9, counts
    assert answered["find_node"] >= 38 and answered["objects"] >= 38, answered
    assert net["inbound_refused_by_address"] >= 9, net
    assert net["streams_refused_by_address"].get(KAD_PROTOCOL, 0) > 0, net
    assert "refused an inbound connection from 127.0.7.1" in r["stderr"]


def test_sybils_on_four_subnets_give_way_to_a_newcomer_from_a_fifth(tmp_path):
    """Addresses in a few subnets are still cheap: four hosts, each on a /24 of its own with four
    identities, hold every KAD slot (4 x 8 of 32) and every object slot (4 x 4 of 16) within the limits
    per address and subnet, and an honest peer on a fifth /24 got 0 of 20 lookups and fetches answered
    with those limits alone. A stream from a subnet holding fewer of a full protocol's slots now takes
    the oldest slot of the subnet holding the most (net/addresses.py `yielding_subnet`), so the
    newcomer gets >= 95 % of both, and the sybils' streams are what gave way."""
    r = _hold_every_slot(tmp_path, ["127.0.7.1", "127.0.17.1", "127.0.27.1", "127.0.37.1"], 4, asks=20)
    answered, net = r["answered"], r["status"]["net"]
    assert r["counts"]["connected"] == 16 + 8, r["counts"]  # the sybils, then 8 again on the first host
    assert answered["find_node"] >= 19 and answered["objects"] >= 19, answered
    assert net["streams_preempted"].get(KAD_PROTOCOL, 0) >= 1, net  # a sybil's stream gave way
    assert net["streams_preempted"].get(OBJECTS_PROTOCOL, 0) >= 1, net


def test_a_peer_exchange_full_of_one_subnet_does_not_eclipse_a_node(tmp_path):
    """Eclipse: a node's only bootstrap is an attacker, whose peer exchange hands out twelve hosts of its
    own /24 (all real and listening) and four honest hosts, each on a /24 of its own. A node that dials
    exchanged addresses at random ends with about one honest peer among its six; now it dials the least
    represented subnets first and at most two connections per subnet (net/peers.py), so it reaches all
    four honest hosts and at most two of the attacker's /24."""
    from p2p_research.net.peers import PEERS_PROTOCOL

    hostile = [f"127.0.8.{i}" for i in range(2, 14)]
    honest = [f"127.0.{20 + i}.1" for i in range(4)]
    result: dict[str, list[str]] = {}
    addrs: dict[str, list[str]] = {}

    async def attack() -> None:
        async with AsyncExitStack() as stack:
            attacker, attacker_addr = await listening_host(stack, "127.0.8.1")
            # the attacker's answer: its sybils, and a few honest hosts
            attacker.set_stream_handler(PEERS_PROTOCOL, exchange_answering(lambda: addrs["sybils"] + addrs["honest"]))
            addrs["sybils"] = [(await listening_host(stack, ip))[1] for ip in hostile]
            addrs["honest"] = [(await listening_host(stack, ip))[1] for ip in honest]
            v = Daemon(init_home(tmp_path / "v").path, "--no-research", "--bootstrap", attacker_addr)
            await in_thread(v.start)
            try:
                def settled() -> bool:
                    return len(v.json("peers")) >= 6
                await in_thread(lambda: wait_for(settled, 60, 0.5, what="V has six peers"))
                await trio.sleep(4)  # another round of discovery: nothing more may be dialed
                result["peers"] = [a for p in v.json("peers") for a in p["addrs"][:1]]
                result["status"] = v.json("status")["net"]
                assert v.proc.poll() is None and "Traceback" not in v.stderr()
            finally:
                await in_thread(v.stop)
                v.kill()

    trio.run(attack)
    ips = [a.split("/")[2] for a in result["peers"]]
    assert all(ip in ips for ip in honest), ips
    assert sum(ip.startswith("127.0.8.") for ip in ips) <= 2, ips


def test_a_bootstrap_list_that_is_all_the_attacker_s_does_not_cut_a_node_off_from_peers_it_knew(tmp_path):
    """Eclipse by bootstrap: V knew an honest peer H, then restarts with only an attacker to bootstrap
    from, whose peer exchange hands out only its own hosts (in three /24s, enough to fill V's six
    connections). Before, V met only the attacker's hosts; now it remembers the peers of its last run
    (daemon/known_peers.py, `peers.json`) and dials them whatever the bootstrap list says."""
    import json as _json

    from p2p_research.net.peers import PEERS_PROTOCOL

    h = Daemon(init_home(tmp_path / "h").path, "--no-research", "--listen", "/ip4/127.0.30.1/tcp/0").start()
    v_home = init_home(tmp_path / "v").path
    v = None
    try:
        v = Daemon(v_home, "--no-research", "--bootstrap", h.addrs[0]).start()
        wait_for(lambda: any(p["peer_id"] == h.peer_id for p in v.json("peers")), 30, 0.5, what="V meets H")
        wait_for(lambda: any(p["peer_id"] == h.peer_id and p["role"] for p in v.json("peers")), 30, 0.5,
                 what="V and H exchanged peers")
        v.stop()
        remembered = _json.loads((v_home / "peers.json").read_text())["peers"]
        assert any(a.endswith(f"/p2p/{h.peer_id}") and "/ip4/127.0.30.1/" in a for a in remembered), remembered
        (v_home / "listen.json").unlink()  # V comes back at another port: H, which knew it, cannot dial it
        sybils: list[str] = []
        result: dict[str, list[str]] = {}

        async def attack() -> None:
            async with AsyncExitStack() as stack:
                attacker, attacker_addr = await listening_host(stack, "127.0.9.1")
                attacker.set_stream_handler(PEERS_PROTOCOL, exchange_answering(lambda: sybils))  # its own hosts only
                sybils.extend([(await listening_host(stack, f"127.0.{net}.{i}"))[1] for net in (9, 10, 11) for i in (2, 3, 4)])
                again = Daemon(v_home, "--no-research", "--bootstrap", attacker_addr)
                await in_thread(again.start)
                try:
                    def met_h() -> bool:
                        return any(p["peer_id"] == h.peer_id for p in again.json("peers"))
                    await in_thread(lambda: wait_for(met_h, 30, 0.5, what="V meets H again"))
                    result["peers"] = [p["peer_id"] for p in again.json("peers")]
                    assert "connected to remembered peer" in again.stderr(), again.stderr()[-2000:]
                finally:
                    await in_thread(again.stop)
                    again.kill()

        trio.run(attack)
        assert h.peer_id in result["peers"]
    finally:
        for d in (v, h):
            if d is not None:
                d.stop()
                d.kill()


async def test_an_rpc_carries_at_most_256_published_messages(swarm):
    """pubsub starts a task and checks a signature for every message of an RPC, however many: ten RPCs
    of 4,800 messages with made-up signatures (each just under the 1 MiB cap) cost a daemon 84 CPU-s and
    kept its `status` waiting 34 s, and no score or ban follows (libp2p drops them before any
    validator). The node keeps the first 256 of an RPC (libp2p_compat guard `publish_per_rpc`); ten such
    RPCs then cost it 0.4 CPU-s (/tmp probe, the same daemon without research). Since the guard
    `bad_signature` the kept ones' failed signatures score the connection, which is banned after the
    first RPC or two, so the rest never arrive."""
    import varint
    from libp2p.peer.id import ID
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12
    from libp2p.pubsub.pb import rpc_pb2

    s0 = await in_thread(st, swarm, swarm.v)
    async with adversary() as adv:
        await adv.join(swarm.v.addrs[0], s0["swarm"])
        # a pubsub stream of the test's own: yamux writes an RPC of 1 MiB in window-sized chunks, and the
        # attacker's pubsub wrote its own RPCs (subscriptions, GRAFT) between them on its stream, so the
        # node read garbage (DecodeError) and counted nothing (seen once, under load)
        stream = await adv.host.new_stream(ID.from_base58(s0["peer_id"]), [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID])
        sent = 0
        for k in range(10):
            rpc = rpc_pb2.RPC()
            for i in range(4800):
                m = rpc.publish.add(data=os.urandom(8), topicIDs=[adv.topics[0]], from_id=adv.host.get_id().to_bytes(),
                                    seqno=(k * 4800 + i).to_bytes(8, "big"), signature=os.urandom(64),
                                    key=adv.kp.public_key.serialize())
                assert m.data
            data = rpc.SerializeToString()
            assert len(data) < 1 << 20
            try:
                await stream.write(varint.encode(len(data)) + data)
            except Exception:  # noqa: BLE001 - the node reset the stream (its byte budget per connection)
                break
            sent += 1
        assert sent >= 1, sent
        before = s0["net"].get("publish_dropped_per_rpc", 0)
        dropped, v = 0, s0
        with trio.move_on_after(30):  # the last RPC written may be the one the node reset the stream on
            while (dropped := (v := await in_thread(st, swarm, swarm.v))["net"]["publish_dropped_per_rpc"] - before) \
                    < 4800 - 256 or v["net"]["bans"] <= s0["net"]["bans"]:
                await trio.sleep(0.3)
        assert dropped >= 4800 - 256 and dropped % (4800 - 256) == 0, (sent, dropped)
        assert v["net"]["bans"] >= s0["net"]["bans"] + 1 and v["net"]["rejected"].get("bad_signature", 0) >= 10, v["net"]
    await in_thread(swarm.check_all)  # alive, `status` within 2 s, baselines untouched
