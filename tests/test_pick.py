"""research/pick.py: the one order in which a proposal takes its candidate, for the daemon and the DES."""

import random

import pytest
import trio

from p2p_research.research.pick import PREFER_TRIES, Merges, drive, drive_async, owned_first, owned_only


def counted(items):
    """The items as a lazy stream, and a list of those drawn so far."""
    drawn = []

    def gen():
        for x in items:
            drawn.append(x)
            yield x
    return gen(), drawn


def test_an_owned_unknown_candidate_is_taken_and_others_are_never_asked_about():
    asked = []
    draws, drawn = counted([1, 2, 3, 4, 5, 6])

    def known(c):
        asked.append(c)
        return c == 2

    assert drive(owned_first(draws, lambda c: c % 2 == 0), known) == 4
    assert asked == [2, 4]  # the odd ones (not owned) cost no lookup while an owned one may be new
    assert drawn == [1, 2, 3, 4]  # lazy: nothing drawn past the one taken


def test_without_a_new_owned_candidate_the_first_new_of_the_others_is_taken_in_draw_order():
    draws, _ = counted([1, 2, 3, 3, 5, None, 7])
    asked = []

    def known(c):
        asked.append(c)
        return c in (2, 1)

    assert drive(owned_first(draws, lambda c: c % 2 == 0), known) == 3
    assert asked == [2, 1, 3]  # the owned one first; then others in order, a repeat draw once


def test_others_are_bounded_and_a_node_alone_owns_everything():
    many = list(range(1, 1000, 2))  # odd: none owned
    draws, drawn = counted(many)
    assert drive(owned_first(draws, lambda c: c % 2 == 0), lambda c: True) is None
    assert len(drawn) == PREFER_TRIES  # the walk stops drawing once it holds PREFER_TRIES others
    assert drive(owned_first(iter([None, 5, 7]), None), lambda c: c == 5) == 7


def test_combinations_are_taken_only_where_owned():
    assert drive(owned_only([1, None, 3, 4], lambda c: c % 2 == 0), lambda c: False) == 4
    assert drive(owned_only([1, 3], lambda c: c % 2 == 0), lambda c: False) is None
    assert drive(owned_only([1, 3], None), lambda c: c == 1) == 3


def test_the_async_driver_takes_what_the_plain_one_takes():
    def both(items: list, known_set: set, mine: int) -> tuple:
        async def known_async(c):
            await trio.lowlevel.checkpoint()
            return c in known_set

        plain = drive(owned_first(iter(items), lambda c: c % mine == 0), lambda c: c in known_set)
        awaited = trio.run(drive_async, owned_first(iter(items), lambda c: c % mine == 0), known_async)
        return plain, awaited

    rng = random.Random(7)
    for _ in range(50):
        items = [rng.randrange(40) if rng.random() > 0.1 else None for _ in range(rng.randrange(1, 90))]
        plain, awaited = both(items, {rng.randrange(40) for _ in range(rng.randrange(30))}, rng.randrange(2, 5))
        assert plain == awaited


def test_merges_are_cached_per_baseline_and_limited_per_proposal():
    made = []

    def make(k):
        def f():
            made.append(k)
            return f"{k}@base"
        return f

    m = Merges(limit=2)
    m.start("b1")
    assert [m.get(k, make(k)) for k in "xyz"] == ["x@base", "y@base", None]  # the third waits for next time
    m.start("b1")
    assert [m.get(k, make(k)) for k in "xyz"] == ["x@base", "y@base", "z@base"]  # cached ones are free
    assert made == ["x", "y", "z"]
    assert m.get("w", make("w"), ready=False) is None and m.get("w", make("w")) == "w@base"  # not cached while not ready
    m.never("v")
    assert m.get("v", make("v")) is None
    m.start("b2")  # another baseline: merged afresh
    assert m.get("x", make("x")) == "x@base" and made.count("x") == 2


# --- the daemon's builtin proposer and the DES's virtual node take the same candidates ---------------


@pytest.mark.parametrize("researchers", [0, 5])
def test_the_builtin_proposer_and_the_des_propose_the_same_experiments(tmp_path, researchers):
    """One baseline one step off the genesis, twelve peers' wins off the genesis (combinations; more
    than a proposal's merge budget), the same ownership and the same knownness: the daemon's proposer
    on a real workspace and the DES's virtual node draw from their random streams in the same order and
    take the same candidate, proposal after proposal (each one taken becomes known, as a run records it).
    Alone (0 researchers heard) and in a swarm, whose nodes take smaller steps (research/mutate.step_scale)."""
    from p2p_research.research.constants import read_constants, rewrite_constants
    from p2p_research.research.io.combine import Win
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer, Proposal
    from p2p_research.sim.des.model import NetModel
    from p2p_research.sim.des.run import embedded_target
    from p2p_research.sim.des.vnode import Shared, VirtualNode, exp_id_of
    from p2p_research.sim.des.world import World

    seed = 5
    genesis, space = embedded_target()
    ctx = open_context(init_home(tmp_path / "node"))
    try:
        ws = ctx.workspace
        source = ws.files_of(ws.genesis)["train.py"].decode()
        assert read_constants(source) == genesis

        def commit(parent: str, changes: dict, name: str) -> str:
            text = ws.files_of(parent)["train.py"].decode()
            return ws.commit_experiment(parent, {"train.py": rewrite_constants(text, changes).encode()}, name, "0" * 40)

        world = World(8, NetModel(cores=2, hop_latency_s=0.001))
        sh = Shared(space, genesis, 8192, 15.0, 0.002, "adaptive")
        node = VirtualNode(world, sh, 0, seed)
        as_des = {ws.genesis: Shared.GENESIS}

        def both(parent: str, changes: dict, name: str) -> str:
            c = commit(parent, changes, name)
            sh.constants[c] = {**sh.constants[as_des.get(parent, parent)], **changes}
            sh.parent[c] = as_des.get(parent, parent)
            return c

        baseline = both(ws.genesis, {"LEARNING_RATE": 0.003}, "baseline")
        knobs = [("WEIGHT_DECAY", 0.2), ("N_LAYER", 6), ("BETA1", 0.85), ("WARMUP_FRAC", 0.1), ("N_EMBD", 192),
                 ("LEARNING_RATE", 0.004), ("BETA2", 0.97), ("GRAD_CLIP", 0.5), ("WEIGHT_DECAY", 0.05),
                 ("N_HEAD", 6), ("WARMUP_FRAC", 0.02), ("N_LAYER", 2)]
        knobs = [(k, v) for k, v in knobs if k in genesis and genesis[k] != v]
        assert len(knobs) >= 10
        wins = [Win(f"{i:040x}", both(ws.genesis, {k: v}, f"win {i}"), ws.genesis, 1.50 + 0.001 * i, "", "peer")
                for i, (k, v) in enumerate(knobs)]
        des_wins = [Win(w.exp_id, w.commit, Shared.GENESIS, w.val_bpb, "", "peer") for w in wins]

        ran: set[str] = set()

        owners = [3]  # a node owns the candidates whose id is not 0 mod this (none: 1)

        def mine(exp: str) -> bool:
            return int(exp[:12], 16) % owners[0] != 0

        class Ledger:  # what this node ran or recorded: the ones taken, and every 5th id
            def __contains__(self, exp: object) -> bool:
                return isinstance(exp, str) and (exp in ran or int(exp[:12], 16) % 5 == 0)

        def known(exp: str) -> bool:  # the ledger, or claimed or reported elsewhere (every 7th id)
            return exp in Ledger() or int(exp[:12], 16) % 7 == 0

        def exp_of(train_py: bytes) -> str:  # the DES's id of a candidate: its constants'
            return exp_id_of(read_constants(train_py.decode()))

        async def is_known(train_py: bytes) -> bool:
            return known(exp_of(train_py))

        proposer = BuiltinProposer(space, seed * 1_000_003, focus=lambda: node.interests, wins=lambda: wins,
                                   researchers=lambda: researchers)
        node.researchers = lambda: researchers  # type: ignore[method-assign]
        node.wins = des_wins
        node.local = Ledger()  # type: ignore[assignment]
        node.mine = mine  # type: ignore[method-assign]
        node.known = lambda exp, spent, constants=None: known(exp)  # type: ignore[method-assign]
        kinds, stacked = [], []
        for n in range(40):
            if n == 30:
                owners[0] = 1  # the rest: nothing owned here, so the others decide (and how many are drawn)
            daemon = trio.run(proposer.propose, ws, baseline, is_known, lambda t: mine(exp_of(t)))
            assert isinstance(daemon, Proposal), daemon
            daemon_consts = read_constants(daemon.train_py.decode())
            des, _ = node._propose_on(baseline)
            assert des is not None
            des_consts = sh.constants[des[1]]
            assert des_consts == daemon_consts, (daemon.description, des[2])
            wins_in = daemon.description.split(":")[0].count(",") + 1 if daemon.description.startswith("combine") else 0
            assert des[2] == ("stack" if wins_in > 1 else "combination" if wins_in else "mutation"), (des[2], daemon.description)
            kinds.append("combination" if wins_in else "mutation")
            stacked.append(wins_in)
            ran.add(exp_id_of(des_consts))
        # combinations first (over more than one proposal's merge budget), then mutations
        assert kinds.count("combination") >= 4 and kinds[-1] == "mutation", kinds
        # stacks of several wins come first (research/io/combine.stack_knobs), the same in both engines
        assert max(stacked) >= 3 and stacked[0] >= 2, stacked
    finally:
        ctx.ledger.close()
