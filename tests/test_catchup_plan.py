"""Whom a node asks for missed results, and from when (pure: research/catchup_plan.py)."""

import random

from hypothesis import given
from hypothesis import strategies as st

from p2p_research.research.catchup_plan import CATCHUP_TRIES, FIRST_WINDOW_S, SYNC_MARGIN_S, CatchUpPlan


def test_first_catchups_from_distinct_peers_each_tried_at_most_twice():
    plan = CatchUpPlan(started=1000.0, max_peers=2)
    assert plan.catchup_peers(["a", "b", "c"]) == ["a", "b", "c"]  # every one until two ran to the end
    plan.on_catchup("a", completed=False)           # refused: tried again
    assert plan.catchup_peers(["a", "b", "c"]) == ["a", "b", "c"]
    plan.on_catchup("a", completed=False)           # twice: given up
    assert "a" in plan.done_with and plan.tries["a"] == CATCHUP_TRIES
    plan.on_catchup("b", completed=True)
    assert plan.catchup_peers(["a", "b", "c"]) == ["c"] and plan.catching_up(1001.0)
    plan.on_catchup("c", completed=True)
    assert not plan.catching_up(1001.0)
    late = CatchUpPlan(started=1000.0)
    assert late.catching_up(1000.0 + FIRST_WINDOW_S - 1) and not late.catching_up(1000.0 + FIRST_WINDOW_S)


def test_syncs_ask_every_neighbour_before_any_twice_and_from_the_last_good_sync():
    plan = CatchUpPlan(started=1000.0, rng=random.Random(1))
    assert plan.next_sync([], 1100.0) is None
    peers = ["p1", "p2", "p3", "p4"]
    asked = []
    t = 1100.0
    for _ in range(8):
        peer, since = plan.next_sync(peers, t)
        assert since == (plan.last_sync or plan.started) - SYNC_MARGIN_S
        asked.append(peer)
        plan.on_sync(peer, t, ok=peer != "p3")
        t += 30
    assert sorted(asked[:4]) == peers and sorted(asked[4:]) == peers
    assert plan.last_sync == max(t0 for p, (t0, _) in plan.turn_at.items() if p != "p3")


def test_fresh_identities_wait_behind_the_neighbours_a_node_found():
    """A peer reconnecting under a new id every interval is never chosen ahead of known neighbours."""
    plan = CatchUpPlan(started=0.0, rng=random.Random(3))
    honest = ["h1", "h2", "h3"]
    chosen = []
    for i in range(9):
        t = 100.0 + 30 * i
        peer, _ = plan.next_sync([*honest, f"sybil{i}"], t)
        chosen.append(peer)
        plan.on_sync(peer, t, ok=True)
    assert chosen.count("h1") == chosen.count("h2") == chosen.count("h3") >= 2
    assert sum(p.startswith("sybil") for p in chosen) <= 3


@given(st.lists(st.sampled_from([f"p{i}" for i in range(6)]), min_size=1, max_size=6, unique=True),
       st.integers(0, 40), st.integers(0, 2**32))
def test_the_next_sync_is_a_connected_peer_asked_least_recently(connected, rounds, seed):
    plan = CatchUpPlan(started=0.0, rng=random.Random(seed))
    for i in range(rounds):
        peer, _ = plan.next_sync(connected, float(i))
        assert peer in connected
        assert plan.turn_at[peer] == min(plan.turn_at[p] for p in connected)
        plan.on_sync(peer, float(i) + 0.5, ok=bool(i % 2))
