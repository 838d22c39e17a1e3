"""One driver between runs (research/turns.py): its rules, and the daemon and the DES taking the same turns.

The trace-equivalence test feeds one scripted scenario (peers' results, a liar, a result too fresh to
re-run, peers' verifications, a peer below the margin) to a real coordinator on a real engine, ledger and
workspace (the surrogate objective measures the re-runs), and to the discrete-event simulator's virtual
node. Both must decide the same things in the same order, and end on the same baseline."""

from __future__ import annotations

import time

import pytest
import trio

from p2p_research.daemon.coordinator import CoordinatorDeps, SwarmCoordinator
from p2p_research.daemon.messages import make_claim
from p2p_research.research import loop as L
from p2p_research.research.claims import ClaimBook
from p2p_research.research.constants import read_constants, rewrite_constants
from p2p_research.research.io.context import open_context
from p2p_research.research.io.engine import ResearchEngine
from p2p_research.research.io.proposers import BuiltinProposer
from p2p_research.research.io.surrogate import noisy_value
from p2p_research.research.swarm import PeerClaim, SwarmPolicy, SwarmState, Verify
from p2p_research.research.turns import (
    MAX_DECISIONS,
    EndTurn,
    Turn,
    claim_lease_s,
    claim_yield,
    confirms,
    defer_s,
)
from p2p_research.sim.des.model import NetModel
from p2p_research.sim.des.run import embedded_target
from p2p_research.sim.des.vnode import Shared, VirtualNode
from p2p_research.sim.des.world import Message, World, peer_name
from p2p_research.store.ledger import Run
from p2p_research.wire import Receipt, Result, Verification

MARGIN = 0.002
SEED = 3


def claim_of(i: int, value: float, age: float = 600.0, now: float = 1000.0) -> PeerClaim:
    return PeerClaim(f"e{i}", f"c{i}", peer_name(i), value, 0, now - age)


def test_a_turn_takes_at_most_the_cap_of_decisions_then_ends():
    state = SwarmState(SwarmPolicy(peer_name(0), "never", MARGIN))
    for i in range(1, 12):
        state.on_peer_result(claim_of(i, 2.0 - i * 0.01), True, "", "kept")
    turn = Turn(state)
    actions = []
    while not isinstance(action := turn.next_action(2.5, None, 1000.0), EndTurn):
        actions.append(action)
    assert len(actions) == MAX_DECISIONS and "decisions this turn" in action.reason
    assert [d[0] for d in turn.decisions] == ["adopt"] * MAX_DECISIONS


def test_a_verification_is_handled_before_the_next_decision_and_says_whether_it_floods():
    state = SwarmState(SwarmPolicy(peer_name(0), "always", MARGIN))
    state.on_peer_result(claim_of(1, 2.0), True, "", "kept")
    state.on_peer_result(claim_of(2, 2.1), True, "", "kept")
    turn = Turn(state, sparse=lambda: True)
    action = turn.next_action(2.5, None, 1000.0)
    assert isinstance(action, Verify) and action.claim.exp_id == "e1"
    with pytest.raises(RuntimeError):
        turn.next_action(2.5, None, 1000.0)
    done = turn.handle(2.3, 2.5, None)  # a lie: 0.3 off
    assert done.verdict == "refuted" and done.adopt is None and done.floods  # refutations always flood
    action = turn.next_action(2.5, None, 1000.0)
    done = turn.handle(2.1001, 2.5, None)
    assert done.verdict == "confirmed" and done.adopt is not None and done.adopt.value == 2.1001
    assert turn.next_action(2.5, None, 1000.0) == done.adopt  # the adoption is the next action, not a decision more
    assert turn.decisions == [("verify", "e1", peer_name(1)), ("refuted", "e1", peer_name(1)),
                              ("verify", "e2", peer_name(2)), ("confirmed", "e2", peer_name(2)),
                              ("adopt", "e2", peer_name(2))]
    assert isinstance(turn.next_action(2.1, None, 1000.0), EndTurn) and turn.left == MAX_DECISIONS - 2


def test_a_decision_that_fails_here_is_dropped_and_the_turn_goes_on():
    state = SwarmState(SwarmPolicy(peer_name(0), "always", MARGIN))
    state.on_peer_result(claim_of(1, 2.0), True, "", "kept")
    state.on_peer_result(claim_of(2, 2.1), True, "", "kept")
    turn = Turn(state)
    first = turn.next_action(2.5, None, 1000.0)
    turn.drop(first)  # e.g. this node's engine raised during the re-run
    assert turn.decisions[-1] == ("dropped", "e1", peer_name(1)) and "e1" in state.settled
    second = turn.next_action(2.5, None, 1000.0)
    assert isinstance(second, Verify) and second.claim.exp_id == "e2"
    turn.handle(2.1, 2.5, None)
    turn.drop(turn.next_action(2.5, None, 1000.0))  # its adoption failed here: not made, the turn goes on
    assert turn.decisions[-1] == ("dropped", "e2", peer_name(2))
    assert isinstance(turn.next_action(2.5, None, 1000.0), EndTurn)


def test_the_settings_are_asked_before_every_decision():
    state = SwarmState(SwarmPolicy(peer_name(0), "never", MARGIN))
    for i in range(1, 4):
        state.on_peer_result(claim_of(i, 2.0 - i * 0.01), True, "", "kept")
    asked = []
    turn = Turn(state, defer=lambda: asked.append("defer") or 90.0, margin=lambda: 0.05)
    turn.next_action(2.5, None, 1000.0)
    turn.next_action(1.97, None, 1000.0)
    assert asked == ["defer", "defer"] and state.policy.defer_s == 90.0 and state.policy.margin == 0.05


def test_the_rules_the_two_drivers_used_to_write_out_each():
    assert defer_s(0.0, None) == 60.0 and defer_s(0.0, 40.0) == 160.0 and defer_s(5.0, 40.0) == 5.0
    assert claim_lease_s(15.0) == 120.0 and claim_lease_s(100.0) == 300.0 and claim_lease_s(None, 50.0) == 150.0
    assert confirms("confirmed", 2.0, 2.003, 0.004) and not confirms("confirmed", 2.0, 2.01, 0.004)
    assert not confirms("refuted", 2.0, 2.0, 0.004) and not confirms("confirmed", None, 2.0, 0.004)
    book = ClaimBook()
    assert claim_yield((10.0, "b"), (100.0, "a"), 0, 0, book) == "keep"     # mine is earlier
    assert claim_yield((10.0, "b"), (10.5, "a"), 0, 0, book) == "yield"     # a tie: the lower id
    assert claim_yield((10.0, "b"), (1.0, "c"), 0, 0, book) == "yield"     # theirs is earlier
    book.note_yield("c")  # a peer with no confirmed result gets one yield
    assert claim_yield((10.0, "b"), (1.0, "c"), 0, 100, book) == "over budget"


def test_the_daemon_s_claim_lease_is_the_rule_of_turns(tiny_home):
    ctx = open_context(tiny_home)
    try:
        before = time.time()
        c = make_claim(ctx, "me", "e1", ctx.workspace.genesis, "x", 100.0)
        assert c.lease_until - before == pytest.approx(claim_lease_s(100.0), abs=1.0)
    finally:
        ctx.ledger.close()


# --- the same scenario through the daemon's coordinator and the DES's virtual node -------------------

# Two rounds; each entry is (peer index, constant changes on the current baseline, what the peer claims
# relative to what its change measures, age of its result in s, peers that confirm it). A turn follows each round.
LIARS = range(10, 20)  # ten peers, each claiming much better than its change measures
ROUNDS = [
    [(1, {"LEARNING_RATE": 0.003}, 0.0, 600.0, ()),     # an honest gain: re-run, confirmed, adopted
     (2, {"LEARNING_RATE": 0.0025}, -0.08, 600.0, ()),  # a liar: claims much better than it measures
     (4, {"N_EMBD": 192}, 0.0, 5.0, ()),                # too fresh: others' evidence is awaited
     (5, {"WEIGHT_DECAY": 0.2}, 0.0, 600.0, ())],       # no better than the baseline
    [(3, {"N_LAYER": 6}, 0.0, 600.0, (6, 7))],          # on the adopted baseline; two trusted peers confirm it
    # more refutations than a turn takes decisions: the turn ends at the cap, the next one goes on
    [(i, {"WARMUP_FRAC": 0.06 + 0.01 * (i - 10)}, -0.2, 600.0, ()) for i in LIARS],
    [],
    # following (no proposals of its own any more): a confirmed result ranked below the baseline's
    # announced value is adopted though it is better by less than the margin
    [(8, {"BETA1": 0.85}, 0.0, 600.0, ())],
]
FOLLOWING_FROM = 4  # the round from which both nodes follow the swarm
TRUSTED = (6, 7)  # their confirmations count from the start (trust.trusted_peers)
PEERS = 24


class DaemonSide:
    """A real coordinator on a real engine, ledger and workspace; the surrogate objective measures re-runs."""

    def __init__(self, home, genesis_value: float) -> None:
        from libp2p.crypto.ed25519 import create_new_key_pair

        cfg = home.load_config()
        cfg.research.objective, cfg.research.surrogate_cost_s, cfg.research.margin = "surrogate", 0.01, MARGIN
        cfg.verification.policy, cfg.trust.trusted_peers = "adaptive", [peer_name(i) for i in TRUSTED]
        home.write_config(cfg)
        self.ctx = ctx = open_context(home, cfg)
        self.ws = ws = ctx.workspace
        self.eng = eng = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0), peer=peer_name(0))
        eng.set_baseline(ws.genesis, genesis_value, "measured locally", ctx.experiment_id_of(ws.genesis))
        eng.loop = L.ResearchLoop(ws.genesis, genesis_value, MARGIN)
        self.published: list = []

        async def publish(msg):
            self.published.append(msg)

        async def dht_record(_exp):
            return None

        self.coord = SwarmCoordinator(CoordinatorDeps(
            peer_id=peer_name(0), key_pair=create_new_key_pair(), ctx=ctx, config=cfg, engine=lambda: eng,
            engines=lambda: [eng], publish=publish, dht_record=dht_record))
        for i in range(1, PEERS):
            self.coord.state.note_peer(peer_name(i))

    def baseline(self) -> str:
        return self.ctx.ledger.baseline(self.ctx.protocol_id).commit_id

    def constants_of(self, commit: str) -> dict:
        return read_constants(self.ws.files_of(commit)["train.py"].decode())

    def result(self, i: int, changes: dict, claimed: float, age: float, confirmed_by: tuple) -> tuple[str, str]:
        ctx, ws, base, now = self.ctx, self.ws, self.baseline(), time.time()
        train = ws.files_of(base)["train.py"].decode()
        commit = ws.commit_experiment(base, {"train.py": rewrite_constants(train, changes).encode()}, f"peer {i}", "0" * 40)
        r = Receipt(protocol_id=ctx.protocol_id, exp_id=ctx.experiment_id_of(commit), parent=base, commit=commit,
                    tree=ws.tree_of(commit), metric="val_bpb", value=claimed, status="kept",
                    budget_tokens=ctx.budget.tokens, budget_seconds=None, seed=SEED, hardware="cpu",
                    software="p2p-research", peer=peer_name(i), ts=now - age, training_seconds=1.0, memory_gb=0.1)
        run = Run(exp_id=r.exp_id, commit_id=commit, protocol_id=ctx.protocol_id, kind="experiment", status="kept",
                  origin="peer", peer=r.peer, parent=base, val_bpb=claimed, seed=SEED, received_at=now - age)
        trio.run(self.coord.on_result, Result(r, b"", b""), run)
        for v in confirmed_by:
            vr = Receipt(**{**r.to_dict(), "peer": peer_name(v), "status": "confirmed", "target_peer": r.peer,
                            "claimed_value": claimed, "ts": now})
            trio.run(self.coord.on_verification, Verification(vr, b"", b""), peer_name(v))
        return commit, r.exp_id

    def turn(self) -> list[tuple[str, str, str]]:
        return trio.run(self.coord.between, self.eng)

    def announced(self) -> list[tuple[str, str, str]]:
        """The verifications this node published: (verdict, exp id, claimant)."""
        return [(m.receipt.status, m.receipt.exp_id, m.target_peer) for m in self.published]

    def close(self) -> None:
        self.ctx.ledger.close()


class DesSide:
    """The simulator's virtual node, its re-runs spent in virtual time; the same commits and ids."""

    def __init__(self, cfg, genesis: dict, space, budget: int, genesis_value: float) -> None:
        v = cfg.verification
        self.world = World(PEERS, NetModel(cores=2, hop_latency_s=0.001))
        self.sh = Shared(space, genesis, budget, 15.0, MARGIN, "adaptive")
        self.node = VirtualNode(self.world, self.sh, 0, SEED, policy={
            "quorum": v.quorum, "replicas": v.replicas, "refuted_threshold": v.refuted_threshold,
            "vouch_after": v.vouch_after})
        self.node.state.policy.trusted = frozenset(peer_name(i) for i in TRUSTED)
        self.node.trace = []
        self.node.loop = L.ResearchLoop(Shared.GENESIS, genesis_value, MARGIN)
        for i in range(1, PEERS):
            self.node.state.note_peer(peer_name(i))
        self.world.t = 1000.0
        self.genesis_as: str = ""  # the daemon's genesis commit, which is the DES's GENESIS

    def baseline(self) -> str:
        return self.node.loop.baseline_commit

    def result(self, i: int, commit: str, exp_id: str, changes: dict, claimed: float, age: float,
               confirmed_by: tuple) -> None:
        sh, w, base = self.sh, self.world, self.baseline()
        sh.constants[commit], sh.parent[commit], sh.exp_of[commit] = {**sh.constants[base], **changes}, base, exp_id
        self.node._receive(Message(0, "result", i, w.t - age, exp_id, "kept", claimed, commit, base, SEED), w.t - age)
        for v in confirmed_by:
            self.node._receive(Message(0, "verification", v, w.t, exp_id, "confirmed", claimed, commit, base, SEED,
                                       target=i, claimed=claimed), w.t)

    def turn(self) -> list[tuple[str, str, str]]:
        for step in self.node.between():
            self.world.t += step
        return self.node.trace[-1][1]

    def announced(self) -> list[tuple[str, str, str]]:
        """The verifications this node flooded: (verdict, exp id, claimant)."""
        return [(m.status, m.exp_id, peer_name(m.target)) for m in self.world.messages
                if m.peer == 0 and m.kind == "verification"]


def test_the_daemon_and_the_des_take_the_same_turns(tmp_path):
    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "node")
    genesis, space = embedded_target()
    ctx = open_context(home)
    budget = ctx.budget.tokens
    assert read_constants(ctx.workspace.files_of(ctx.workspace.genesis)["train.py"].decode()) == genesis
    ctx.ledger.close()
    genesis_value = noisy_value(genesis, SEED, budget)
    daemon = DaemonSide(home, genesis_value)
    des = DesSide(home.load_config(), genesis, space, budget, genesis_value)
    try:
        traces: dict[str, list] = {"daemon": [], "des": []}
        for n, entries in enumerate(ROUNDS):
            daemon.coord.following = des.node.following = n >= FOLLOWING_FROM
            base_consts = daemon.constants_of(daemon.baseline())
            assert base_consts == des.sh.constants[des.baseline() if des.baseline() != Shared.GENESIS else Shared.GENESIS]
            for i, changes, lie, age, confirmed_by in entries:
                value = noisy_value({**base_consts, **changes}, SEED, budget)
                assert value is not None
                commit, exp_id = daemon.result(i, changes, value + lie, age, confirmed_by)
                des.result(i, commit, exp_id, changes, value + lie, age, confirmed_by)
            traces["daemon"].append(daemon.turn())
            traces["des"].append(des.turn())
            assert traces["daemon"] == traces["des"], traces
            # the same baseline (the DES names the genesis by a placeholder of its own)
            assert daemon.baseline() == des.baseline() or (
                des.baseline() == Shared.GENESIS and daemon.baseline() == daemon.ws.genesis)
        assert daemon.announced() == des.announced() and daemon.announced()
        flat = [(what, peer) for turn in traces["daemon"] for what, _, peer in turn]
        # every kind of decision came up: a re-run that refutes a liar, one that confirms and adopts, an
        # adoption on the quorum of trusted peers' confirmations (no re-run); the fresh result waits
        assert ("refuted", peer_name(2)) in flat and ("confirmed", peer_name(1)) in flat, flat
        assert ("adopt", peer_name(1)) in flat and ("adopt", peer_name(3)) in flat, flat
        assert ("verify", peer_name(3)) not in flat and all(p != peer_name(4) for _, p in flat), flat
        # the ten liars: eight re-runs in the third turn (the cap), the other two in the fourth
        assert [what for what, _, _ in traces["daemon"][2]] == ["verify", "refuted"] * MAX_DECISIONS
        assert [what for what, _, _ in traces["daemon"][3]] == ["verify", "refuted"] * 2
        assert traces["daemon"][4][-1][0::2] == ("adopt", peer_name(8)), traces["daemon"][4]  # by rank
        assert daemon.coord.stats["verified_refuted"] == 1 + len(LIARS) and daemon.coord.stats["adopted"] == 3
    finally:
        daemon.close()
