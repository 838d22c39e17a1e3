"""The built-in proposer's search space, read from the machine-readable block of `program.md`.

The block is a fenced code block opened by the line "```toml search-space"; each table names a
top-level constant of `train.py` with its kind and bounds or choices. Keeping it in program.md puts
the human instructions and the machine's bounds side by side, so they cannot drift apart silently.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass

from p2p_research.research.constants import Literal

FENCE = re.compile(r"^```toml search-space[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
KINDS = ("int", "float", "choice", "bool")


class SearchSpaceError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Literal, ...] = ()

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


def check_against(space: SearchSpace, constants: dict[str, Literal]) -> None:
    """Every searchable name must be a literal constant of train.py, of a matching kind."""
    for name, p in space.params.items():
        if name not in constants:
            raise SearchSpaceError(f"{name} is in the search space but not a top-level literal constant of train.py")
        v = constants[name]
        if p.kind == "bool" and not isinstance(v, bool):
            raise SearchSpaceError(f"{name}: train.py has {v!r}, the search space says bool")
        if p.kind in ("int", "float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SearchSpaceError(f"{name}: train.py has {v!r}, the search space says {p.kind}")
