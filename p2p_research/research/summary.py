"""Parsing the summary block that train.py prints at the end of a run (pure).

Only `val_bpb` is required. The other keys are read under either naming, this project's harness's
(`peak_memory_mb`, `num_params`, `tokens`) or autoresearch's (`peak_vram_mb`, `num_params_M`,
`total_tokens_M`), and every key printed, known or not (`mfu_percent`, `depth`), is kept as printed
in `metrics`, which the ledger stores with the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from p2p_research.errors import P2PResearchError

MAX_KEYS = 64
MAX_VALUE = 200

# field -> [(key in the block, multiplier)], first present wins
FLOATS: dict[str, list[tuple[str, float]]] = {
    "training_seconds": [("training_seconds", 1.0)],
    "total_seconds": [("total_seconds", 1.0)],
    "peak_memory_mb": [("peak_memory_mb", 1.0), ("peak_vram_mb", 1.0)],
}
INTS: dict[str, list[tuple[str, float]]] = {
    "num_params": [("num_params", 1.0), ("num_params_M", 1e6)],
    "num_steps": [("num_steps", 1.0)],
    "tokens": [("tokens", 1.0), ("total_tokens_M", 1e6)],
}


@dataclass(frozen=True)
class Summary:
    val_bpb: float
    training_seconds: float | None = None
    total_seconds: float | None = None
    peak_memory_mb: float | None = None
    num_params: int | None = None
    num_steps: int | None = None
    tokens: int | None = None
    device: str = "?"
    metrics: dict[str, str] = field(default_factory=dict)

    @property
    def memory_gb(self) -> float | None:
        return None if self.peak_memory_mb is None else self.peak_memory_mb / 1024.0


class SummaryError(P2PResearchError, ValueError):
    pass


def _number(values: dict[str, str], choices: list[tuple[str, float]]) -> float | None:
    for key, mult in choices:
        if key in values:
            try:
                v = float(values[key]) * mult
            except ValueError:
                raise SummaryError(f"summary has a bad number: {key}: {values[key][:40]!r}") from None
            return v if math.isfinite(v) else None
    return None


def parse_summary(text: str) -> Summary:
    """Read the last `---` block of `key: value` lines; raise SummaryError with the reason otherwise."""
    lines = text.replace("\r", "\n").splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.strip() == "---")
    except ValueError:
        raise SummaryError("no summary block (no '---' line) in the output") from None
    values: dict[str, str] = {}
    for line in lines[start + 1:]:
        if ":" not in line:
            continue
        k, _, v = line.partition(":")
        k = k.strip()
        if k and len(values) < MAX_KEYS and " " not in k:
            values[k] = v.strip()[:MAX_VALUE]
    if "val_bpb" not in values:
        raise SummaryError("summary lacks val_bpb")
    try:
        val_bpb = float(values["val_bpb"])
    except ValueError:
        raise SummaryError(f"summary has a bad val_bpb: {values['val_bpb'][:40]!r}") from None
    if not math.isfinite(val_bpb):
        raise SummaryError(f"val_bpb is not finite ({values['val_bpb']})")
    floats = {name: _number(values, keys) for name, keys in FLOATS.items()}
    ints = {name: _number(values, keys) for name, keys in INTS.items()}
    return Summary(val_bpb=val_bpb, **floats, **{k: None if v is None else int(round(v)) for k, v in ints.items()},
                   device=values.get("device", "?"), metrics=values)
