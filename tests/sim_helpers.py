"""Running `p2p-research simulate` in tests, and checking that nothing of a run is left behind."""

from __future__ import annotations

import sys
from pathlib import Path

# Works whether or not cli/app.py registers the command already.
RUNNER = ("import sys\nfrom p2p_research.cli.app import app\nfrom p2p_research.cli import sim_cmds\n"
          "if 'simulate' not in {c.name for c in app.registered_commands}:\n    sim_cmds.register(app)\n"
          "sys.argv[0] = 'p2p-research'\napp()\n")
SIM = [sys.executable, "-c", RUNNER, "simulate"]


def leftover_processes(marker: str) -> list[str]:
    """Processes whose command line mentions `marker` (the report folder): must be none after a run."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            out.append(f"{p.name}: {cmd[:200]}")
    return out
