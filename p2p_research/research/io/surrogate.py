"""A surrogate objective: scores train.py's constants without training, for large simulated swarms.

A deterministic function of the constants with interactions and a realistic optimum structure (the best
learning rate depends on width, batch and QK-norm; model size trades against optimizer steps under the
fixed token budget; some choices diverge without gradient clipping), plus seeded noise of the size real
runs show (~0.002 bpb) and a simulated cost in seconds. Everything around it (commits, objects,
gossip, claims, adoption, verification, the ledger) is the real pipeline. The same constants and seed
give the same value, so a verifier's re-run confirms an honest result exactly, as with real training.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import time
from pathlib import Path

import trio

from p2p_research.research.constants import ConstantsError, read_constants
from p2p_research.research.io.runner import RunLimits, RunOutcome
from p2p_research.research.summary import Summary

NOISE_STD = 0.002
DEFAULT_TOKENS = 600_000
#: landscapes of other structure over the same knobs (research.surrogate), so that no lever of the swarm
#: is tuned to one: see `surrogate_bpb`
FAMILIES = ("default", "separable", "interacting", "noisy", "deceptive")


def _f(c: dict, name: str, default: float) -> float:
    v = c.get(name, default)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def noise_std_of(family: str = "default") -> float:
    """The run-to-run noise of a family: `noisy` has three times the default's."""
    return 3 * NOISE_STD if family == "noisy" else NOISE_STD


def surrogate_bpb(c: dict, budget_tokens: int = DEFAULT_TOKENS, family: str = "default") -> float | None:
    """Noise-free surrogate val_bpb of a set of constants (None: the configuration 'diverges').

    The families share the knobs, the genesis value and the scale, and differ in structure:
    - `default` (and `noisy`, the same with 3x the noise): interactions where training has them;
    - `separable`: the default's first-order part around the embedded genesis, the sum of each knob's
      own effect there, so knobs never interact and parallel wins add up exactly;
    - `interacting`: the default plus three couplings that are zero at the genesis and punish moving
      one knob of a pair alone (depth with width, learning rate with warm-up, sequence length against
      batch size): single-knob hill climbing stalls where pairs must move together;
    - `deceptive`: the default plus a basin that lies behind a ridge: deepening or widening alone costs
      0.02 each, both together (6+ layers and 192+ wide) gain 0.06, so a greedy search is held at a
      local optimum that only a two-knob move (or a combination of two discarded ones) escapes.
    """
    if family in ("default", "noisy"):
        return _default_bpb(c, budget_tokens)
    if family == "separable":
        return _separable_bpb(c, budget_tokens)
    if family == "interacting":
        return _interacting_bpb(c, budget_tokens)
    if family == "deceptive":
        return _deceptive_bpb(c, budget_tokens)
    raise ValueError(f"unknown surrogate family {family!r} (one of {', '.join(FAMILIES)})")


#: the embedded target's genesis constants: the point the separable family expands around (a copy, so
#: this module needs no target files; tests check it matches target/train.py)
GENESIS = {"N_LAYER": 4, "N_EMBD": 128, "N_HEAD": 4, "MLP_RATIO": 4, "SEQ_LEN": 128, "BATCH_SIZE": 16,
           "LEARNING_RATE": 0.002, "MIN_LR_FRAC": 0.1, "WARMUP_FRAC": 0.05, "SCHEDULE": "cosine",
           "WEIGHT_DECAY": 0.1, "BETA1": 0.9, "BETA2": 0.95, "GRAD_CLIP": 1.0, "DROPOUT": 0.0,
           "ACTIVATION": "gelu", "NORM": "layernorm", "POS_EMB": "rope", "QK_NORM": False,
           "TIE_EMBEDDINGS": True, "INIT_SCALE": 1.0, "BIAS": False}


def _separable_bpb(c: dict, budget_tokens: int) -> float | None:
    v = _knob_effect(None, None, type(None), budget_tokens)
    assert v is not None
    for k, value in c.items():
        if k not in GENESIS or value == GENESIS[k]:
            continue
        effect = _knob_effect(k, value, type(value), budget_tokens)
        if effect is None:
            return None
        v += effect
    return v


@functools.lru_cache(maxsize=4096)
def _knob_effect(knob: str | None, value: object, kind: type, budget_tokens: int) -> float | None:
    """One knob's own effect at the genesis (the default's value there, for knob None): the separable
    family's terms, cached, as a simulation asks for the same few hundred again and again (`kind` keeps
    1, 1.0 and True apart in the cache, as the default tells a bool from a number)."""
    base = _default_bpb(GENESIS, budget_tokens)
    if knob is None or base is None:
        return base
    one = _default_bpb({**GENESIS, knob: value}, budget_tokens)
    return None if one is None else one - base


def _interacting_bpb(c: dict, budget_tokens: int) -> float | None:
    v = _default_bpb(c, budget_tokens)
    if v is None:
        return None
    depth, width = _f(c, "N_LAYER", 4), _f(c, "N_EMBD", 128)
    lr, warm = _f(c, "LEARNING_RATE", 2e-3), _f(c, "WARMUP_FRAC", 0.05)
    seq, batch = _f(c, "SEQ_LEN", 128), _f(c, "BATCH_SIZE", 16)
    v += 0.04 * (math.log2(width / 128) - 0.5 * (depth - 4)) ** 2
    v += 0.03 * (math.log2(lr / 2e-3) - 20 * (warm - 0.05)) ** 2
    v += 0.03 * (math.log2(seq / 128) + math.log2(batch / 16)) ** 2
    return v


def _deceptive_bpb(c: dict, budget_tokens: int) -> float | None:
    v = _default_bpb(c, budget_tokens)
    if v is None:
        return None
    deep, wide = _f(c, "N_LAYER", 4) >= 6, _f(c, "N_EMBD", 128) >= 192
    return v - 0.06 if deep and wide else v + 0.02 * (deep + wide)


def _default_bpb(c: dict, budget_tokens: int = DEFAULT_TOKENS) -> float | None:
    layers, width, ratio = _f(c, "N_LAYER", 4), _f(c, "N_EMBD", 128), _f(c, "MLP_RATIO", 4)
    heads, seq, batch = _f(c, "N_HEAD", 4), _f(c, "SEQ_LEN", 128), _f(c, "BATCH_SIZE", 16)
    lr, wd = _f(c, "LEARNING_RATE", 2e-3), _f(c, "WEIGHT_DECAY", 0.1)
    if width % heads:
        return None
    params = layers * width * width * (4 + 2 * ratio) + 256 * width * (1 if c.get("TIE_EMBEDDINGS", True) else 2)
    steps = max(1.0, budget_tokens / (batch * seq))
    qk = bool(c.get("QK_NORM", False))
    # Model size against optimizer steps under a fixed token budget.
    p_opt = 1.6e6 * (steps / 300) ** 0.6
    v = 1.55 + 0.035 * math.log2(params / p_opt) ** 2
    v += 0.12 * max(0.0, math.log2(150 / steps)) ** 2               # too few steps to learn
    v -= 0.045 * math.log2(seq / 32) - 0.012 * math.log2(seq / 32) ** 2  # context helps, with diminishing returns
    # Learning rate: optimum shifts with width, batch and QK-norm.
    lr_opt = 3.5e-3 * math.sqrt(128 / width) * (batch * seq / 2048) ** 0.3 * (1.6 if qk else 1.0)
    x = math.log2(lr / lr_opt)
    v += 0.09 * x * x / (1 + 0.04 * x * x)
    clip = _f(c, "GRAD_CLIP", 1.0)
    if x > 1.8 and clip == 0 and not qk:
        return None                                                  # diverges
    v += 0.012 if clip == 0 else 0.004 * (clip - 1.0) ** 2
    # Schedule.
    warm, minlr = _f(c, "WARMUP_FRAC", 0.05), _f(c, "MIN_LR_FRAC", 0.1)
    v += 1.2 * (warm - 0.06) ** 2 + (0.02 if warm == 0 and x > 0.5 else 0.0)
    sched = c.get("SCHEDULE", "cosine")
    v += {"cosine": 0.0, "linear": 0.004, "constant": 0.035}.get(sched, 0.05)
    v += 0.12 * (minlr - (0.05 if sched == "cosine" else 0.1)) ** 2
    # Regularisation and optimiser.
    v += 0.25 * (wd - 0.08) ** 2 + 0.35 * _f(c, "DROPOUT", 0.0)
    v += 2.0 * (_f(c, "BETA1", 0.9) - 0.88) ** 2 + 3.0 * (_f(c, "BETA2", 0.95) - 0.97) ** 2
    # Architecture choices, with an interaction (relu2 prefers rmsnorm).
    act, norm = c.get("ACTIVATION", "gelu"), c.get("NORM", "layernorm")
    v += {"gelu": 0.0, "silu": -0.004, "relu": 0.012, "relu2": -0.006}.get(act, 0.02)
    v += {"layernorm": 0.0, "rmsnorm": -0.003}.get(norm, 0.01)
    if act == "relu2" and norm == "rmsnorm":
        v -= 0.006
    v += {"rope": 0.0, "learned": 0.012, "none": 0.07}.get(c.get("POS_EMB", "rope"), 0.05)
    v += -0.004 if qk else 0.0
    v += 0.01 * math.log2(width / heads / 32) ** 2
    if not c.get("TIE_EMBEDDINGS", True):
        v += -0.008 if width >= 128 else 0.01
    v += 0.03 * math.log2(_f(c, "INIT_SCALE", 1.0) / 0.7) ** 2
    v += 0.002 if c.get("BIAS", False) else 0.0
    return v


def noisy_value(c: dict, seed: int, budget_tokens: int, family: str = "default") -> float | None:
    base = surrogate_bpb(c, budget_tokens, family)
    if base is None:
        return None
    key = repr(sorted((k, repr(v)) for k, v in c.items())) + f"|{seed}"
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    return base + rng.gauss(0.0, noise_std_of(family))


class SurrogateTrainer:
    """Stands in for run_training: same inputs, same RunOutcome, a log with the same summary block."""

    def __init__(self, cost_s: float, budget_tokens: int | None, family: str = "default") -> None:
        self.cost_s = cost_s
        self.budget_tokens = budget_tokens or DEFAULT_TOKENS
        self.family = family

    async def __call__(self, run_dir: Path, env: dict[str, str], limits: RunLimits, log_path: Path,
                       sandbox: object = None) -> RunOutcome:  # runs no code: nothing to sandbox
        started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            constants = read_constants((run_dir / "train.py").read_text())
        except (OSError, UnicodeDecodeError, ConstantsError) as e:
            log_path.write_text(f"surrogate: cannot read train.py: {e}\n")
            return RunOutcome(False, None, f"cannot read train.py: {e}", 0.0, 1, log_path)
        await trio.sleep(min(self.cost_s, limits.time_limit_s))
        seed = int(env.get("P2P_SEED", "0"))
        value = noisy_value(constants, seed, self.budget_tokens, self.family)
        wall = time.monotonic() - started
        if value is None:
            log_path.write_text("surrogate: loss diverged (NaN)\n")
            return RunOutcome(False, None, "loss diverged (NaN/inf)", wall, 3, log_path)
        s = Summary(val_bpb=value, training_seconds=self.cost_s, total_seconds=wall, peak_memory_mb=100.0,
                    num_params=0, num_steps=0, tokens=self.budget_tokens, device="surrogate")
        log_path.write_text(f"surrogate objective\n---\nval_bpb:          {value:.6f}\ntraining_seconds: {self.cost_s:.1f}\n"
                            f"total_seconds:    {wall:.1f}\npeak_memory_mb:   100.0\nnum_params:       0\n"
                            f"num_steps:        0\ntokens:           {self.budget_tokens}\ndevice:           surrogate\n")
        return RunOutcome(True, s, "ok", wall, 0, log_path)
