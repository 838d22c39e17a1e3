"""The assignment ring (research/ownership.py): owners and replicas agree with the reference order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.ownership import HashRing, Ownership, assignment_order
from p2p_research.research.swarm import PeerClaim, SwarmPolicy, SwarmState

peer_names = st.lists(st.text("abcdef0123456789", min_size=1, max_size=6), min_size=1, max_size=40, unique=True)


@given(peer_names, st.text(min_size=1, max_size=12), st.lists(st.integers(0, 39), max_size=10))
@settings(max_examples=200, deadline=None)
def test_the_incremental_ring_walks_in_the_reference_order(peers, key, removals):
    ring = HashRing()
    for p in peers:
        ring.add(p)
    ring.add(peers[0])  # adding twice changes nothing
    gone = {peers[i] for i in removals if i < len(peers)}
    for p in gone:
        ring.remove(p)
    left = [p for p in peers if p not in gone]
    assert list(ring.walk(key)) == assignment_order(key, left)
    assert len(ring) == len(left)


@given(peer_names, st.lists(st.text("0123456789abcdef", min_size=8, max_size=8), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_every_node_names_the_same_single_owner(peers, keys):
    """Nodes that heard from the same peers agree on each key's owner: exactly one of them owns it."""
    nodes = {p: Ownership(p) for p in peers}
    for o in nodes.values():
        for p in peers:
            o.note(p, 100.0)
    for k in keys:
        owners = [me for me, o in nodes.items() if o.owns(k, 101.0)]
        assert owners == [assignment_order(k, peers)[0]]


def test_a_silent_peer_leaves_the_ring_and_an_ignored_one_owns_nothing():
    o = Ownership("me", memory_s=600.0)
    o.note("other", 0.0)
    keys = [f"k{i}" for i in range(200)]
    theirs = [k for k in keys if not o.owns(k, 10.0)]
    assert theirs and len(theirs) < len(keys)  # both own a share
    assert all(o.owns(k, 10.0, ignored=lambda p: p == "other") for k in theirs)
    assert all(o.owns(k, 601.0) for k in keys) and "other" not in o.ring  # silent for 600 s


def test_memory_of_heard_peers_is_bounded():
    o = Ownership("me", max_peers=50)
    for i in range(1000):
        o.note(f"p{i}", float(i) / 1000)
    assert len(o.heard) == 50 and len(o.ring) == 51


@given(peer_names, st.integers(1, 5))
@settings(max_examples=100, deadline=None)
def test_replicas_are_the_first_peers_on_the_ring_without_the_claimant(peers, replicas):
    claimant = "claimant"
    claim = PeerClaim("ab" * 20, "c" * 40, claimant, 1.5, 0, 100.0)
    chosen = assignment_order(claim.exp_id, peers)[:replicas]
    for me in peers:
        s = SwarmState(SwarmPolicy(me, "adaptive", replicas=replicas))
        for p in [*peers, claimant]:
            s.note_peer(p)
        assert s.designated(claim) == (me in chosen)


def test_sparse_flooding_decisions():
    """research/flooding.py: what a node floods, and how often a member of a huge swarm says it is there."""
    from p2p_research.research import flooding as f

    assert not f.sparse("auto", 100) and f.sparse("auto", 101) and f.sparse("kept", 0) and not f.sparse("all", 10**6)
    assert f.floods_claim(False) and not f.floods_claim(True)
    assert [f.floods_result(True, s) for s in ("kept", "baseline", "discarded", "crash")] == [True, False, False, False]
    # a genesis measurement made for peers that skipped theirs is flooded even by a sparse node
    assert [f.floods_result(True, s, for_peers=True) for s in ("baseline", "discarded")] == [True, False]
    assert f.floods_verification(True, "refuted", False) and f.floods_verification(True, "confirmed", True)
    assert not f.floods_verification(True, "confirmed", False) and f.floods_verification(False, "confirmed", False)
    assert f.presence_interval(35) == f.PRESENCE_S and f.presence_interval(10_000) == 5_000
    assert f.member_memory(10_000) > f.presence_interval(10_000)  # a member is not forgotten between its messages
    from p2p_research.research.ownership import OWNER_MEMORY_S, Ownership
    assert f.member_memory_for("all")(10_000) == OWNER_MEMORY_S == f.member_memory_for("auto")(100)
    assert f.member_memory_for("auto")(101) == f.member_memory_for("kept")(101) == f.member_memory(101)
    o = Ownership("me", f.member_memory_for("kept"))
    o.note("other", 0.0)
    o.expire(700.0)
    assert "other" in o.heard  # 750 s while sparse, where a flooding node forgets after 600 s
    o.expire(751.0)
    assert "other" not in o.heard
