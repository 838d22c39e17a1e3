"""Adoption, verification and dedup decisions, driven directly (sans-IO) with hypothesis."""

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.research.claims import claim_winner
from p2p_research.research.io.trust import check_change
from p2p_research.research.swarm import MAX_VOTES, Adopt, PeerClaim, SwarmPolicy, SwarmState, Verify
from p2p_research.target import read_target_files

PEERS = ["QmA", "QmB", "QmC", "QmLiar"]
claims = st.builds(
    PeerClaim, exp_id=st.text("0123456789abcdef", min_size=40, max_size=40), commit=st.just("c" * 40),
    peer=st.sampled_from(PEERS), value=st.floats(1.0, 2.0), seed=st.integers(0, 3), received_at=st.floats(0, 100))


def drive(state: SwarmState, events, baseline: float, truth) -> tuple[float, list[str]]:
    """Feed results (in the given order, duplicates included); verify with `truth(claim)`; return the final baseline."""
    adopted = []
    for c in events:
        state.on_peer_result(c, True, "", "kept")
        while (d := state.next_decision(baseline)) is not None:
            if isinstance(d, Verify):
                _, d = state.on_verified(d.claim, truth(d.claim), baseline)
            if isinstance(d, Adopt):
                assert baseline - d.value > state.policy.margin
                baseline = d.value
                adopted.append(d.claim.peer)
    return baseline, adopted


@settings(max_examples=200, deadline=None)
@given(st.lists(claims, max_size=25), st.sampled_from(["always", "adaptive"]), st.randoms())
def test_a_liar_never_becomes_the_baseline_when_verifying(events, policy, rnd):
    events = events + events[: len(events) // 2]  # gossip replays
    rnd.shuffle(events)
    state = SwarmState(SwarmPolicy("QmSelf", policy, margin=0.002))

    def truth(c):  # honest peers report what a re-run measures; the liar claims 0.3 better than the truth
        return c.value + 0.3 if c.peer == "QmLiar" else c.value

    _, adopted = drive(state, events, 2.5, truth)
    assert "QmLiar" not in adopted
    liar = state.reputation.get("QmLiar")
    assert liar is None or liar.confirmed == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(claims, min_size=1, max_size=25, unique_by=lambda c: (c.exp_id, c.peer)), st.randoms())
def test_order_and_duplicates_do_not_change_the_outcome_under_never(events, rnd):
    a = SwarmState(SwarmPolicy("QmSelf", "never", margin=0.002))
    b = SwarmState(SwarmPolicy("QmSelf", "never", margin=0.002))
    shuffled = events * 2
    rnd.shuffle(shuffled)
    # adopt only at the end of all deliveries: the best candidate wins whatever the order
    for c in events:
        a.on_peer_result(c, True, "", "kept")
    for c in shuffled:
        b.on_peer_result(c, True, "", "kept")
    da, db = a.next_decision(2.5), b.next_decision(2.5)
    assert (da is None) == (db is None)
    if da is not None:
        assert da.claim.value == db.claim.value == min(c.value for c in events)


def test_a_lone_liar_is_refuted_then_ignored():
    """A peer none of whose results this node confirmed is ignored at its first refutation here (each
    honest node re-ran two lies of each liar before; with two liars in 35 nodes that was 20 % of its
    time: docs/scale.md); one with a confirmation needs `refuted_threshold` refutations net of them."""
    state = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, refuted_threshold=2))
    lies = [PeerClaim(f"{i:040x}", "c" * 40, "QmLiar", 2.0 - 0.1 * i, 0, float(i)) for i in range(1, 5)]
    base, adopted = drive(state, lies, 2.5, lambda c: c.value + 0.3)
    assert base == 2.5 and not adopted
    assert state.reputation["QmLiar"].refuted == 1 and state.ignored("QmLiar")
    proven = PeerClaim("a" * 40, "c" * 40, "QmProven", 1.5, 0, 0.0)
    assert state.on_verified(proven, 1.5, 2.0)[0] == "confirmed"
    assert state.on_verified(proven, 1.9, 2.0)[0] == "refuted" and not state.ignored("QmProven")
    state.on_verified(proven, 1.9, 2.0)
    state.on_verified(proven, 1.9, 2.0)
    assert state.ignored("QmProven")   # refuted three times, net of its one confirmation twice


def test_adaptive_checks_new_peers_and_trusts_with_evidence():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002))
    assert s.verify_probability("QmA") == 1.0
    c = PeerClaim("a" * 40, "c" * 40, "QmA", 1.5, 0, 0.0)
    assert s.on_verified(c, 1.5, 2.0)[0] == "confirmed"
    assert s.verify_probability("QmA") == 1.0  # one confirmation may be a liar's lucky draw
    assert s.on_verified(c, 1.5, 2.0)[0] == "confirmed"
    assert s.verify_probability("QmA") == 0.5
    assert s.on_verified(c, 1.5, 2.0)[0] == "confirmed"
    assert abs(s.verify_probability("QmA") - 1 / 3) < 1e-12
    assert s.on_verified(c, 1.9, 2.0)[0] == "refuted"
    assert s.verify_probability("QmA") == 1.0  # a refutation resets trust
    for bad in (None, 3.0, 3.0, 3.0):  # refuted, net of its three confirmations, twice
        assert not s.ignored("QmA")
        s.on_verified(c, bad, 2.0)
    assert s.ignored("QmA")
    assert s.on_peer_result(PeerClaim("b" * 40, "c" * 40, "QmA", 1.0, 0, 0.0), True, "", "kept") is not None


def test_untrusted_or_non_kept_results_never_become_candidates():
    s = SwarmState(SwarmPolicy("QmSelf", "never", margin=0.002))
    c = PeerClaim("a" * 40, "c" * 40, "QmA", 1.0, 0, 0.0)
    assert s.on_peer_result(c, False, "code change", "kept") is not None
    assert s.on_peer_result(PeerClaim("b" * 40, "c" * 40, "QmA", 1.0, 0, 0.0), True, "", "discarded") is not None
    assert s.next_decision(2.0) is None


@given(st.floats(0, 100), st.floats(0, 100), st.sampled_from(PEERS), st.sampled_from(PEERS))
def test_claim_ties_resolve_the_same_on_both_sides(t1, t2, p1, p2):
    assert claim_winner((t1, p1), (t2, p2)) == claim_winner((t2, p2), (t1, p1))


def test_trust_policy_steps():
    files = read_target_files()
    train = files["train.py"].decode()
    const = {**files, "train.py": train.replace("LEARNING_RATE = 0.002", "LEARNING_RATE = 0.0035").encode()}
    code = {**files, "train.py": (train + "\nimport os\nos.system('echo pwned')\n").encode()}
    harness = {**files, "prepare.py": files["prepare.py"] + b"\n# changed\n"}
    assert check_change(files, const, code_allowed=False)[0]
    ok, why = check_change(files, code, code_allowed=False)
    assert not ok and "code" in why
    assert check_change(files, code, code_allowed=True)[0]
    for allowed in (False, True):
        ok, why = check_change(files, harness, code_allowed=allowed)
        assert not ok and "prepare.py" in why
    assert not check_change(files, files, code_allowed=True)[0]


def earn(s: SwarmState, *peers: str) -> None:
    """This node's own re-runs confirmed one first-announced result of each peer: their votes now count."""
    for p in peers:
        s.on_verified(PeerClaim(f"{hash(p) & (16**40 - 1):040x}", "c" * 40, p, 9.0, 0, 0.0), 9.0, 1.0)


def test_quorum_of_other_nodes_replaces_a_local_rerun_but_not_for_colluders():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmB", "QmC", "QmD")
    c = PeerClaim("a" * 40, "c" * 40, "QmA", 1.5, 0, 0.0)
    s.on_peer_result(c, True, "", "kept")
    s.on_peer_verification(c.exp_id, "QmA", "QmA", True)      # the claimant vouching for itself: ignored
    s.on_peer_verification(c.exp_id, "QmB", "QmA", True)
    d = s.next_decision(2.0)
    assert isinstance(d, Verify)                               # one other confirmation is not a quorum
    c2 = PeerClaim("b" * 40, "c" * 40, "QmA", 1.4, 0, 0.0)
    s.on_peer_result(c2, True, "", "kept")
    s.on_peer_verification(c2.exp_id, "QmB", "QmA", True)
    s.on_peer_verification(c2.exp_id, "QmC", "QmA", True)
    d = s.next_decision(2.0)
    assert isinstance(d, Adopt) and "2 other nodes" in d.reason
    c3 = PeerClaim("d" * 40, "c" * 40, "QmA", 1.3, 0, 0.0)
    s.on_peer_result(c3, True, "", "kept")
    for v in ("QmB", "QmC"):
        s.on_peer_verification(c3.exp_id, v, "QmA", True)
    s.on_peer_verification(c3.exp_id, "QmD", "QmA", False)     # one refutation: check it myself
    assert isinstance(s.next_decision(2.0), Verify)


def test_votes_on_a_settled_experiment_are_not_kept_so_they_cannot_evict_pending_evidence():
    """The daemon and the DES share this rule (research/swarm.py): a settled experiment is never decided
    again, so its votes are dead weight in a bounded table where they would push out the votes a
    pending candidate waits for."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmB", "QmC")
    c = PeerClaim("a" * 40, "c" * 40, "QmA", 1.5, 0, 0.0)
    s.on_peer_result(c, True, "", "kept")
    s.on_peer_verification(c.exp_id, "QmB", "QmA", True)
    s.on_peer_verification(c.exp_id, "QmC", "QmA", True)
    assert isinstance(s.next_decision(2.0), Adopt) and c.exp_id in s.settled
    evidence = {k: dict(v) for k, v in s.evidence.items()}
    for i in range(50):
        s.on_peer_verification(c.exp_id, f"QmLate{i}", "QmA", True)
    assert {k: dict(v) for k, v in s.evidence.items()} == evidence


def test_a_refutation_from_any_peer_asks_for_a_re_run_of_a_claimant_with_a_streak():
    """A liar whose one claim happened to land within the tolerance earned a streak; its next claim,
    refuted by a peer this node does not vouch for yet, is re-run here, never adopted on the coin (the
    DES adopted 12 made-up values this way when only vouchers' refutations counted)."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, replicas=0))
    first = PeerClaim("1" * 40, "c" * 40, "QmLiar", 1.5, 0, 0.0, first=True)
    s.on_verified(first, 1.5, 2.0)                              # two accurate claims: streak 2, p = 0.5
    s.on_verified(first, 1.5, 2.0)
    assert s.verify_probability("QmLiar") == 0.5
    # a claim whose coin skips the re-run at p = 0.5
    exp = next(e for e in (f"{i:040x}" for i in range(1000)) if s._coin(e) >= 0.5)
    lie = PeerClaim(exp, "d" * 40, "QmLiar", 1.2, 0, 0.0)
    s.on_peer_result(lie, True, "", "kept")
    s.on_peer_verification(exp, "QmStranger", "QmLiar", False, 1.2)  # no voucher: it cannot replace a re-run
    assert not s.vouches("QmStranger")
    assert isinstance(s.next_decision(1.9), Verify)
    # without the refutation the coin would have skipped it
    t = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, replicas=0))
    t.on_verified(first, 1.5, 2.0)
    t.on_verified(first, 1.5, 2.0)
    t.on_peer_result(lie, True, "", "kept")
    assert isinstance(t.next_decision(1.9), Adopt)


def test_confirmations_that_weigh_nothing_cannot_crowd_out_a_refutation():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, replicas=0))
    c = PeerClaim("a" * 40, "c" * 40, "QmA", 1.5, 0, 0.0)
    s.on_peer_result(c, True, "", "kept")
    for i in range(MAX_VOTES):
        s.on_peer_verification(c.exp_id, f"QmSybil{i}", "QmA", True, 1.5)
    s.on_peer_verification(c.exp_id, "QmStranger", "QmA", False, 1.5)
    assert s.refuted(c) and len(s.evidence[c.exp_id]) == MAX_VOTES
    s.on_peer_verification(c.exp_id, "QmSybilMore", "QmA", True, 1.5)  # a confirmation displaces nothing
    assert "QmSybilMore" not in s.evidence[c.exp_id]


honest_claims = st.builds(
    PeerClaim, exp_id=st.text("0123456789abcdef", min_size=40, max_size=40), commit=st.just("c" * 40),
    peer=st.sampled_from(PEERS[:3]), value=st.floats(1.0, 2.0), seed=st.integers(0, 3), received_at=st.just(0.0))


@settings(max_examples=150, deadline=None)
@given(st.lists(honest_claims, min_size=1, max_size=15, unique_by=lambda c: c.exp_id),
       st.sampled_from(["always", "adaptive", "never"]), st.integers(0, 15), st.randoms())
def test_following_nodes_converge_on_one_baseline(events, policy, cut, rnd):
    """Three nodes see the same results in different orders; while experimenting each adopts only what beats
    its baseline by the margin (so they end up split), then they follow by rank and all end on the best one."""
    finals = set()
    for node in range(3):
        state = SwarmState(SwarmPolicy(f"QmNode{node}", policy, margin=0.3))
        order = list(events)
        rnd.shuffle(order)
        baseline, rank = 2.5, (2.5, "0" * 40)

        def truth(c, node=node, tol=state.policy.tol):  # honest re-runs differ from the claim by noise within tol
            return c.value + (hash((node, c.exp_id)) % 100 - 50) / 100 * tol

        def settle(following: bool, state: SwarmState = state, truth=truth) -> None:
            nonlocal baseline, rank
            while (d := state.next_decision(baseline, rank if following else None)) is not None:
                if isinstance(d, Verify):
                    _, d = state.on_verified(d.claim, truth(d.claim), baseline, rank if following else None)
                if isinstance(d, Adopt):
                    baseline, rank = d.value, (d.claim.value, d.claim.exp_id)

        for i, c in enumerate(order):
            state.on_peer_result(c, True, "", "kept")
            if i < cut:
                settle(following=False)
        settle(following=True)
        finals.add(rank)
    best = min((c.value, c.exp_id) for c in events)
    assert finals == {best}


def test_designated_replicas_rerun_and_the_rest_adopt_on_their_evidence():
    """Ten nodes, one peer's result: exactly `replicas` nodes re-run it at once; every other node waits,
    then adopts on the quorum of their confirmations without a re-run of its own."""
    nodes = [f"QmNode{i}" for i in range(10)]
    claim = PeerClaim("ab" * 20, "c" * 40, "QmFinder", 1.5, 0, 100.0)
    states = {}
    for n in nodes:
        s = SwarmState(SwarmPolicy(n, "adaptive", margin=0.002, quorum=2, replicas=3, defer_s=60.0))
        for p in nodes + ["QmFinder"]:
            s.note_peer(p)
        earn(s, *(p for p in nodes if p != n))
        s.on_peer_result(claim, True, "", "kept")
        states[n] = s
    first = {n: s.next_decision(2.0, now=101.0) for n, s in states.items()}
    verifiers = [n for n, d in first.items() if isinstance(d, Verify)]
    assert len(verifiers) == 3 and all(first[n] is None for n in nodes if n not in verifiers)
    for v in verifiers[:2]:  # two confirmations arrive
        for s in states.values():
            s.on_peer_verification(claim.exp_id, v, claim.peer, True)
    later = {n: states[n].next_decision(2.0, now=110.0) for n in nodes if n not in verifiers}
    assert all(isinstance(d, Adopt) and "confirmed by 2 other nodes" in d.reason for d in later.values())


def test_a_node_that_is_not_designated_verifies_itself_once_the_wait_is_over():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, replicas=1, defer_s=60.0))
    claim = PeerClaim("cd" * 20, "c" * 40, "QmFinder", 1.5, 0, 100.0)
    for p in [f"QmP{i}" for i in range(30)]:
        s.note_peer(p)
    if s.designated(claim):  # pick a claim this node is not designated for
        claim = PeerClaim("ce" * 20, "c" * 40, "QmFinder", 1.5, 0, 100.0)
    assert not s.designated(claim)
    s.on_peer_result(claim, True, "", "kept")
    assert s.next_decision(2.0, now=150.0) is None          # waiting for the designated node
    assert isinstance(s.next_decision(2.0, now=161.0), Verify)  # no evidence came: re-run it here


def test_votes_of_identities_this_node_never_verified_do_not_count():
    """Sybils: a fabricated result plus confirmations from fresh keys is re-run here, not adopted."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, replicas=3, defer_s=60.0))
    lie = PeerClaim("ab" * 20, "c" * 40, "QmLiar", 0.5, 0, 100.0)
    s.on_peer_result(lie, True, "", "kept")
    for i in range(50):
        s.on_peer_verification(lie.exp_id, f"QmSybil{i}", "QmLiar", True)
    assert not s.quorum_met(lie)
    d = s.next_decision(2.0, now=100.0 + 61)
    assert isinstance(d, Verify) and d.claim == lie
    verdict, adopt = s.on_verified(lie, 1.9, 2.0)
    assert verdict == "refuted" and adopt is None


def test_trust_is_earned_by_own_reruns_of_first_announced_results_or_configured():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2, vouch_after=2,
                               trusted=frozenset({"QmFriend"})))
    assert s.vouches("QmFriend") and not s.vouches("QmB")
    copy = PeerClaim("cd" * 20, "c" * 40, "QmB", 1.5, 0, 0.0, first=False)  # someone else's result, re-signed
    s.on_verified(copy, 1.5, 2.0)
    s.on_verified(copy, 1.5, 2.0)
    assert s.rep("QmB").confirmed == 2 and not s.vouches("QmB")
    own = PeerClaim("ce" * 20, "c" * 40, "QmB", 1.5, 0, 0.0)
    s.on_verified(own, 1.5, 2.0)
    assert not s.vouches("QmB")  # one of two
    s.on_verified(own, 1.5, 2.0)
    assert s.vouches("QmB")
    for _ in range(6):  # refuted often enough (net of 4 confirmations) to be ignored: its votes stop counting
        s.on_verified(PeerClaim("cf" * 20, "c" * 40, "QmB", 1.0, 0, 0.0), 1.9, 2.0)
    assert s.ignored("QmB") and not s.vouches("QmB")


def test_a_flood_of_votes_cannot_crowd_out_an_earned_one():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=1))
    earn(s, "QmGood")
    c = PeerClaim("ab" * 20, "c" * 40, "QmA", 1.5, 0, 0.0)
    for i in range(500):
        s.on_peer_verification(c.exp_id, f"QmSybil{i}", "QmA", True)
    assert len(s.evidence[c.exp_id]) <= 64
    s.on_peer_verification(c.exp_id, "QmGood", "QmA", True)
    assert s.evidence[c.exp_id]["QmGood"].confirmed is True and s.quorum_met(c)


def test_a_refutation_by_a_voucher_forces_a_rerun_even_for_a_peer_with_a_long_streak():
    def state():
        s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
        earn(s, "QmGood")
        for i in range(50):  # QmA has earned a long streak: its results are mostly adopted unchecked
            s.on_verified(PeerClaim(f"{i:040x}", "c" * 40, "QmA", 1.0, 0, 0.0), 1.0, 0.5)
        s.on_peer_result(lie, True, "", "kept")
        return s

    lie = PeerClaim("ab" * 20, "c" * 40, "QmA", 0.1, 0, 0.0)
    assert isinstance(state().next_decision(2.0), Adopt)  # the streak alone: no re-run
    s = state()
    s.on_peer_verification(lie.exp_id, "QmGood", "QmA", False)
    assert isinstance(s.next_decision(2.0), Verify)


def test_confirmations_of_one_claim_never_count_for_another_peers_claim_on_the_same_experiment():
    """An honest result confirmed by vouchers; a fresh key announces the same experiment with a better
    value: the confirmations were of the honest claim and value, so the copy must be re-run."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmV1", "QmV2")
    honest = PeerClaim("ab" * 20, "c" * 40, "QmHonest", 0.95, 0, 0.0)
    copy = PeerClaim("ab" * 20, "c" * 40, "QmCopier", 0.80, 0, 0.0)
    for v in ("QmV1", "QmV2"):
        s.on_peer_verification(honest.exp_id, v, "QmHonest", True, 0.95)
    assert s.quorum_met(honest) and not s.quorum_met(copy)
    wrong_value = PeerClaim("ab" * 20, "c" * 40, "QmHonest", 0.5, 0, 0.0)
    assert not s.quorum_met(wrong_value)
    s.on_peer_result(copy, True, "", "kept")
    assert isinstance(s.next_decision(2.0), Verify)


def test_a_change_that_adds_a_directory_or_a_symlink_is_rejected_by_the_trust_policy(tmp_path):
    """files_of lists regular files only: without the mode check a subtree (say torch/__init__.py, shadowing
    an import) rode along with a one-constant change."""
    import pygit2

    from p2p_research.research.io.trust import TrustPolicy, check_lineage
    from p2p_research.research.io.workspace import Workspace

    files = read_target_files()
    ws = Workspace.create(tmp_path / "repo", files)
    repo = ws.repo
    base = repo[ws.baseline]
    train = files["train.py"].replace(b"LEARNING_RATE = 0.002", b"LEARNING_RATE = 0.003")
    for extra in ("tree", "link"):
        tb = repo.TreeBuilder(base.tree)
        tb.insert("train.py", repo.create_blob(train), pygit2.GIT_FILEMODE_BLOB)
        if extra == "tree":
            sub = repo.TreeBuilder()
            sub.insert("__init__.py", repo.create_blob(b"import os\n"), pygit2.GIT_FILEMODE_BLOB)
            tb.insert("torch", sub.write(), pygit2.GIT_FILEMODE_TREE)
        else:
            tb.insert("evil", repo.create_blob(b"/etc/passwd"), pygit2.GIT_FILEMODE_LINK)
        sig = pygit2.Signature("x", "x@x", 1, 0)
        c = str(repo.create_commit(None, sig, sig, "lr", tb.write(), [base.id]))
        ok, why = check_lineage(ws, c, {ws.baseline}, TrustPolicy(), "QmPeer")
        assert not ok and "not a regular file" in why, why


def _ignored_liar(s: SwarmState) -> None:
    for i in range(2):
        s.on_verified(PeerClaim(f"{i:040x}", "c" * 40, "QmLiar", 1.0, 0, 0.0), 1.9, 2.0)
    assert s.ignored("QmLiar")


def test_a_true_result_of_an_ignored_peer_is_re_run_once_the_vouchers_confirm_it_never_adopted_on_votes():
    """A liar's true result, re-run and adopted by some nodes before they caught the liar, must not leave
    the rest (who ignore its announcer) on another baseline for good: kept aside, it is re-run here once
    a quorum of this node's vouchers confirmed it, and adopted only on that re-run."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmB", "QmC")
    _ignored_liar(s)
    true = PeerClaim("ab" * 20, "c" * 40, "QmLiar", 1.5, 0, 0.0)
    assert "refuted too often" in s.on_peer_result(true, True, "", "kept").reason
    assert s.next_decision(2.0) is None                       # no evidence: nothing to do
    s.on_peer_verification(true.exp_id, "QmB", "QmLiar", True)
    assert s.next_decision(2.0) is None                       # one voucher is not a quorum
    for sybil in ("QmX", "QmY", "QmZ"):                       # votes of identities never verified here
        s.on_peer_verification(true.exp_id, sybil, "QmLiar", True)
    assert s.next_decision(2.0) is None
    s.on_peer_verification(true.exp_id, "QmC", "QmLiar", True)
    d = s.next_decision(2.0)
    assert isinstance(d, Verify) and d.claim == true          # a re-run, never an adoption on the votes
    assert s.next_decision(2.0) is None                       # asked once
    verdict, adopt = s.on_verified(true, 1.5, 2.0)
    assert verdict == "confirmed" and isinstance(adopt, Adopt) and adopt.value == 1.5


def test_a_following_node_that_vouches_for_nobody_re_runs_an_ignored_peer_s_result_the_swarm_confirmed():
    """The DES with 2 liars in 12 nodes (seeds 7 and 43): a node that caught both liars but re-ran no
    honest peer's first announcement vouches for nobody, so the liar's true result the rest of the swarm
    re-ran and adopted was never re-run here, and the swarm ended split. Following (it has nothing else
    to do), a quorum of confirmations by peers it does not ignore asks for the re-run; the re-run decides.
    While it researches, and on votes of ignored peers, nothing changes."""
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    _ignored_liar(s)
    s.rep("QmOther").refuted = 2  # another caught liar: its votes count for nothing
    true = PeerClaim("ab" * 20, "c" * 40, "QmLiar", 1.5, 0, 0.0)
    s.on_peer_result(true, True, "", "kept")
    rank = (1.6, "f" * 40)  # the baseline's place in the swarm's order: the liar's result ranks lower
    for v in ("QmX", "QmOther", "QmLiar"):  # one peer not ignored, one ignored, the claimant itself
        s.on_peer_verification(true.exp_id, v, "QmLiar", True)
    assert s.next_decision(1.6, rank) is None
    s.on_peer_verification(true.exp_id, "QmY", "QmLiar", True)
    assert s.next_decision(1.6) is None                       # researching: vouchers' votes only
    d = s.next_decision(1.6, rank)
    assert isinstance(d, Verify) and d.claim == true          # following: re-run it
    assert s.next_decision(1.6, rank) is None                 # once
    verdict, adopt = s.on_verified(true, 1.5, 1.6, rank)
    assert verdict == "confirmed" and isinstance(adopt, Adopt)


def test_a_lie_of_an_ignored_peer_that_vouchers_refute_or_that_does_not_improve_is_not_re_run():
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmB", "QmC", "QmD")
    _ignored_liar(s)
    lie = PeerClaim("ab" * 20, "c" * 40, "QmLiar", 1.2, 0, 0.0)
    worse = PeerClaim("ac" * 20, "c" * 40, "QmLiar", 2.5, 0, 0.0)
    for c in (lie, worse):
        s.on_peer_result(c, True, "", "kept")
        for v in ("QmB", "QmC"):
            s.on_peer_verification(c.exp_id, v, "QmLiar", True)
    s.on_peer_verification(lie.exp_id, "QmD", "QmLiar", False)
    assert s.next_decision(2.0) is None


def test_results_kept_aside_for_ignored_peers_are_bounded_and_a_confirmed_one_outlives_newer_lies():
    from p2p_research.research.swarm import MAX_PARKED, PARKED_PER_PEER

    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, quorum=2))
    earn(s, "QmB", "QmC")
    _ignored_liar(s)
    true = PeerClaim("ab" * 20, "c" * 40, "QmLiar", 1.5, 0, 0.0)
    s.on_peer_result(true, True, "", "kept")
    for v in ("QmB", "QmC"):
        s.on_peer_verification(true.exp_id, v, "QmLiar", True)
    for i in range(10 * MAX_PARKED):  # made-up values, each better than the truth, newer than it
        s.on_peer_result(PeerClaim(f"{i + 100:040x}", "c" * 40, "QmLiar", 1.0 - i / 1e4, 0, float(i + 1)), True, "", "kept")
    assert len(s.parked) == PARKED_PER_PEER and (true.exp_id, "QmLiar") in s.parked
    for p in range(20):  # many ignored peers: the whole is bounded too
        s.rep(f"QmL{p}").refuted = 2
        for i in range(PARKED_PER_PEER):
            s.on_peer_result(PeerClaim(f"{p:08x}{i:032x}", "c" * 40, f"QmL{p}", 1.0, 0, 0.0), True, "", "kept")
    assert len(s.parked) <= MAX_PARKED


def test_only_accountable_peers_negative_reports_make_a_candidate_tried():
    from p2p_research.research.negatives import Report, Tried, check, tried

    vouched, liar = {"QmB"}.__contains__, {"QmLiar"}.__contains__
    assert tried([], vouched, liar) is Tried.NEW
    assert tried([Report("QmX", "discarded", 1.6)], vouched, liar) is Tried.HINT        # unproven: a hint
    # ... of another seed than the asking worker's: no run here can check it, so not even a hint
    assert tried([Report("QmX", "discarded", 1.6, 1)], vouched, liar, seed=0) is Tried.NEW
    assert tried([Report("QmX", "discarded", 1.6, 0)], vouched, liar, seed=0) is Tried.HINT
    assert tried([Report("QmB", "discarded", 1.6, 1)], vouched, liar, seed=0) is Tried.TRIED  # a voucher's counts
    assert tried([Report("QmB", "discarded", 1.6)], vouched, liar) is Tried.TRIED       # vouched for
    assert tried([Report("QmX", "kept", 1.5)], vouched, liar) is Tried.TRIED            # verified elsewhere
    assert tried([Report("", "crash")], vouched, liar) is Tried.TRIED                   # this node ran it
    assert tried([Report("QmLiar", "discarded", 1.6)], vouched, liar) is Tried.NEW      # ignored: nothing
    assert tried([Report("QmLiar", "kept", 1.6)], vouched, liar) is Tried.NEW           # ... of any status
    reports = [Report("QmX", "discarded", 9.9, 0), Report("QmY", "crash", None, 0), Report("QmZ", "discarded", 1.601, 0),
               Report("QmW", "discarded", 1.7, 3), Report("QmB", "discarded", 9.9, 0), Report("", "discarded", 1.6, 0)]
    # a crash report is not judged (it may be the machine's), nor another seed's, nor a vouched peer's
    assert check(reports, 1.6, 0, 0.004, vouched) == [("QmX", 9.9, False), ("QmZ", 1.601, True)]
    assert check(reports, None, 0, 0.004, vouched) == []   # this node's failed run judges nobody
    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002))
    s.on_negative_checked("QmY", True)   # a replayed honest report earns nothing
    assert "QmY" not in s.reputation
    s.on_negative_checked("QmX", False)
    s.on_negative_checked("QmX", False)
    assert s.ignored("QmX")


def test_reputation_grows_with_this_node_s_runs_not_with_made_up_keys():
    """Deciding about a peer's result makes no record of the peer: only a run of this node's own does, and
    the table is bounded, forgetting neither an ignored liar nor a voucher before the rest."""
    import p2p_research.research.swarm as swarm

    s = SwarmState(SwarmPolicy("QmSelf", "adaptive", margin=0.002, replicas=None, quorum=None))
    for i in range(500):  # results of 500 fresh keys, each considered for a re-run
        s.on_peer_result(PeerClaim(f"{i:040x}", "c" * 40, f"QmSybil{i}", 1.0, 0, 0.0), True, "", "kept")
    decision = s.next_decision(1.5)
    assert isinstance(decision, Verify) and s.reputation == {}
    s.on_verified(decision.claim, 9.9, 1.5)  # one run of its own: one record
    assert list(s.reputation) == [decision.claim.peer] and s.reputation[decision.claim.peer].refuted == 1
    old = swarm.MAX_REPUTATION
    swarm.MAX_REPUTATION = 4
    try:
        s.rep("QmLiar").refuted = 2
        s.rep("QmVoucher").earned = 1
        for p in ("QmX", "QmY", "QmZ", "QmW"):
            s.rep(p).confirmed = 1
        assert len(s.reputation) == 4 and s.ignored("QmLiar") and s.vouches("QmVoucher")
    finally:
        swarm.MAX_REPUTATION = old
