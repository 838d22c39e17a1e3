"""Combining wins: kept results that branched off the baseline's lineage, merged onto the baseline."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.constants import read_constants, rewrite_constants
from p2p_research.research.io.combine import Win, candidates, merged_train_py
from p2p_research.research.io.objects import first_parent_ancestry, root_of
from p2p_research.research.io.proposers import BuiltinProposer, Proposal
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.searchspace import parse_search_space
from p2p_research.store.ledger import Ledger, Run
from p2p_research.target import TARGET_DIR, read_target_files

TRAIN = (TARGET_DIR / "train.py").read_text()


def changed(source: str, **values) -> str:
    return rewrite_constants(source, values)


def workspace(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "repo", read_target_files())


def commit(ws: Workspace, parent: str, source: str, n: int) -> str:
    return ws.commit_experiment(parent, {"train.py": source.encode()}, f"exp {n}", f"{n:040x}")


def test_candidates_are_wins_off_the_lineage_best_first():
    lineage = ["b2", "b1", "g"]  # baseline first
    wins = [Win("e1", "b1", "g", 1.5, ""),            # adopted: on the lineage
            Win("e2", "w2", "g", 1.48, ""),           # branched off g: a candidate
            Win("e3", "w3", "b1", 1.47, ""),          # branched off b1: a candidate, better
            Win("e4", "w4", "b2", 1.4, ""),           # on the baseline itself: adoption, not combination
            Win("e5", "w5", "elsewhere", 1.3, "")]    # another lineage
    assert [w.exp_id for w in candidates(wins, lineage)] == ["e3", "e2"]


def test_disjoint_changes_merge_and_overlapping_ones_do_not(tmp_path):
    ws = workspace(tmp_path)
    g = ws.genesis
    consts = read_constants(TRAIN)
    lr, wd = consts["LEARNING_RATE"], consts["WEIGHT_DECAY"]
    a = commit(ws, g, changed(TRAIN, LEARNING_RATE=lr * 1.5), 1)          # adopted: the baseline
    b = commit(ws, g, changed(TRAIN, WEIGHT_DECAY=wd * 2), 2)             # another win on g
    c = commit(ws, g, changed(TRAIN, LEARNING_RATE=lr * 0.5), 3)          # the same knob as a
    merged = merged_train_py(ws, g, a, b)
    assert merged is not None
    got = read_constants(merged.decode())
    assert got["LEARNING_RATE"] == lr * 1.5 and got["WEIGHT_DECAY"] == wd * 2
    assert merged_train_py(ws, g, a, c) is None           # overlapping: no combination
    # an idea from another protocol: its value is what held there, so it is tried at that value
    idea = merged_train_py(ws, g, a, c, theirs=True)
    assert idea is not None and read_constants(idea.decode())["LEARNING_RATE"] == lr * 0.5
    assert merged_train_py(ws, g, c, c, theirs=True) is None  # nothing new
    assert merged_train_py(ws, g, a, a) is None           # nothing new
    assert merged_train_py(ws, g, a, "f" * 40) is None    # not here
    assert first_parent_ancestry(ws, a) == [a, g] and root_of(ws, a) == g
    assert root_of(ws, "f" * 40) is None


async def test_the_builtin_proposer_proposes_the_combination_first_and_only_once(tmp_path):
    ws = workspace(tmp_path)
    g = ws.genesis
    consts = read_constants(TRAIN)
    a = commit(ws, g, changed(TRAIN, LEARNING_RATE=consts["LEARNING_RATE"] * 1.5), 1)
    b = commit(ws, g, changed(TRAIN, WEIGHT_DECAY=consts["WEIGHT_DECAY"] * 2), 2)
    wins = [Win("e1", a, g, 1.50, "LEARNING_RATE up"), Win("e2", b, g, 1.51, "WEIGHT_DECAY up")]
    space = parse_search_space((TARGET_DIR / "program.md").read_text())
    known: set[bytes] = set()

    async def is_known(data: bytes) -> bool:
        return data in known

    p = BuiltinProposer(space, seed=1, wins=lambda: wins)
    first = await p.propose(ws, a, is_known)
    assert isinstance(first, Proposal) and first.description.startswith("combine e2")
    assert "WEIGHT_DECAY" in first.description and first.constants_only
    known.add(first.train_py)
    second = await p.propose(ws, a, is_known)   # the combination is known now: an ordinary mutation
    assert isinstance(second, Proposal) and not second.description.startswith("combine")
    # a combination another node owns is left to it
    other = BuiltinProposer(space, seed=1, wins=lambda: wins)
    third = await other.propose(ws, a, lambda data: is_known(b""), is_mine=lambda data: data != first.train_py)
    assert isinstance(third, Proposal) and not third.description.startswith("combine")


def test_kept_wins_leave_out_peers_this_node_refuted(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    now = time.time()

    def run(exp, origin, peer, status, kind="experiment", val=1.5):
        r = Run(exp_id=exp, commit_id=exp[:1] * 40, protocol_id="p", kind=kind, status=status, origin=origin,
                peer=peer, parent="0" * 40, val_bpb=val, finished_at=now)
        if origin == "peer":
            assert ledger.add_peer_run(r)
        else:
            ledger.finish_run(ledger.start_run(r), status, val_bpb=val)

    run("a" * 40, "local", "", "kept", val=1.45)
    run("b" * 40, "peer", "honest", "kept", val=1.40)
    run("c" * 40, "peer", "liar", "kept", val=1.10)
    run("d" * 40, "peer", "liar", "kept", val=1.00)
    run("d" * 40, "local", "", "refuted", kind="verification", val=1.6)   # this node caught one lie
    run("d" * 40, "peer", "other-verifier", "refuted", kind="verification", val=1.6)  # so did another peer
    run("e" * 40, "peer", "other-verifier", "kept", val=1.42)             # who is not a liar for it
    assert [(w["exp_id"][0], w["peer"]) for w in ledger.kept_wins("p")] == [("b", "honest"), ("e", "other-verifier"),
                                                                           ("a", "")]


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["LEARNING_RATE", "WEIGHT_DECAY", "BETA1", "GRAD_CLIP", "MIN_LR_FRAC"]),
       st.sampled_from(["LEARNING_RATE", "WEIGHT_DECAY", "BETA1", "GRAD_CLIP", "MIN_LR_FRAC"]),
       st.floats(1.1, 3.0), st.floats(1.1, 3.0))
def test_a_merge_applies_exactly_both_changes_or_none(tmp_path_factory, k1, k2, f1, f2):
    ws = workspace(tmp_path_factory.mktemp("ws"))
    g = ws.genesis
    base = read_constants(TRAIN)
    a = commit(ws, g, changed(TRAIN, **{k1: round(base[k1] * f1, 6)}), 1)
    b = commit(ws, g, changed(TRAIN, **{k2: round(base[k2] * f2, 6)}), 2)
    merged = merged_train_py(ws, g, a, b)
    if k1 == k2:  # the same knob: never combined
        assert merged is None
        return
    assert merged is not None
    got = read_constants(merged.decode())
    want = dict(base, **{k1: round(base[k1] * f1, 6), k2: round(base[k2] * f2, 6)})
    assert got == want


async def test_a_peers_code_change_is_combined_only_where_its_code_may_run(tmp_path):
    """Without a sandbox (trust policy `constants`) a peer's code change must never reach a local run by
    way of a combination; its constants-only wins still combine."""
    ws = workspace(tmp_path)
    g = ws.genesis
    consts = read_constants(TRAIN)
    a = commit(ws, g, changed(TRAIN, LEARNING_RATE=consts["LEARNING_RATE"] * 1.5), 1)
    code = TRAIN.replace("def main(", "import os  # a peer's code\n\n\ndef main(", 1)
    assert code != TRAIN
    b = commit(ws, g, code, 2)
    wins = [Win("e2", b, g, 1.4, "code", peer="12D3KooWpeer")]
    space = parse_search_space((TARGET_DIR / "program.md").read_text())

    async def unknown(data: bytes) -> bool:
        return False

    strict = await BuiltinProposer(space, seed=1, wins=lambda: wins, code_from=lambda peer: False).propose(ws, a, unknown)
    assert not strict.description.startswith("combine")
    sandboxed = await BuiltinProposer(space, seed=1, wins=lambda: wins, code_from=lambda peer: True).propose(ws, a, unknown)
    assert sandboxed.description.startswith("combine e2") and not sandboxed.constants_only
    assert b"import os  # a peer's code" in sandboxed.train_py
    mine = [Win("e2", b, g, 1.4, "code", peer="")]   # this node's own code change: no trust needed
    own = await BuiltinProposer(space, seed=1, wins=lambda: mine, code_from=lambda peer: False).propose(ws, a, unknown)
    assert own.description.startswith("combine e2")


def test_a_stack_adds_the_best_wins_whose_knobs_are_still_free_and_starts_at_two():
    """stack_knobs (both engines' stacks): best first, a win is added only where the baseline and the wins
    before it left its knobs at its parent's values; each stack from two wins on is yielded, with the knobs
    to set and the wins in it; at most `limit` wins are looked at."""
    from p2p_research.research.io.combine import stack_knobs

    parent = {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5}
    baseline = {**parent, "E": 50}                    # the baseline moved E itself
    wins = [("w1", parent, {"A": 10}),
            ("w2", parent, {"A": 11}),                # A is taken by w1: skipped
            ("w3", parent, {"B": 20, "C": 30}),
            ("w4", parent, {"E": 6}),                 # the baseline moved E: skipped
            ("w5", {**parent, "D": 40}, {"C": 31}),   # its parent had C = 3, but w3 set C: skipped
            ("w6", parent, {"D": 41})]
    got = list(stack_knobs(baseline, wins))
    assert got == [({"A": 10, "B": 20, "C": 30}, ("w1", "w3")),
                   ({"A": 10, "B": 20, "C": 30, "D": 41}, ("w1", "w3", "w6"))]
    assert list(stack_knobs(baseline, wins, limit=4)) == got[:1]
    assert list(stack_knobs(baseline, wins[:2])) == []   # one win is a plain combination, not a stack
