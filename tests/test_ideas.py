"""Ideas across hardware: sibling protocols (same genesis, another budget or hardware) and their kept
changes proposed here. Pure decisions, the ledger and the proposer; tests/test_swarm.py runs daemons."""

from __future__ import annotations

import time

import trio
from trio.testing import wait_all_tasks_blocked

from p2p_research.daemon.siblings import MAX_CATCHUPS, SiblingFollower
from p2p_research.net.boundary import Faults, PeerTasks
from p2p_research.research.constants import read_constants, rewrite_constants
from p2p_research.research.ids import swarm_id_of
from p2p_research.research.io.ideas import Idea, ideas_of, ideas_view, label_of, ranked
from p2p_research.research.io.proposers import IDEA_EVERY, BuiltinProposer, Proposal
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.searchspace import parse_search_space
from p2p_research.research.siblings import MAX_SIBLINGS, SiblingBook, sibling_of
from p2p_research.store.ledger import Ledger, Run
from p2p_research.target import TARGET_DIR, read_target_files
from p2p_research.wire import Receipt

TRAIN = (TARGET_DIR / "train.py").read_text()
GENESIS = "9" * 40
OWN = "a" * 40


def proto(n: int) -> str:
    return f"{n:040x}"


def about(protocol: str, swarm: str | None = None, budget: str = "300 s", role: str = "research") -> dict[str, str]:
    return {"protocol": protocol, "swarm": swarm if swarm is not None else swarm_id_of(GENESIS, protocol),
            "budget": budget, "role": role}


# --- which peers' protocols are siblings ----------------------------------------------------------


def test_a_sibling_is_admitted_only_when_its_swarm_is_this_genesis_s_swarm_of_that_protocol():
    good = sibling_of(about(proto(1)), GENESIS, OWN)
    assert good is not None and good.protocol == proto(1) and good.swarm == swarm_id_of(GENESIS, proto(1))
    assert good.budget == "300 s"
    other_genesis = swarm_id_of("8" * 40, proto(1))  # a peer of another target: its swarm hashes its genesis
    for bad in (about(proto(1), other_genesis), about(proto(1), "0" * 16), about(proto(1), ""),
                about(OWN),                                           # this node's own protocol
                about(proto(1), role="relay"),                        # a relay names no protocol of its own
                about("not hex", swarm_id_of(GENESIS, "not hex")),   # a malformed protocol id
                {"protocol": proto(1)}, {"swarm": swarm_id_of(GENESIS, proto(1))}, None, "junk", {}):
        assert sibling_of(bad, GENESIS, OWN) is None, bad


def test_the_sibling_bound_holds_first_come_and_a_place_frees_when_no_peer_announces_it():
    book = SiblingBook(GENESIS, OWN)
    many = [about(proto(i)) for i in range(1, 11)]
    changes = book.observe([about(proto(1), "0" * 16), *many], 1.0)
    assert [s.protocol for s in changes.joined] == [proto(i) for i in range(1, MAX_SIBLINGS + 1)]
    assert len(book.followed) == MAX_SIBLINGS and not changes.left
    assert book.observe(many, 2.0).joined == ()          # full: the rest wait
    assert proto(1) in book and proto(9) not in book
    # the peer announcing proto(2) left (or now announces another): its place goes to the next one waiting
    changes = book.observe([a for a in many if a["protocol"] != proto(2)], 3.0)
    assert [s.protocol for s in changes.left] == [proto(2)]
    assert [s.protocol for s in changes.joined] == [proto(5)]
    assert len(book.followed) == MAX_SIBLINGS
    assert {v["protocol"] for v in book.view()} == {proto(1), proto(3), proto(4), proto(5)}
    assert book.observe([], 4.0).left and not book.followed  # nobody announces any: all left


async def test_a_peer_announcing_a_sibling_with_a_wrong_swarm_is_not_subscribed_to_and_the_bound_holds():
    """The daemon's follower joins a sibling's experiments topic only for what the book admits: a swarm
    that does not hash this genesis is never subscribed to, however often it is announced, and at most
    MAX_SIBLINGS topics are joined however many protocols peers announce."""
    peers: list[tuple[str, dict[str, str] | None]] = [("liar", about(proto(1), swarm_id_of("8" * 40, proto(1))))]
    peers += [(f"p{i}", about(proto(i))) for i in range(2, 12)]
    peers.append(("relay", {"role": "relay"}))
    joined: list[str] = []
    left: list[str] = []
    asked: list[tuple[str, str]] = []
    release = trio.Event()

    async def join(swarm: str) -> None:
        joined.append(swarm)

    async def leave(swarm: str) -> None:
        left.append(swarm)

    async def catch_up(peer: str, protocol: str, since: float | None) -> int:
        assert since is None  # the first ask of a pair: everything
        asked.append((peer, protocol))
        await release.wait()
        return 0

    follower = SiblingFollower(SiblingBook(GENESIS, OWN), lambda: peers, join, leave, catch_up)
    async with trio.open_nursery() as nursery:
        tasks = PeerTasks(nursery, Faults())
        for _ in range(3):
            await follower.step(tasks)
            await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        assert swarm_id_of("8" * 40, proto(1)) not in joined and swarm_id_of(GENESIS, proto(1)) not in joined
        assert joined == [swarm_id_of(GENESIS, proto(i)) for i in range(2, 2 + MAX_SIBLINGS)]
        assert len(asked) == MAX_CATCHUPS  # one catch-up per announcing peer, a few at a time
        release.set()
        await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        for _ in range(3):
            await follower.step(tasks)
            await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        assert sorted(asked) == sorted((f"p{i}", proto(i)) for i in range(2, 2 + MAX_SIBLINGS))
        peers[:] = [p for p in peers if p[0] != "p3"]  # p3 disconnects: its sibling is left, the next joined
        await follower.step(tasks)
        assert left == [swarm_id_of(GENESIS, proto(3))] and joined[-1] == swarm_id_of(GENESIS, proto(6))
        nursery.cancel_scope.cancel()


# --- the ledger: a sibling's kept results, and the ideas tried here ----------------------------------


def receipt(protocol: str, exp: str, commit: str, parent: str, value: float, status: str = "kept",
            seconds: float | None = 300.0, hardware: str = "NVIDIA H100 80GB HBM3 x1") -> bytes:
    return Receipt(protocol_id=protocol, exp_id=exp, parent=parent, commit=commit, tree="e" * 40, metric="val_bpb",
                   value=value, status=status, budget_tokens=None if seconds else 2000, budget_seconds=seconds,
                   seed=0, hardware=hardware, software="test", peer="12D3KooWsib", ts=time.time(),
                   training_seconds=1.0, memory_gb=0.1).canonical_bytes()


def peer_run(ledger: Ledger, protocol: str, exp: str, commit: str, parent: str, value: float, status: str = "kept",
             kind: str = "experiment", peer: str = "12D3KooWsib", **kw) -> None:
    ledger.add_experiment(exp, protocol, parent, "e" * 40, commit, f"change {exp[:4]}", "peer", peer)
    assert ledger.add_peer_run(Run(exp_id=exp, commit_id=commit, protocol_id=protocol, kind=kind, status=status,
                                   peer=peer, parent=parent, val_bpb=value, description=f"change {exp[:4]}"),
                               receipt(protocol, exp, commit, parent, value, status, **kw), b"s", b"k")


def test_a_sibling_s_kept_changes_become_ideas_ranked_by_their_gain_there_and_tried_once(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    h100, cpu = proto(1), proto(2)
    g = GENESIS
    peer_run(ledger, h100, "b" * 40, g, g, 1.50, status="baseline", kind="baseline")   # its genesis value there
    peer_run(ledger, h100, "c" * 40, "1" * 40, g, 1.49)                                 # kept: gain 0.01 there
    peer_run(ledger, h100, "d" * 40, "2" * 40, g, 1.40)                                 # kept: gain 0.10 there
    peer_run(ledger, h100, "f" * 40, "3" * 40, g, 1.30, status="discarded")             # not an idea
    peer_run(ledger, cpu, "0" * 39 + "1", "4" * 40, "5" * 40, 2.0, seconds=None)        # parent unknown there
    peer_run(ledger, OWN, "0" * 39 + "2", "6" * 40, g, 1.0)                             # this node's protocol
    ideas = ideas_of(ledger, OWN)
    assert [i.exp_id for i in ideas] == ["d" * 40, "c" * 40, "0" * 39 + "1"]
    best = ideas[0]
    assert abs(best.gain_there - 0.10) < 1e-9 and best.protocol == h100 and best.parent == g
    assert best.label == "300 s on NVIDIA H100 80GB HBM3 x1" and ideas[2].label == "2000 tokens"
    assert ideas[2].gain_there is None
    ledger.add_idea("7" * 40, best.exp_id, best.protocol, best.peer, best.label, best.gain_there)
    assert [i.exp_id for i in ideas_of(ledger, OWN)] == ["c" * 40, "0" * 39 + "1"]  # tried once


def test_label_and_ranking():
    assert label_of(None, 300.0, "RTX 4090\nx1") == "300 s on RTX 4090x1"
    assert label_of(2000, None, "cpu") == "2000 tokens" and label_of(None, None, "") == "?"
    ideas = [Idea("e1", "c", "p", "x", "", "?", None), Idea("e2", "c", "p", "x", "", "?", 0.01),
             Idea("e3", "c", "p", "x", "", "?", 0.2)]
    assert [i.exp_id for i in ranked(ideas)] == ["e3", "e2", "e1"]


def test_the_swarm_view_shows_where_each_idea_came_from_and_whether_it_held_here(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    base = "b" * 40
    ledger.record_baseline(OWN, base, 2.0, "measured locally")
    for exp, status, value in (("1" * 40, "kept", 1.9), ("2" * 40, "discarded", 2.1), ("3" * 40, "running", None)):
        ledger.add_experiment(exp, OWN, base, "e" * 40, exp[:1] * 39 + "c", f"idea {exp[:4]}", "local")
        rid = ledger.start_run(Run(exp_id=exp, commit_id=exp[:1] * 39 + "c", protocol_id=OWN, kind="experiment",
                                   status="running", parent=base))
        if status != "running":
            ledger.finish_run(rid, status, val_bpb=value)
        ledger.add_idea(exp, exp[:1] * 39 + "d", proto(1), "12D3KooWsib", "300 s on H100", 0.05)
    view = ideas_view(ledger, OWN)
    by_exp = {i["exp_id"]: i for i in view["ideas"]}
    held, failed, pending = by_exp["1" * 40], by_exp["2" * 40], by_exp["3" * 40]
    assert held["held"] is True and abs(held["gain_here"] - 0.1) < 1e-9 and held["from_protocol"] == proto(1)
    assert held["from_budget"] == "300 s on H100" and held["gain_there"] == 0.05 and held["val_bpb_here"] == 1.9
    assert failed["held"] is False and abs(failed["gain_here"] + 0.1) < 1e-9 and failed["status_here"] == "discarded"
    assert pending["held"] is None and pending["gain_here"] is None
    assert view["by_protocol"] == [{"protocol": proto(1), "budget": "300 s on H100", "tried": 3, "held": 1,
                                    "judged": 2}]
    assert ideas_view(ledger, proto(1)) == {"ideas": [], "by_protocol": []}  # another protocol's view: none


def test_an_idea_taken_before_its_parent_s_value_arrived_shows_its_gain_there_once_it_does(tmp_path):
    """Gossip can bring a sibling's kept result before catch-up brings the value of its parent: the
    idea is proposed with its gain unknown, and the swarm view shows the gain as soon as it is known."""
    ledger = Ledger(tmp_path / "l.sqlite")
    h100, g = proto(1), GENESIS
    peer_run(ledger, h100, "c" * 40, "1" * 40, g, 1.40)
    (idea,) = ideas_of(ledger, OWN)
    assert idea.gain_there is None
    ledger.add_experiment("7" * 40, OWN, g, "e" * 40, "8" * 40, "idea", "local")
    ledger.add_idea("7" * 40, idea.exp_id, idea.protocol, idea.peer, idea.label, idea.gain_there)
    assert ideas_view(ledger, OWN)["ideas"][0]["gain_there"] is None
    peer_run(ledger, h100, "b" * 40, g, g, 1.50, status="baseline", kind="baseline")   # the parent's value there
    assert abs(ideas_view(ledger, OWN)["ideas"][0]["gain_there"] - 0.10) < 1e-9


# --- the proposer -----------------------------------------------------------------------------------


def workspace(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "repo", read_target_files())


def commit(ws: Workspace, parent: str, source: str, n: int) -> str:
    return ws.commit_experiment(parent, {"train.py": source.encode()}, f"exp {n}", f"{n:040x}")


async def test_the_builtin_proposer_applies_a_sibling_s_change_onto_its_baseline_at_most_one_proposal_in_four(
        tmp_path):
    ws = workspace(tmp_path)
    g = ws.genesis
    consts = read_constants(TRAIN)
    ours = commit(ws, g, rewrite_constants(TRAIN, {"WEIGHT_DECAY": consts["WEIGHT_DECAY"] * 2}), 1)  # our baseline
    there = commit(ws, g, rewrite_constants(TRAIN, {"LEARNING_RATE": consts["LEARNING_RATE"] * 1.5}), 2)
    there2 = commit(ws, g, rewrite_constants(TRAIN, {"GRAD_CLIP": consts["GRAD_CLIP"] * 0.5}), 3)
    ideas = [Idea("e" * 40, there, g, proto(1), "12D3KooWsib", "300 s on H100", 0.1),
             Idea("d" * 40, there2, g, proto(1), "12D3KooWsib", "300 s on H100", 0.05)]
    tried: list[str] = []
    noted: list[tuple[str, str, bytes]] = []
    space = parse_search_space((TARGET_DIR / "program.md").read_text())
    known: set[bytes] = set()

    async def is_known(data: bytes) -> bool:
        return data in known

    p = BuiltinProposer(space, seed=1, ideas=lambda: [i for i in ideas if i.exp_id not in tried],
                        on_idea=lambda idea, baseline, data: (tried.append(idea.exp_id),
                                                              noted.append((idea.exp_id, baseline, data))))
    first = await p.propose(ws, ours, is_known)
    assert isinstance(first, Proposal) and first.constants_only
    assert first.description.startswith(f"idea {'e' * 10} from {proto(1)[:12]} (300 s on H100): LEARNING_RATE")
    got = read_constants(first.train_py.decode())
    assert got["LEARNING_RATE"] == consts["LEARNING_RATE"] * 1.5 and got["WEIGHT_DECAY"] == consts["WEIGHT_DECAY"] * 2
    assert noted == [("e" * 40, ours, first.train_py)]
    known.add(first.train_py)
    following = [await p.propose(ws, ours, is_known) for _ in range(IDEA_EVERY)]
    assert [d.description.startswith("idea ") for d in following] == [False] * (IDEA_EVERY - 1) + [True]
    assert following[-1].description.startswith(f"idea {'d' * 10}")
    # a known result is never proposed again
    known.add(following[-1].train_py)
    tried.clear()
    later = [await p.propose(ws, ours, is_known) for _ in range(2 * IDEA_EVERY)]
    assert not any(d.description.startswith("idea ") for d in later)


async def test_a_sibling_s_code_change_crosses_only_where_that_peer_s_code_may_run(tmp_path):
    ws = workspace(tmp_path)
    g = ws.genesis
    code = commit(ws, g, TRAIN.replace("def main(", "import os  # a peer's code\n\n\ndef main(", 1), 1)
    ideas = [Idea("e" * 40, code, g, proto(1), "12D3KooWsib", "300 s on H100", 0.1)]
    space = parse_search_space((TARGET_DIR / "program.md").read_text())

    async def unknown(data: bytes) -> bool:
        return False

    strict = await BuiltinProposer(space, seed=1, ideas=lambda: ideas, code_from=lambda peer: False).propose(
        ws, g, unknown)
    assert not strict.description.startswith("idea ")
    sandboxed = await BuiltinProposer(space, seed=1, ideas=lambda: ideas, code_from=lambda peer: True).propose(
        ws, g, unknown)
    assert sandboxed.description.startswith("idea ") and not sandboxed.constants_only
    # a commit not here yet (still being fetched) is no idea now, and is not remembered as one that failed
    missing = [Idea("e" * 40, "f" * 40, g, proto(1), "12D3KooWsib", "?", 0.1)]
    p = BuiltinProposer(space, seed=1, ideas=lambda: missing)
    assert not (await p.propose(ws, g, unknown)).description.startswith("idea ")
    assert not p._merged


async def test_an_unreadable_commit_of_a_peer_is_no_idea_and_stops_no_proposal(tmp_path, monkeypatch):
    """A peer's malformed tree makes git raise while reading it (found with a real hostile peer): the
    proposer skips that change for this baseline and proposes something else."""
    import pygit2

    ws = workspace(tmp_path)
    g = ws.genesis
    bad = commit(ws, g, rewrite_constants(TRAIN, {"GRAD_CLIP": 0.5}), 1)
    real = ws.is_complete

    def is_complete(c: str) -> bool:
        if c == bad:
            raise pygit2.GitError("Unable to read tree")
        return real(c)

    monkeypatch.setattr(ws, "is_complete", is_complete)
    ideas = [Idea("e" * 40, bad, g, proto(1), "12D3KooWsib", "?", 0.1)]
    space = parse_search_space((TARGET_DIR / "program.md").read_text())

    async def unknown(data: bytes) -> bool:
        return False

    p = BuiltinProposer(space, seed=1, ideas=lambda: ideas)
    for _ in range(2):
        got = await p.propose(ws, g, unknown)
        assert isinstance(got, Proposal) and not got.description.startswith("idea ")


def test_an_agent_reads_the_ideas_from_other_hardware_with_their_patch_in_swarm_md(tmp_path):
    """Agents propose from SWARM.md (their scratch copy has no history to diff): the sibling's kept
    changes are listed there with where they held, their gain there and the patch itself."""
    from p2p_research.research.io.digest import render_swarm_md

    ws = workspace(tmp_path)
    g = ws.genesis
    consts = read_constants(TRAIN)
    there = commit(ws, g, rewrite_constants(TRAIN, {"LEARNING_RATE": consts["LEARNING_RATE"] * 1.5}), 2)
    ledger = Ledger(tmp_path / "l.sqlite")
    h100 = proto(1)
    peer_run(ledger, h100, "b" * 40, g, g, 1.50, status="baseline", kind="baseline")
    peer_run(ledger, h100, "c" * 40, there, g, 1.40)
    peer_run(ledger, h100, "d" * 40, "9" * 40, g, 1.45)  # its objects are not here: listed without a patch
    md = render_swarm_md(ledger, OWN, diff_of=ws.diff)
    section = md.split("## Ideas from other hardware", 1)[1].split("## Open claims", 1)[0]
    assert f"`{'c' * 10}` on 300 s on NVIDIA H100 80GB HBM3 x1: change cccc (improved val_bpb by 0.1000 there)" in section
    assert f"`{'d' * 10}`" in section and section.count("```diff") == 1
    assert f"+LEARNING_RATE = {consts['LEARNING_RATE'] * 1.5}" in section, section
    assert "## Ideas from other hardware" not in render_swarm_md(ledger, h100, diff_of=ws.diff)  # h100's own: none


async def test_a_followed_sibling_is_asked_again_for_what_finished_since_gossip_may_have_lost_it():
    """The siblings' anti-entropy: a peer asked for a sibling's kept results is asked again RESYNC_S
    later, for what finished since the last ask (less a margin), not before."""
    from p2p_research.daemon.siblings import RESYNC_MARGIN_S, RESYNC_S

    now = [1000.0]
    peers: list[tuple[str, dict[str, str] | None]] = [("p2", about(proto(2)))]
    asked: list[tuple[str, str, float | None]] = []

    async def nothing(swarm: str) -> None:
        return None

    async def catch_up(peer: str, protocol: str, since: float | None) -> int:
        asked.append((peer, protocol, since))
        return 0

    follower = SiblingFollower(SiblingBook(GENESIS, OWN), lambda: peers, nothing, nothing, catch_up, clock=lambda: now[0])
    async with trio.open_nursery() as nursery:
        tasks = PeerTasks(nursery, Faults())
        await follower.step(tasks)
        await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        now[0] += RESYNC_S - 1
        await follower.step(tasks)
        await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        assert asked == [("p2", proto(2), None)]
        now[0] += 2
        await follower.step(tasks)
        await wait_all_tasks_blocked()  # the tasks it started ran as far as they can
        assert asked == [("p2", proto(2), None), ("p2", proto(2), 1000.0 - RESYNC_MARGIN_S)]
        nursery.cancel_scope.cancel()
