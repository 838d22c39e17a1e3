"""report.json, series.json, report.md and plots of a discrete-event run: the process report's files,
written and rendered by the same code (sim/report.py; report.md shows the model's own sections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p_research.sim.report import write_report


def write_des_report(m: dict[str, Any], folder: Path, argv: list[str]) -> Path:
    return write_report(m, folder, argv)
