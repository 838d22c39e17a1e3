"""research.claims: local clocks bound claims, claims are bounded by delivery, yields by a budget."""

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.claims import ClaimBook, ClaimPolicy


def test_a_back_dated_or_future_claim_is_clamped_to_this_nodes_clock():
    book = ClaimBook()
    a = book.admit("QmA", "a" * 40, ts=0.0, lease_until=10_000.0, received_at=1000.0)
    assert a.accepted and a.ts == 1000.0 - book.policy.skew_s
    b = book.admit("QmA", "b" * 40, ts=5000.0, lease_until=9e9, received_at=1000.0)
    assert b.ts == 1000.0 + book.policy.skew_s and b.lease_until == 1000.0 + book.policy.max_lease_s


def test_open_claims_are_bounded_by_what_the_peer_delivered():
    book = ClaimBook(ClaimPolicy(base_open=2))
    assert book.admit("QmA", "1" * 40, 1.0, 500.0, 1.0).accepted
    assert book.admit("QmA", "2" * 40, 1.0, 500.0, 1.0).accepted
    third = book.admit("QmA", "3" * 40, 1.0, 500.0, 1.0)
    assert not third.accepted and "allowance" in third.reason
    assert book.admit("QmA", "1" * 40, 2.0, 600.0, 2.0).accepted  # a renewal is not a new claim
    book.on_result("QmA", "1" * 40)  # honoured: one slot back, and one more allowed
    assert book.allowance("QmA") == 3
    assert book.admit("QmA", "3" * 40, 3.0, 500.0, 3.0).accepted
    assert book.admit("QmA", "4" * 40, 3.0, 500.0, 3.0).accepted
    assert book.admit("QmB", "1" * 40, 3.0, 500.0, 3.0).accepted  # per peer


def test_claims_that_never_turn_into_results_lose_priority_and_a_late_result_restores_it():
    book = ClaimBook(ClaimPolicy(base_open=10, lapse_slack=2))
    for i in range(3):
        assert book.admit("QmA", f"{i:040x}", 0.0, 100.0, 0.0).accepted
    book.expire(101.0)
    assert book.lapsed["QmA"] == 3 and not book.has_priority("QmA")
    refused = book.admit("QmA", "f" * 40, 101.0, 300.0, 101.0)
    assert not refused.accepted and "lapsed" in refused.reason
    book.on_result("QmA", f"{0:040x}")  # a lost result arrives late (anti-entropy)
    assert book.lapsed["QmA"] == 2 and book.has_priority("QmA")


def test_expired_lease_is_refused():
    assert not ClaimBook().admit("QmA", "a" * 40, 0.0, 5.0, 10.0).accepted


@settings(max_examples=50, deadline=None)
@given(runs=st.integers(10, 2000), keys=st.integers(1, 500), back=st.floats(0, 1e6))
def test_any_number_of_identities_takes_at_most_the_yield_budget(runs, keys, back):
    """Every run of this node is counter-claimed, back-dated, by a fresh or a reused identity: the
    node yields at most 2 + 1 % of its runs, whoever the identities are."""
    book = ClaimBook()
    yielded = 0
    for i in range(runs):
        peer = f"QmSybil{i % keys}"
        t = 1000.0 + 10 * i
        adm = book.admit(peer, f"{i:040x}", t - back, t + 600, t)
        if adm.accepted and book.may_yield_to(peer, confirmed_results=0, runs_finished=i - yielded):
            book.note_yield(peer)
            yielded += 1
    assert yielded <= 2 + 0.01 * runs


def test_a_peer_whose_results_this_node_confirmed_may_win_more_ties():
    book = ClaimBook(ClaimPolicy(yield_free=10))
    assert book.may_yield_to("QmA", confirmed_results=0, runs_finished=0)
    book.note_yield("QmA")
    assert not book.may_yield_to("QmA", confirmed_results=0, runs_finished=0)
    assert book.may_yield_to("QmA", confirmed_results=1, runs_finished=0)
