"""The surrogate's landscapes (research.surrogate): one set of knobs, other structures, in both engines."""

import statistics

import pytest

from p2p_research.research.io.surrogate import (
    FAMILIES,
    GENESIS,
    NOISE_STD,
    noise_std_of,
    noisy_value,
    surrogate_bpb,
)
from p2p_research.sim.des.run import DesOptions, DesSimulation, embedded_target

B = 500_000


def f(family: str, **changes) -> float:
    v = surrogate_bpb({**GENESIS, **changes}, B, family)
    assert v is not None
    return v


def test_every_family_starts_from_the_embedded_genesis_at_the_same_value():
    genesis, _ = embedded_target()
    assert genesis == GENESIS  # the copy the separable family expands around is the target's
    assert len({surrogate_bpb(genesis, B, fam) for fam in FAMILIES}) == 1
    with pytest.raises(ValueError, match="unknown surrogate family"):
        surrogate_bpb(genesis, B, "flat")


def test_separable_knobs_add_up_and_the_default_s_do_not():
    g = f("default")
    for fam, additive in (("separable", True), ("default", False)):
        both = f(fam, LEARNING_RATE=0.004, BATCH_SIZE=64) - g
        apart = (f(fam, LEARNING_RATE=0.004) - g) + (f(fam, BATCH_SIZE=64) - g)
        assert (abs(both - apart) < 1e-12) is additive, (fam, both, apart)


def test_interacting_pairs_must_move_together():
    # width alone costs more than in the default; width with depth costs it nothing extra
    assert f("interacting", N_EMBD=192) - f("default", N_EMBD=192) > 0.01
    assert f("interacting", N_EMBD=256, N_LAYER=6) == pytest.approx(f("default", N_EMBD=256, N_LAYER=6))
    assert f("interacting", LEARNING_RATE=0.004) - f("default", LEARNING_RATE=0.004) > 0.02


def test_the_deceptive_basin_lies_behind_a_ridge():
    assert f("deceptive", N_LAYER=6) == pytest.approx(f("default", N_LAYER=6) + 0.02)
    assert f("deceptive", N_EMBD=192) == pytest.approx(f("default", N_EMBD=192) + 0.02)
    assert f("deceptive", N_LAYER=6, N_EMBD=192) == pytest.approx(f("default", N_LAYER=6, N_EMBD=192) - 0.06)


def test_noisy_has_three_times_the_noise_and_runs_stay_reproducible():
    assert noise_std_of("noisy") == 3 * NOISE_STD and noise_std_of("deceptive") == NOISE_STD
    spread = {fam: statistics.pstdev(noisy_value(GENESIS, s, B, fam) for s in range(400)) for fam in ("default", "noisy")}
    assert 2.4 < spread["noisy"] / spread["default"] < 3.6, spread
    assert noisy_value(GENESIS, 7, B, "noisy") == noisy_value(GENESIS, 7, B, "noisy")


def test_a_landscape_is_part_of_the_protocol(tiny_home):
    from p2p_research.research.io.context import open_context

    ids = {}
    for fam in ("default", "noisy"):
        cfg = tiny_home.load_config()
        cfg.research.objective, cfg.research.surrogate = "surrogate", fam
        ctx = open_context(tiny_home, cfg)
        ids[fam] = ctx.protocol_id
        ctx.ledger.close()
    cfg.research.objective, cfg.research.surrogate = "torch", "default"
    ctx = open_context(tiny_home, cfg)
    assert ids["default"] == ctx.protocol_id != ids["noisy"]  # the default's protocol is unchanged
    ctx.ledger.close()


def test_the_des_runs_each_landscape_and_the_margin_follows_the_noise():
    for fam in FAMILIES:
        sim = DesSimulation(DesOptions(nodes=6, duration_s=90, settle_s=60, seed=1, surrogate=fam))
        m = sim.run()
        assert m["experiments_completed"] > 0 and m["objective"].startswith("surrogate")
        assert (fam in m["objective"]) is (fam != "default")
        assert sim.shared.margin == pytest.approx(0.002 * noise_std_of(fam) / NOISE_STD)
    with pytest.raises(ValueError, match="--surrogate"):
        DesOptions(surrogate="flat").validate()
