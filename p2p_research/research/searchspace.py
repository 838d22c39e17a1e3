"""The built-in proposer's search space: declared in `program.md`, or inferred from train.py's constants.

The declared form is a fenced code block opened by the line "```toml search-space"; each table names a
top-level constant of `train.py` (or an element of a tuple constant, `ADAM_BETAS[1]`) with its kind
and bounds or choices. Keeping it in program.md puts the human instructions and the machine's bounds
side by side, so they cannot drift apart silently.

Without the block (an autoresearch folder has none) the space is inferred from the constants, and only
the built-in proposer needs it: a positive float moves by log-scale factors (within 10x of its value;
a float in (0.5, 1) such as a beta moves its distance to 1 instead), an int to its neighbours (a power
of two written as `2**k` or of at least 16 halves or doubles, a small int steps by one, a larger one
moves by log-scale factors), a bool flips. Strings and zeros are left alone: their other choices are
never invented.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass

from p2p_research.errors import P2PResearchError
from p2p_research.research.constants import Const, Literal, flatten

FENCE = re.compile(r"^```toml search-space[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
KINDS = ("int", "float", "choice", "bool")


class SearchSpaceError(P2PResearchError, ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Literal, ...] = ()
    step: str = ""          # inferred moves: "" (as declared) | pow2 | unit | complement

    def describe(self) -> str:
        if self.kind == "bool":
            return "bool (flips)"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        how = {"pow2": "halves/doubles", "unit": "steps by 1", "complement": "log-scale distance to 1"}.get(
            self.step, "log scale" if self.log else "linear")
        return f"{self.kind} {self.low:g}..{self.high:g} ({how})"

    def contains(self, value: Literal) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Param]
    origin: str = "program.md"                  # program.md | inferred
    left_out: tuple[tuple[str, str], ...] = ()  # (constant, why it is not searched), for `knobs`

    def __len__(self) -> int:
        return len(self.params)


def _param(name: str, spec: object) -> Param:
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{name}: expected a table")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise SearchSpaceError(f"{name}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "bool":
        return Param(name, "bool")
    if kind == "choice":
        choices = spec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise SearchSpaceError(f"{name}: a choice needs a list of at least two choices")
        for c in choices:
            if not isinstance(c, (int, float, str, bool)):
                raise SearchSpaceError(f"{name}: choice {c!r} is not a literal")
        return Param(name, "choice", choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    for label, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SearchSpaceError(f"{name}: {label} must be a number")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise SearchSpaceError(f"{name}: int bounds must be integers")
    if not low < high:  # type: ignore[operator]
        raise SearchSpaceError(f"{name}: low must be below high")
    log = bool(spec.get("log", False))
    if log and low <= 0:  # type: ignore[operator]
        raise SearchSpaceError(f"{name}: a log scale needs low > 0")
    if not all(math.isfinite(float(v)) for v in (low, high)):  # type: ignore[arg-type]
        raise SearchSpaceError(f"{name}: bounds must be finite")
    return Param(name, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high, log)


def has_search_space(program_md: str) -> bool:
    return FENCE.search(program_md) is not None


def parse_search_space(program_md: str) -> SearchSpace:
    m = FENCE.search(program_md)
    if not m:
        raise SearchSpaceError("program.md has no ```toml search-space block")
    try:
        data = tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError as e:
        raise SearchSpaceError(f"search-space block is not valid TOML: {e}") from None
    if not data:
        raise SearchSpaceError("search-space block is empty")
    return SearchSpace({name: _param(name, spec) for name, spec in data.items()})


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def infer_param(name: str, value: Literal, written_as_pow: bool = False) -> Param | str:
    """The inferred range of one constant, or the reason it has none."""
    if isinstance(value, bool):
        return Param(name, "bool")
    if isinstance(value, str):
        return "a string: its other choices are not invented (declare them in program.md)"
    if value == 0:
        return "zero: no scale to infer (declare a range in program.md)"
    if isinstance(value, int):
        if _pow2(value) and (written_as_pow or value >= 16):
            return Param(name, "int", max(1, value // 16), value * 16, step="pow2")
        if abs(value) <= 16:
            low, high = (1, max(value * 4, value + 4)) if value > 0 else (value * 4 - 4, -1)
            return Param(name, "int", low, high, step="unit")
        low, high = sorted((value // 4, value * 4))
        return Param(name, "int", low, high, log=value > 0, step="" if value > 0 else "unit")
    if 0.5 < value < 1 and (value >= 0.9 or any(w in name for w in COMPLEMENT_WORDS)):
        gap = 1.0 - value
        return Param(name, "float", max(value / 2, 1.0 - gap * 10), 1.0 - gap / 10, step="complement")
    low, high = sorted((value / 10, value * 10))
    if 0 < value <= 1 and any(w in name for w in FRACTION_WORDS):
        high = 1.0
    return Param(name, "float", low, high, log=value > 0)


COMPLEMENT_WORDS = ("BETA", "MOMENTUM", "EMA", "GAMMA")   # near 1: move the distance to 1
FRACTION_WORDS = ("RATIO", "FRAC", "PROB", "DROPOUT", "PCT")  # at most 1


def hyperparameter_block(source: str) -> list[str]:
    """The names in the longest contiguous run of top-level constant assignments (comments and blank
    lines do not break a run). autoresearch's "Hyperparameters" block is such a run; a constant elsewhere
    (`H100_BF16_PEAK_FLOPS`, used for reporting) is not a knob unless program.md declares it."""
    from p2p_research.research.constants import assigned_constant, parse_source

    best: list[str] = []
    run: list[str] = []
    for stmt in parse_source(source).body:
        name = assigned_constant(stmt)
        if name is not None:
            run.append(name)
            if len(run) > len(best):
                best = list(run)
        else:
            run = []
    return best


def infer_search_space(source: str) -> SearchSpace:
    """A default space from train.py's constants (see the module docstring for the rules)."""
    from p2p_research.research.constants import constant_sites, split_key

    sites = constant_sites(source)
    constants = {n: s.value for n, s in sites.items()}
    pow_names = frozenset(n for n, s in sites.items() if s.form.kind == "pow")
    block = set(hyperparameter_block(source))
    params: dict[str, Param] = {}
    left_out: list[tuple[str, str]] = []
    for key, value in flatten(constants).items():
        if split_key(key)[0] not in block:
            left_out.append((key, "outside the hyperparameter block (declare it in program.md to search it)"))
            continue
        p = infer_param(key, value, key in pow_names)
        if isinstance(p, Param):
            params[key] = p
        else:
            left_out.append((key, p))
    for name, v in constants.items():
        if isinstance(v, tuple) and any(isinstance(x, tuple) for x in v):
            left_out.append((name, "a nested tuple: not searched"))
    return SearchSpace(params, "inferred", tuple(left_out))


def check_against(space: SearchSpace, constants: dict[str, Const]) -> None:
    """Every searchable name must be a constant of train.py (or an element of one), of a matching kind."""
    constants = flatten(constants)  # type: ignore[assignment]
    for name, p in space.params.items():
        if name not in constants:
            raise SearchSpaceError(f"{name} is in the search space but not a top-level constant of train.py")
        v = constants[name]
        if p.kind == "bool" and not isinstance(v, bool):
            raise SearchSpaceError(f"{name}: train.py has {v!r}, the search space says bool")
        if p.kind in ("int", "float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SearchSpaceError(f"{name}: train.py has {v!r}, the search space says {p.kind}")
