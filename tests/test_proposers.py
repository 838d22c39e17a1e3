"""The built-in proposer with candidate ownership: nodes of a swarm propose disjoint experiments."""

from __future__ import annotations

import hashlib

from p2p_research.research.io.proposers import BuiltinProposer, Proposal
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.searchspace import parse_search_space
from p2p_research.target import read_target_files


def _owner(data: bytes, nodes: list[str]) -> str:
    return max(nodes, key=lambda p: hashlib.sha256(p.encode() + data).digest())


async def test_nodes_that_own_disjoint_candidates_never_propose_the_same_change(tmp_path):
    files = read_target_files()
    ws = Workspace.create(tmp_path / "ws", files)
    space = parse_search_space(files["program.md"].decode())
    nodes = [f"node{i}" for i in range(6)]

    proposals: dict[str, list[bytes]] = {}
    for n in nodes:
        p = BuiltinProposer(space, seed=7)  # same seed on purpose: without ownership they would collide
        out: list[bytes] = []

        async def own_only(data: bytes, out=out) -> bool:  # a node knows only its own claims: no gossip yet
            return data in out

        for _ in range(5):
            r = await p.propose(ws, ws.baseline, own_only, lambda d, n=n: _owner(d, nodes) == n)
            assert isinstance(r, Proposal)
            out.append(r.train_py)
        proposals[n] = out
    owned = {n: [d for d in ds if _owner(d, nodes) == n] for n, ds in proposals.items()}
    assert all(len(v) == 5 for v in owned.values())
    everything = [d for ds in proposals.values() for d in ds]
    assert len(set(everything)) == len(everything)


async def test_without_an_owned_candidate_it_runs_another_unknown_one(tmp_path):
    files = read_target_files()
    ws = Workspace.create(tmp_path / "ws", files)
    space = parse_search_space(files["program.md"].decode())

    async def unknown(data: bytes) -> bool:
        return False

    r = await BuiltinProposer(space, seed=1).propose(ws, ws.baseline, unknown, lambda d: False)
    assert isinstance(r, Proposal)


async def test_a_baseline_without_knobs_is_a_skip_with_the_reason_not_an_error(tmp_path):
    """An adopted train.py may have none of the search space's constants (a peer rewrote it): the
    proposer says so and research goes on (combinations, peers' results), it does not raise."""
    from p2p_research.research.io.proposers import Skip

    files = read_target_files()
    ws = Workspace.create(tmp_path / "ws", files)
    space = parse_search_space(files["program.md"].decode())
    bare = b"import prepare\nprint('---')\nprint('val_bpb: 1.0')\n"
    commit = ws.commit_experiment(ws.baseline, {"train.py": bare}, "no knobs", "0" * 40)

    async def unknown(data: bytes) -> bool:
        return False

    r = await BuiltinProposer(space, seed=1).propose(ws, commit, unknown)
    assert isinstance(r, Skip) and "nothing to mutate" in r.reason, r
