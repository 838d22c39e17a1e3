"""Parsing the summary block that train.py prints at the end of a run (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_memory_mb")
INT_KEYS = ("num_params", "num_steps", "tokens")


@dataclass(frozen=True)
class Summary:
    val_bpb: float
    training_seconds: float
    total_seconds: float
    peak_memory_mb: float
    num_params: int
    num_steps: int
    tokens: int
    device: str

    @property
    def memory_gb(self) -> float:
        return self.peak_memory_mb / 1024.0


class SummaryError(ValueError):
    pass


def parse_summary(text: str) -> Summary:
    """Read the last `---` block of `key: value` lines; raise SummaryError with the reason otherwise."""
    lines = text.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.strip() == "---")
    except ValueError:
        raise SummaryError("no summary block (no '---' line) in the output") from None
    values: dict[str, str] = {}
    for line in lines[start + 1:]:
        if ":" not in line:
            continue
        k, _, v = line.partition(":")
        values[k.strip()] = v.strip()
    missing = [k for k in (*FLOAT_KEYS, *INT_KEYS) if k not in values]
    if missing:
        raise SummaryError(f"summary lacks {', '.join(missing)}")
    parsed: dict[str, object] = {}
    try:
        for k in FLOAT_KEYS:
            parsed[k] = float(values[k])
        for k in INT_KEYS:
            parsed[k] = int(float(values[k]))
    except ValueError as e:
        raise SummaryError(f"summary has a bad number: {e}") from None
    if not math.isfinite(parsed["val_bpb"]):  # type: ignore[arg-type]
        raise SummaryError(f"val_bpb is not finite ({values['val_bpb']})")
    return Summary(device=values.get("device", "?"), **parsed)  # type: ignore[arg-type]
