"""Swarm semantics with real daemons on loopback (surrogate objective, so experiments take a second)."""

import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from adversary import honest_node
from conftest import ROOT
from daemon_helpers import Daemon, stop_all, surrogate_home, wait_for

from p2p_research.target import TARGET_DIR

# Its daemons mostly wait on each other (serially: 49 CPU-s in 183 s here), so its tests share one worker:
# spread over all three, they waited side by side and left the cores half idle for a minute and a half.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("swarm")]

AGENT = f"{sys.executable} {ROOT / 'tests' / 'fixtures' / 'code_change_agent.py'}"
TINY_SPACE = """```toml search-space
[QK_NORM]
kind = "bool"

[BIAS]
kind = "bool"

[NORM]
kind = "choice"
choices = ["layernorm", "rmsnorm"]
```
"""


def local_experiments(home):
    db = sqlite3.connect(f"file:{home.ledger}?mode=ro", uri=True)
    rows = db.execute("SELECT exp_id, status FROM runs WHERE origin='local' AND kind='experiment'").fetchall()
    db.close()
    return rows


def research_done(d):
    return d.json("status")["research"].startswith("done")


def tiny_target(tmp_path):
    """The default target with a search space of three knobs: eight experiments per baseline."""
    target = tmp_path / "target"
    shutil.copytree(TARGET_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    program = (target / "program.md").read_text()
    start = program.index("```toml search-space")
    end = program.index("```", start + 10) + 3
    (target / "program.md").write_text(program[:start] + TINY_SPACE + program[end:])
    return target


def test_tiny_search_space_no_experiment_runs_twice(tmp_path):
    """Seven candidates and six runs asked for: no candidate runs twice while new ones remain. (Once a
    node has nothing new left, it runs what only unproven peers reported negative, which checks their
    reports: research/negatives.py, and the test of made-up negative results.)"""
    target = tiny_target(tmp_path)
    # runs of 3 s: long enough for a claim to cross a loaded machine while the other node still runs the
    # same candidate (with 1-s runs both once finished before either claim arrived, and both ran it)
    a_home = surrogate_home(tmp_path / "a", 1, target, cost=3.0)
    b_home = surrogate_home(tmp_path / "b", 2, target, cost=3.0)
    a = Daemon(a_home.path, "-n", "3").start()
    daemons = [a]
    try:
        b = Daemon(b_home.path, "-n", "3", "--bootstrap", a.addrs[0]).start()
        daemons.append(b)
        wait_for(lambda: research_done(a) and research_done(b), 150, 1.0, what="both nodes done")
        done_a = [e for e, s in local_experiments(a_home) if s in ("kept", "discarded", "crash")]
        done_b = [e for e, s in local_experiments(b_home) if s in ("kept", "discarded", "crash")]
        assert done_a and done_b
        assert len(set(done_a)) == len(done_a) and len(set(done_b)) == len(done_b)
        assert not set(done_a) & set(done_b), "an experiment was run by both nodes"
        # B joined A (connected, caught up on A's claims and results) before it proposed anything
        log = b.stderr()
        first = min(i for i in (log.find("experimenting at once"), log.find("baseline is now"), log.find(" claim"))
                    if i >= 0)
        assert 0 <= log.find("connected to bootstrap peer") < first, log[:3000]
    finally:
        stop_all(daemons)


def test_research_that_ran_out_of_proposals_resumes_on_an_adopted_baseline(tmp_path):
    """B tries its whole tiny search space and stops proposing, but keeps following the swarm; when it
    adopts A's better baseline (a code change from a peer it trusts) it researches again from there."""
    from p2p_research.net.identity import load_or_create_identity, peer_id_of_keypair

    target = tiny_target(tmp_path)
    a_home = surrogate_home(tmp_path / "a", 1, target, cost=0.5, research__proposer="command",
                            research__proposer_command=AGENT)
    a_peer = peer_id_of_keypair(load_or_create_identity(a_home.identity))
    b_home = surrogate_home(tmp_path / "b", 2, target, cost=0.5, trust__trusted_peers=[a_peer],
                            verification__policy="never")
    b = Daemon(b_home.path, "-n", "50").start()
    daemons = [b]
    try:
        wait_for(lambda: "no experiment 10 times in a row" in b.stderr(), 120, 1.0, what="B runs out of proposals")
        before = {e for e, _ in local_experiments(b_home)}
        a = Daemon(a_home.path, "-n", "1", "--bootstrap", b.addrs[0]).start()
        daemons.append(a)
        wait_for(lambda: any(step["found_by"] == a_peer for step in b.json("status")["baseline"]["lineage"]), 120,
                 1.0, what="B adopts A's change")
        wait_for(lambda: "research resumes from" in b.stderr(), 30, 0.5, what="B resumes")
        wait_for(lambda: {e for e, _ in local_experiments(b_home)} - before, 60, 1.0, what="B's experiments on A's baseline")
    finally:
        stop_all(daemons)


def test_liar_is_refuted_and_never_adopted(tmp_path):
    liar_home = surrogate_home(tmp_path / "liar", 7, cost=0.5, simulation__liar=True)
    h1_home = surrogate_home(tmp_path / "h1", 1, cost=0.5, verification__policy="always")
    h2_home = surrogate_home(tmp_path / "h2", 2, cost=0.5, verification__policy="adaptive")
    liar = Daemon(liar_home.path, "-n", "4").start()
    daemons = [liar]
    try:
        h1 = Daemon(h1_home.path, "-n", "4", "--bootstrap", liar.addrs[0]).start()
        h2 = Daemon(h2_home.path, "-n", "4", "--bootstrap", liar.addrs[0]).start()
        daemons += [h1, h2]
        wait_for(lambda: all(research_done(d) for d in daemons), 150, 1.0, what="all done")
        time.sleep(2)
        for h in (h1, h2):
            st = h.json("status")
            finders = {step["found_by"] for step in st["baseline"]["lineage"]}
            assert liar.peer_id not in finders, f"{h.peer_id} adopted the liar's fabricated baseline"
            assert st["swarm_stats"]["verified_refuted"] >= 1
            rep = {p["peer_id"]: p.get("reputation") for p in h.json("peers")}
            assert rep[liar.peer_id]["refuted"] >= 1 and rep[liar.peer_id]["confirmed"] == 0
        # verifications were announced: the refutations are on record at the liar, connected throughout
        db = sqlite3.connect(f"file:{liar_home.ledger}?mode=ro", uri=True)
        n = db.execute("SELECT COUNT(*) FROM runs WHERE kind='verification' AND origin='peer' AND status='refuted'").fetchone()[0]
        db.close()
        assert n >= 1
    finally:
        stop_all(daemons)


def test_code_change_rejected_by_default_and_accepted_from_a_trusted_peer(tmp_path):
    a_home = surrogate_home(tmp_path / "a", 1, cost=0.5, research__proposer="command", research__proposer_command=AGENT)
    b_home = surrogate_home(tmp_path / "b", 2, cost=0.5)
    a = Daemon(a_home.path, "-n", "1").start()
    daemons = [a]
    try:
        c_home = surrogate_home(tmp_path / "c", 3, cost=0.5, trust__trusted_peers=[a.peer_id],
                                verification__policy="never")
        b = Daemon(b_home.path, "-n", "2", "--bootstrap", a.addrs[0]).start()
        c = Daemon(c_home.path, "-n", "2", "--bootstrap", a.addrs[0]).start()
        daemons += [b, c]
        wait_for(lambda: all(research_done(d) for d in daemons), 120, 1.0, what="all done")
        kept = [e for e in a.json("experiments") if e["kind"] == "experiment" and e["status"] == "kept"]
        assert kept, "the agent's change should have improved val_bpb"
        exp = kept[0]["id"]
        wait_for(lambda: any(step["found_by"] == a.peer_id for step in c.json("status")["baseline"]["lineage"]), 30,
                 what="C adopts A's change")
        b_status = b.json("status")
        assert all(step["found_by"] != a.peer_id for step in b_status["baseline"]["lineage"])
        assert b_status["swarm_stats"]["trust_rejected"] >= 1
        shown = b.json("show", exp[:12])
        peer_run = [r for r in shown["runs"] if r["origin"] == "peer"][0]
        assert "rejected by trust policy" in peer_run["reason"]
        # rejected code is never executed: B has no local run of it
        assert all(r["origin"] == "peer" for r in shown["runs"])
    finally:
        stop_all(daemons)


def test_late_joiner_catches_up_and_skips_what_was_tried(tmp_path):
    a_home = surrogate_home(tmp_path / "a", 1, cost=0.3)
    a = Daemon(a_home.path, "-n", "5").start()
    daemons = [a]
    try:
        wait_for(lambda: research_done(a), 90, 1.0, what="A done")
        a_ids = {e for e, _ in local_experiments(a_home)}
        a_best = a.json("status")["baseline"]["val_bpb"]
        b_home = surrogate_home(tmp_path / "b", 1, cost=0.3)  # the same seed: it would propose A's ids first
        b = Daemon(b_home.path, "-n", "4", "--bootstrap", a.addrs[0]).start()
        daemons.append(b)
        t0 = time.time()
        wait_for(lambda: b.json("status")["experiments"]["from_peers"] >= len(a_ids), 30, 0.5, what="catch-up")
        assert time.time() - t0 < 15
        # the DHT holds A's records for anyone: B finds one, signature checked
        some = sorted(a_ids)[0]
        rec = wait_for(lambda: (r := b.json("dht", "get", f"/exp/{some}"))["found"] and r, 60, 2.0, what="DHT record")
        assert rec["valid"] and rec["record"]["peer"] == a.peer_id and rec["record"]["state"] == "result"
        bad = b.cli("dht", "get", "/exp/not-hex", check=False)
        assert bad.returncode != 0 and "invalid DHT key" in bad.stderr and "Traceback" not in bad.stderr
        wait_for(lambda: research_done(b), 90, 1.0, what="B done")
        b_ids = {e for e, s in local_experiments(b_home) if s != "aborted"}
        assert b_ids and not b_ids & a_ids, "the late joiner re-ran an experiment the swarm had tried"
        assert b.json("status")["baseline"]["val_bpb"] <= a_best + 1e-9
    finally:
        stop_all(daemons)


async def test_altered_receipt_from_a_real_peer_is_rejected(tmp_path):
    import dataclasses

    import multiaddr
    from adversary import adversary
    from libp2p import generate_new_ed25519_identity
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2p_research.net import topic_names
    from p2p_research.wire import Receipt, Result, sign_receipt
    from p2p_research.wire.receipts import peer_id_of

    home = surrogate_home(tmp_path / "n", 1)
    d = Daemon(home.path, "--no-research").start()
    try:
        st = d.json("status")
        kp = generate_new_ed25519_identity()
        me = peer_id_of(kp.public_key.serialize())
        good = Receipt(protocol_id=st["protocol_id"], exp_id="ab" * 20, parent=st["genesis"], commit="cd" * 20,
                       tree="ef" * 20, metric="val_bpb", value=1.5, status="kept", budget_tokens=None, budget_seconds=None,
                       seed=0, hardware="test", software="test", peer=me, ts=time.time(), training_seconds=1.0,
                       memory_gb=0.1)
        sig = sign_receipt(good, kp.private_key)
        altered = dataclasses.replace(good, exp_id="aa" * 20, value=0.5)  # signed as 1.5, announced as 0.5
        msgs = [Result(altered, sig, kp.public_key.serialize()), Result(good, sig, kp.public_key.serialize())]
        async with adversary(kp) as adv:
            host, ps = adv.host, adv.ps
            exp_topic, _ = topic_names(st["swarm"])
            await ps.subscribe(exp_topic)
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(d.addrs[0])))
            nid = ID.from_base58(d.peer_id)
            await ps.wait_for_subscription(nid, exp_topic, timeout=60)
            await ps.wait_for_mesh(nid, exp_topic, timeout=60)
            for m in msgs:
                await ps.publish(exp_topic, m.to_wire())
                await trio.sleep(0.5)
            with trio.fail_after(20):
                while True:
                    exps = await trio.to_thread.run_sync(lambda: d.json("experiments"))
                    if exps:
                        break
                    await trio.sleep(0.5)
        ids = {e["id"] for e in exps}
        assert ids == {"ab" * 20}
        st = await trio.to_thread.run_sync(lambda: d.json("status"))
        assert st["net"]["rejected"].get("bad_signature", 0) >= 1
        assert "Traceback" not in d.stderr()
    finally:
        d.stop()
        d.kill()


def test_a_two_worker_node_runs_two_experiments_at_once_without_duplicates(tmp_path):
    """research.workers = 2: two experiments in flight at once, sharing the ledger (no id twice),
    the baseline (one measurement) and every kept result; `status` shows both workers."""
    home = surrogate_home(tmp_path / "w", 5, cost=2.0, research__workers=2)
    d = Daemon(home.path, "-n", "4").start()
    try:
        wait_for(lambda: len(d.json("status")["workers"]) == 2 and all(
            w["phase"] == "training" for w in d.json("status")["workers"]), 60, 0.2, what="both workers training")
        try:
            wait_for(lambda: research_done(d), 120, 1.0, what="both workers done")
        except AssertionError as e:  # once in a fresh clone's loaded run, idle: say where each worker was
            raise AssertionError(f"{e}; workers: {d.json('status')['workers']}; log: "
                                 f"{(home.path / 'logs' / 'node.log').read_text()[-3000:]}") from None
        workers = d.json("status")["workers"]
        assert [w["experiments_done"] for w in workers] == [4, 4]
    finally:
        stop_all([d])
    db = sqlite3.connect(f"file:{home.ledger}?mode=ro", uri=True)
    runs = db.execute("SELECT exp_id, kind, started_at, finished_at FROM runs WHERE origin='local' ORDER BY started_at").fetchall()
    db.close()
    assert sum(1 for r in runs if r[1] == "baseline") == 1  # worker 1 starts from worker 0's baseline
    exps = [r for r in runs if r[1] == "experiment"]
    assert len(exps) == 8 and len({r[0] for r in exps}) == 8, "an experiment ran twice"
    overlapping = sum(1 for a, b in zip(exps, exps[1:], strict=False) if b[2] < a[3])
    assert overlapping >= 3, "the two workers should run at the same time"


def test_worker_devices():
    from p2p_research.config import NodeConfig
    from p2p_research.daemon.workers import worker_envs

    cfg = NodeConfig()
    assert worker_envs(cfg, gpus=["0", "1", "2"]) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "2")]
    assert worker_envs(cfg, gpus=[]) == [{}]
    cfg.research.workers = 2
    assert worker_envs(cfg, gpus=[], cpus=8) == [{"P2P_THREADS": "4", "OMP_NUM_THREADS": "4"}] * 2
    assert worker_envs(cfg, gpus=["3"]) == [{"CUDA_VISIBLE_DEVICES": "3"}] * 2
    cfg.research.device = "cpu"
    assert worker_envs(cfg, cpus=2) == [{"P2P_THREADS": "1", "OMP_NUM_THREADS": "1"}] * 2


def test_sparse_announcements_flood_kept_results_only_and_dedup_through_the_dht(tmp_path):
    """network.announce = kept: claims and discarded results reach peers only through the DHT, kept
    results and presence are flooded, and no experiment runs twice (ownership, then a DHT lookup)."""
    homes = [surrogate_home(tmp_path / f"n{i}", i + 1, cost=1.0, network__announce="kept") for i in range(3)]
    a = Daemon(homes[0].path, "-n", "6").start()
    daemons = [a]
    try:
        for h in homes[1:]:
            daemons.append(Daemon(h.path, "-n", "6", "--bootstrap", a.addrs[0]).start())
        wait_for(lambda: all(research_done(d) for d in daemons), 150, 1.0, what="all nodes done")
        st = [d.json("status") for d in daemons]
        assert all(s["announce"] == {"mode": "kept", "flooding": "kept"} for s in st)
        done = [[e for e, s in local_experiments(h) if s in ("kept", "discarded", "crash")] for h in homes]
        ids = [e for d in done for e in d]
        assert all(done) and len(ids) == len(set(ids)), "an experiment was run twice"
        assert sum(s["intake"].get("presence", 0) for s in st) >= 1
        for i, h in enumerate(homes):
            db = sqlite3.connect(f"file:{h.ledger}?mode=ro", uri=True)
            others = {d.peer_id for j, d in enumerate(daemons) if j != i}
            # a claim is flooded only in a contest: two nodes that found the same experiment unclaimed
            claims = [p for (p, e) in db.execute("SELECT peer, exp_id FROM claims") if p in others and e not in
                      {e for (e,) in db.execute("SELECT exp_id FROM claims WHERE peer=?", (daemons[i].peer_id,))}]
            statuses = {s for (s,) in db.execute("SELECT status FROM runs WHERE origin='peer' AND kind IN "
                                                 "('experiment', 'baseline')")}
            db.close()
            assert not claims, "a claim was flooded outside a contest"
            assert statuses <= {"kept"}, f"a {statuses - {'kept'}} result was flooded"
        assert sum(s["dedup"].get("claimed_elsewhere", 0) + s["dedup"].get("known_in_ledger", 0) for s in st) >= 0
    finally:
        stop_all(daemons)


# An agent that waits for the test's signal, then makes the same change on every node that runs it.
SAME_CHANGE_AGENT = (
    "import os, re, sys, time\n"
    "open(os.path.join(sys.argv[1], f'ready-{os.getpid()}'), 'w').close()\n"
    "while not os.path.exists(os.path.join(sys.argv[1], 'go')):\n"
    "    time.sleep(0.05)\n"
    "src = open('train.py').read()\n"
    "src = re.sub(r'^LEARNING_RATE = [0-9.eE+-]+', 'LEARNING_RATE = 0.0035', src, count=1, flags=re.MULTILINE)\n"
    "open('train.py', 'w').write(src)\n"
    "print('LEARNING_RATE -> 0.0035')\n")


async def test_a_sparse_node_that_finds_an_earlier_claim_in_the_dht_while_its_run_is_young_yields(tmp_path):
    """network.announce = kept: claims are only in the DHT, so a dedup lookup made a moment before another
    node's put lands misses it, and both nodes start the experiment (seen under load, finishing 6 ms
    apart). The node looks its claim up again while the run is young. Here the other node, a real peer of
    our own code in this process, puts an earlier claim after the node's lookup: the node floods its own
    claim once (so that the other side can settle it the same way) and yields. The experiment never
    finishes here."""
    from libp2p import generate_new_ed25519_identity

    from p2p_research.wire import Claim
    from p2p_research.wire.records import make_claim_record

    sync = tmp_path / "sync"
    sync.mkdir()
    agent = tmp_path / "agent.py"
    agent.write_text(SAME_CHANGE_AGENT)
    home = surrogate_home(tmp_path / "a", 1, cost=20.0, network__announce="kept", research__proposer="command",
                          research__proposer_command=f"{sys.executable} {agent} {sync}")
    d = Daemon(home.path, "-n", "1").start()
    kp = generate_new_ed25519_identity()
    try:
        st = await trio.to_thread.run_sync(d.json, "status")
        async with honest_node(d.addrs[0], st["swarm"], kp) as net:
            with trio.fail_after(120):
                while not list(sync.glob("ready-*")):  # the genesis is measured; the node is proposing
                    await trio.sleep(0.2)
            (sync / "go").touch()
            with trio.fail_after(60):
                while True:
                    cur = (await trio.to_thread.run_sync(d.json, "status"))["current"]
                    if cur and cur["phase"] == "training" and cur["exp_id"]:
                        break
                    await trio.sleep(0.2)
            exp = cur["exp_id"]
            with trio.fail_after(20):
                while (mine := await net.dht.get(exp)) is None:
                    await trio.sleep(0.2)
            assert mine.state == "claim" and mine.peer == d.peer_id
            # a claim made before the node's (beyond the tie window), put now: the node's lookup missed it
            await net.dht.put(make_claim_record(exp, mine.commit, mine.lease_until + 30, kp, ts=mine.ts - 5.0))
            with trio.fail_after(30):
                async for inc in net.incoming:  # the node floods its own claim for the other side to settle
                    if isinstance(inc.message, Claim) and inc.message.exp_id == exp:
                        assert inc.message.peer == d.peer_id
                        break
            with trio.fail_after(30):
                while "yielding experiment" not in d.stderr():
                    await trio.sleep(0.5)
        log = d.stderr()
        assert f"experiment {exp[:10]} is claimed by {net_peer(kp)[:16]} too" in log
        assert f"yielding experiment {exp[:10]} to {net_peer(kp)[:16]}" in log
        with trio.fail_after(60):
            while not research_done(d):
                await trio.sleep(1.0)
        assert [s for e, s in local_experiments(home) if e == exp] == ["aborted"]
    finally:
        d.stop()
        d.kill()


def test_made_up_negative_results_in_the_dht_hide_no_candidate_and_their_sender_is_refuted(tmp_path):
    """The same attack through the DHT (a sparse swarm keeps negative results there, not in gossip): a
    peer of our own code in this process puts a signed `discarded` record with a made-up value for every
    candidate of the victim's tiny search space, and runs nothing. Each is a hint only (an unaccountable
    peer's), so the victim still runs those candidates, and its runs, held against the records' values
    (before, a DHT hint was never checked), refute the attacker."""
    from libp2p import generate_new_ed25519_identity

    from p2p_research.wire.receipts import sign_receipt
    from p2p_research.wire.records import make_result_record

    target = tiny_target(tmp_path)
    v_home = surrogate_home(tmp_path / "v", 0, target, cost=3.0, network__announce="kept")
    v = Daemon(v_home.path, "-n", "4").start()
    kp = generate_new_ed25519_identity()
    try:
        st = v.json("status")
        proto, swarm = st["protocol_id"], st["swarm"]
        ws, commits = every_candidate(tmp_path / "attacker", target)
        reported = []

        async def attack() -> None:
            async with honest_node(v.addrs[0], swarm, kp) as net:
                for commit in commits:
                    r = made_up_negative(kp, proto, ws, commit)
                    await net.dht.put(make_result_record(r, sign_receipt(r, kp.private_key), kp))
                    reported.append(r.exp_id)
                await trio.to_thread.run_sync(lambda: wait_for(lambda: research_done(v), 150, 1.0, what="V done"))

        trio.run(attack)
        ran = {e for e, s in local_experiments(v_home) if s in ("kept", "discarded", "crash")}
        assert len(ran & set(reported)) >= 3, (ran, reported)
        stats = v.json("status")
        assert stats["swarm_stats"]["negatives_refuted"] >= 2, stats["swarm_stats"]
        assert stats["dedup"]["negatives_hinted"] + stats["dedup"]["negatives_checked"] >= 1, stats["dedup"]
        assert f"{net_peer(kp)[:16]} reported" in v.stderr() and "Traceback" not in v.stderr()
    finally:
        v.stop()
        v.kill()


def every_candidate(home: Path, target) -> tuple[Any, list[str]]:
    """An attacker's workspace on `target`'s genesis and a commit for every candidate its builtin proposer
    can draw from the tiny search space (the made-up negative results' subjects)."""
    import random

    from p2p_research.research.io.workspace import Workspace
    from p2p_research.research.mutate import propose_mutation
    from p2p_research.research.searchspace import parse_search_space

    ws = Workspace(surrogate_home(home, 0, target).repo)
    files = ws.files_of(ws.baseline)
    space = parse_search_space(files["program.md"].decode())
    rng = random.Random(0)
    sources = {m.source for m in (propose_mutation(files["train.py"].decode(), space, rng) for _ in range(300))
               if m.changes}
    return ws, [ws.commit_experiment(ws.baseline, {"train.py": src.encode()}, "made up", "0" * 40)
                for src in sorted(sources)]


def made_up_negative(kp, proto: str, ws, commit: str, seed: int = 0):
    """A signed `discarded` receipt, with a made-up value, for a commit its signer never ran."""
    from adversary import receipt

    from p2p_research.research.ids import experiment_id

    return receipt(kp, protocol_id=proto, exp_id=experiment_id(proto, ws.tree_of(commit)), parent=ws.parent_of(commit),
                   commit=commit, tree=ws.tree_of(commit), value=9.9, status="discarded", description="made up",
                   seed=seed)


def net_peer(kp) -> str:
    from p2p_research.net.identity import peer_id_of_keypair

    return peer_id_of_keypair(kp)


def test_ideas_cross_protocols_of_one_genesis_and_numbers_never_do(tmp_path):
    """A (the default budget) and B (another budget: another protocol, as another GPU model is under a
    wall-clock budget) share the genesis. A keeps results; B learns A's protocol from the peer exchange,
    follows it, receives A's kept results (catch-up, then gossip), proposes one as an idea under its own
    protocol and judges it by its own measurement. B's baselines and leaderboard hold B's protocol
    only; `swarm --json` shows the idea, where it came from with its gain there, and B's verdict."""
    a_home = surrogate_home(tmp_path / "a", 4, cost=0.5)  # seed 4 keeps its third experiment (and more)
    b_home = surrogate_home(tmp_path / "b", 2, cost=0.5, research__budget_tokens=20000)
    a = Daemon(a_home.path, "-n", "8").start()
    daemons = [a]
    try:
        p = a.json("status")["protocol_id"]
        wait_for(lambda: any(s == "kept" for _, s in local_experiments(a_home)), 90, 0.5, what="A keeps a result")
        b = Daemon(b_home.path, "-n", "10", "--bootstrap", a.addrs[0]).start()
        daemons.append(b)
        q = b.json("status")["protocol_id"]
        assert p != q and a.json("status")["genesis"] == b.json("status")["genesis"]
        wait_for(lambda: [s["protocol"] for s in b.json("status")["siblings"]] == [p], 30, 0.5,
                 what="B follows A's protocol")
        assert "tried here as ideas" in b.json("status")["protocol_note"]

        def judged_idea():
            ideas = b.json("swarm")["across_hardware"]["ideas"]
            return [i for i in ideas if i["from_protocol"] == p and i["status_here"] in ("kept", "discarded", "crash")]

        (idea, *_) = wait_for(judged_idea, 120, 1.0, what="B runs one of A's kept changes as an idea")
        wait_for(lambda: research_done(a) and research_done(b), 150, 1.0, what="both done")
    finally:
        stop_all(daemons)
    a_db = sqlite3.connect(f"file:{a_home.ledger}?mode=ro", uri=True)
    b_db = sqlite3.connect(f"file:{b_home.ledger}?mode=ro", uri=True)
    try:
        # the idea is A's kept change, and its gain there is A's own numbers
        src = a_db.execute("SELECT parent, val_bpb FROM runs WHERE exp_id=? AND origin='local' AND status='kept'",
                           (idea["from_exp"],)).fetchone()
        assert src is not None, "the idea is not one of A's kept results"
        (parent_there,) = a_db.execute("SELECT val_bpb FROM runs WHERE commit_id=? AND origin='local' AND status IN "
                                       "('kept', 'baseline') ORDER BY run_id LIMIT 1", (src[0],)).fetchone()
        assert idea["gain_there"] is not None and abs(idea["gain_there"] - (parent_there - src[1])) < 1e-9
        assert idea["from_budget"] == "500000 tokens" and idea["description"].startswith(
            f"idea {idea['from_exp'][:10]} from {p[:12]} (500000 tokens): ")
        # B ran it under its own protocol and judged it by its own measurement against its own baseline
        (exp_protocol, exp_parent) = b_db.execute("SELECT protocol_id, parent FROM experiments WHERE exp_id=?",
                                                  (idea["exp_id"],)).fetchone()
        assert exp_protocol == q
        (value_here,) = b_db.execute("SELECT val_bpb FROM runs WHERE exp_id=? AND origin='local' AND kind='experiment'",
                                     (idea["exp_id"],)).fetchone()
        assert value_here == idea["val_bpb_here"] and value_here != src[1]
        (base_here,) = b_db.execute("SELECT val_bpb FROM baselines WHERE protocol_id=? AND commit_id=? ORDER BY id DESC",
                                    (q, exp_parent)).fetchone()
        if idea["status_here"] != "crash":
            assert abs(idea["gain_here"] - (base_here - value_here)) < 1e-9
        # no number of A's protocol is in B's baselines or B's leaderboard of its protocol
        assert {r[0] for r in b_db.execute("SELECT DISTINCT protocol_id FROM baselines")} == {q}
        own_values = {r[0] for r in b_db.execute("SELECT val_bpb FROM runs WHERE origin='local' AND protocol_id=?", (q,))}
        assert all(v in own_values for (v,) in b_db.execute("SELECT val_bpb FROM baselines"))
        a_ids = {r[0] for r in b_db.execute("SELECT exp_id FROM runs WHERE protocol_id=?", (p,))}
        assert a_ids and all(s in ("kept", "baseline") for (s,) in b_db.execute(
            "SELECT status FROM runs WHERE protocol_id=?", (p,))), "B stored a discarded result of A's protocol"
        assert not b_db.execute("SELECT 1 FROM runs WHERE protocol_id=? AND origin='local'", (p,)).fetchone()
    finally:
        a_db.close()
        b_db.close()
    board = Daemon(b_home.path).json("leaderboard")
    assert not {e["id"] for e in board[q]} & a_ids
    assert "Traceback" not in b.stderr() and "Traceback" not in a.stderr()


@pytest.mark.parametrize("seed", [0, 1])
def test_made_up_negative_results_hide_no_candidate_and_their_sender_is_refuted(tmp_path, seed):
    """An attacker that runs nothing signs a `discarded` result, with a made-up value, for every
    candidate of the victim's tiny search space. Before, each counted as tried and the victim ran none
    of them (it stopped: "no unknown experiment"). Now a negative report from a peer the victim has no
    reason to trust is a hint (research/negatives.py): the victim still runs those candidates, its runs
    do not reproduce the attacker's values, the attacker is refuted and then ignored. Reports of another
    seed than the victim's (seed 1) cannot be held to account by its runs, so they are not even hints:
    the victim runs those candidates as new (before, they were passed over and never refuted)."""
    from adversary import adversary, result

    from p2p_research.daemon.messages import commit_objects

    target = tiny_target(tmp_path)
    v_home = surrogate_home(tmp_path / "v", 0, target, cost=3.0)
    v = Daemon(v_home.path, "-n", "4").start()
    try:
        st = v.json("status")
        proto, swarm = st["protocol_id"], st["swarm"]
        ws, commits = every_candidate(tmp_path / "attacker", target)
        assert 5 <= len(commits) <= 8, len(commits)  # every candidate of the baseline
        reported = []

        async def attack() -> None:
            async with adversary() as adv:
                await adv.join(v.addrs[0], swarm)
                for commit in commits:
                    objs, _, total = commit_objects(ws, commit, deltas=False)
                    r = made_up_negative(adv.kp, proto, ws, commit, seed)
                    await adv.publish(result(adv.kp, r, objs, total).to_wire())
                    reported.append(r.exp_id)
                await trio.to_thread.run_sync(lambda: wait_for(lambda: research_done(v), 150, 1.0, what="V done"))

        trio.run(attack)
        ran = {e for e, s in local_experiments(v_home) if s in ("kept", "discarded", "crash")}
        assert len(ran & set(reported)) >= 3, (ran, reported)
        status = v.json("status")
        stats = status["swarm_stats"]
        if seed == 0:
            assert stats["negatives_refuted"] >= 2, stats
            assert "refuted" in v.stderr()
        else:  # nothing to check them against, and nothing passed over
            assert stats["negatives_refuted"] == 0 and status["dedup"]["negatives_hinted"] == 0, (stats, status["dedup"])
        assert "Traceback" not in v.stderr()
    finally:
        v.stop()
        v.kill()
