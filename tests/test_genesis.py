"""Who measures the genesis first, and what value peers agree on (pure)."""

from hypothesis import given
from hypothesis import strategies as st

from p2p_research.research import genesis as G


def test_alone_a_node_always_measures_and_in_a_swarm_about_a_share_does():
    assert G.measures_first("peer", "c" * 40, shares=False)
    n = sum(G.measures_first(f"peer{i}", "c" * 40, shares=True) for i in range(4000))
    assert 0.2 < n / 4000 < 0.3
    # the ticket is fixed by the identity and the commit, and differs per commit
    assert G.ticket("p", "a") == G.ticket("p", "a") != G.ticket("p", "b")


values = st.floats(min_value=0.5, max_value=3.0, allow_nan=False)


@given(st.dictionaries(st.text(min_size=1, max_size=4), values, max_size=8), st.floats(0, 0.05))
def test_agreed_value_needs_two_distinct_peers_within_tolerance(measured, tol):
    v = G.agreed_value(measured, tol)
    vs = sorted(measured.values())
    pairs = [(a, b) for i, a in enumerate(vs) for b in vs[i + 1:] if b - a <= tol]
    if not pairs:
        assert v is None
    else:
        assert v == min(a for a, _ in pairs)  # the lowest member of the lowest agreeing group


def test_one_peer_or_disagreeing_peers_give_nothing_and_junk_is_ignored():
    assert G.agreed_value({"a": 1.6}, 0.004) is None
    assert G.agreed_value({"a": 1.6, "b": 1.7}, 0.004) is None
    assert G.agreed_value({"a": 1.6, "b": float("nan"), "c": float("inf"), "d": -1.0}, 0.004) is None
    assert G.agreed_value({"a": 1.6, "b": 1.603, "liar1": 9.0, "liar2": 9.0}, 0.004) == 1.6


def test_the_wait_follows_the_run_length_within_bounds():
    assert G.await_s(None) == G.AWAIT_MIN_S
    assert G.await_s(15.0) == 7.5
    assert G.await_s(3600.0) == G.AWAIT_MAX_S


def test_a_waiting_node_says_what_it_waits_for():
    from p2p_research.cli.research_cmds import progress_label
    from p2p_research.research.io.engine import Progress

    p = Progress(phase="waiting", waiting_for="the genesis value from peers (2 must agree; 3 peers heard)")
    assert progress_label(p).startswith("waiting | for the genesis value from peers (2 must agree")
