"""Seeded mutations of train.py's constants within the search space (pure; no I/O).

Values are rounded to three significant digits so that nearby proposals from different nodes land on
the same literal, and hence the same experiment id, more often: dedup works on exact trees.

A node in a swarm takes smaller steps than a node alone (`step_scale`): alone, a node must reach far
with each of its few runs; in a swarm the breadth comes from the many nodes on one baseline (each draws
its own candidates, the ring keeps them apart), and their wins are merged into stacks, so finer steps
near the best pay more. Measured with the DES (docs/scale.md, "Smaller steps in a swarm"): a 35-node
and a 5-node swarm reach the later targets sooner at 0.6 than at 1.0, with and without liars, on seeds
0-19 and 20-39 and on the other landscapes, while a node alone does worse at 0.6.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

from p2p_research.research.constants import (
    Literal,
    apply_scalar_changes,
    describe_value,
    flatten,
    read_constants,
    rewrite_constants,
    split_key,
)
from p2p_research.research.searchspace import Param, SearchSpace

#: the step a node in a swarm takes, relative to a node alone (scales the random steps' spread)
SWARM_STEP_SCALE = 0.6


def step_scale(researchers: int) -> float:
    """The spread of a mutation's step for a node that hears `researchers` other researchers of its
    protocol: 1 alone, SWARM_STEP_SCALE in a swarm (the module's docstring says why)."""
    return SWARM_STEP_SCALE if researchers > 0 else 1.0


def _round_sig(x: float, digits: int = 3) -> float:
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def _clip(x: float, p: Param) -> float:
    assert p.low is not None and p.high is not None
    return min(max(x, p.low), p.high)


def mutate_value(p: Param, current: Literal, rng: random.Random, scale: float = 1.0) -> Literal:
    """A new value for one constant, different from `current` where the space allows it; `scale`
    multiplies the spread of a continuous step (step_scale)."""
    if p.kind == "bool":
        return not bool(current)
    if p.kind == "choice":
        others = [c for c in p.choices if not (c == current and type(c) is type(current))]
        return rng.choice(others or list(p.choices))
    cur = float(current) if isinstance(current, (int, float)) and not isinstance(current, bool) else p.low
    assert p.low is not None and p.high is not None
    cur = _clip(cur, p)  # type: ignore[arg-type]
    if p.step == "pow2" or (p.step == "unit" and p.kind == "int"):
        up = cur * 2 if p.step == "pow2" else cur + 1
        down = cur / 2 if p.step == "pow2" else cur - 1
        options = [int(v) for v in (up, down) if p.low <= v <= p.high and v == int(v)]
        if options:
            return rng.choice(options)
    for _ in range(20):
        if p.step == "complement":
            gap = (1.0 - cur) * math.exp(rng.gauss(0.0, 0.5 * scale))
            new = _round_sig(_clip(1.0 - gap, p))
            if new != cur:
                return new
            continue
        if p.kind == "int":
            if p.log and cur > 0:
                new: float = round(cur * math.exp(rng.gauss(0.0, 0.35 * scale)))
            else:
                new = cur + rng.choice([-2, -1, 1, 1, 2])
            new = int(_clip(new, p))
            if new != int(cur):
                return new
        else:
            if p.log:
                new = cur * math.exp(rng.gauss(0.0, 0.5 * scale))
            else:
                new = cur + rng.gauss(0.0, 0.2 * scale * (p.high - p.low))
            new = _round_sig(_clip(new, p))
            if new != cur:
                return new
    # Stuck at a bound with tiny steps: jump anywhere in range.
    if p.kind == "int":
        return rng.randint(int(p.low), int(p.high))
    return _round_sig(rng.uniform(p.low, p.high))


def _fits(p: Param, value: Literal) -> bool:
    """A constant the proposer can move: a bool for a bool, a number for a range (choices take any)."""
    if p.kind == "bool":
        return isinstance(value, bool)
    if p.kind == "choice":
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Mutation:
    source: str
    changes: dict[str, tuple[Literal, Literal]]   # scalar view: NAME or NAME[i]
    description: str = ""


@dataclass(frozen=True)
class Choices:
    """What a mutation of one baseline may change: its scalar constants and the weighted names (the part
    of `choose_changes` that depends on the baseline only, so a caller may reuse it per baseline)."""

    current: dict[str, Literal]
    names: list[str]
    weights: list[float]
    cum_weights: list[float] = field(default_factory=list)  # what random.choices computes from `weights`

    def __post_init__(self) -> None:
        if not self.cum_weights:
            self.cum_weights.extend(itertools.accumulate(self.weights))


def prepare_choices(constants: dict, space: SearchSpace, focus: dict[str, float] | None = None) -> Choices:
    current = flatten(constants)
    names = sorted(n for n in space.params if n in current and _fits(space.params[n], current[n]))
    if not names:
        raise ValueError("no constant of the search space is present in train.py")
    return Choices(current, names, [max(1e-6, (focus or {}).get(n, 1.0)) for n in names])


def draw_changes(choices: Choices, space: SearchSpace, rng: random.Random,
                 scale: float = 1.0) -> dict[str, tuple[Literal, Literal]]:
    current, names = choices.current, choices.names
    k = 1 if rng.random() < 0.7 or len(names) < 2 else 2
    chosen: list[str] = []
    while len(chosen) < k:
        n = rng.choices(names, cum_weights=choices.cum_weights)[0]
        if n not in chosen:
            chosen.append(n)
    new_values = {n: mutate_value(space.params[n], current[n], rng, scale) for n in chosen}
    return {n: (current[n], v) for n, v in new_values.items() if not (v == current[n] and type(v) is type(current[n]))}


def choose_changes(constants: dict, space: SearchSpace, rng: random.Random,
                   focus: dict[str, float] | None = None, scale: float = 1.0) -> dict[str, tuple[Literal, Literal]]:
    """The decision of a mutation: which scalar constants change, and to what (old, new) (pure, no source).

    Kept apart from the rewrite of train.py so that the discrete-event simulator (sim/des) draws the
    very same mutations from the same random stream without writing sources."""
    return draw_changes(prepare_choices(constants, space, focus), space, rng, scale)


def propose_mutation(baseline_source: str, space: SearchSpace, rng: random.Random,
                     focus: dict[str, float] | None = None, scale: float = 1.0) -> Mutation:
    """Change one constant (sometimes two) of the baseline, within the search space.

    `focus` optionally weights the names (e.g. towards constants whose changes helped before).
    """
    constants = read_constants(baseline_source)
    changes = choose_changes(constants, space, rng, focus, scale)
    whole = apply_scalar_changes(constants, {n: new for n, (_, new) in changes.items()})
    source = rewrite_constants(baseline_source, whole)
    return Mutation(source, changes, describe_changes(baseline_source, changes))


def describe_changes(source: str, changes: dict[str, tuple[Literal, Literal]]) -> str:
    """`LEARNING_RATE 0.002 -> 0.004; TOTAL_BATCH_SIZE 2**19 -> 2**20`, each value written as in train.py."""
    parts = []
    for key, (a, b) in sorted(changes.items()):
        name, idx = split_key(key)
        if idx is None:
            parts.append(f"{key} {describe_value(source, name, a)} -> {describe_value(source, name, b)}")
        else:
            parts.append(f"{key} {a!r} -> {b!r}")
    return "; ".join(parts)
