"""`swarm`: the whole swarm at a glance (research/io/swarm_view.py), from this node's ledger."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2p_research.cli.common import CliError, HomeOpt, JsonOpt, one_line_errors, print_json, resolve_home
from p2p_research.home import NodeHome

out = Console()


def register(app: typer.Typer) -> None:
    @app.command("swarm")
    @one_line_errors
    def swarm(home: Path | None = HomeOpt, json_out: bool = JsonOpt,
              tsv: Path | None = typer.Option(None, "--tsv", help="Write every result the swarm reported as a "
                                              "results.tsv (autoresearch's columns) that analysis.ipynb reads"),
              limit: int = typer.Option(15, "--limit", min=1, help="Rows per table")) -> None:
        """Every node's best, kept results by finder, which knobs paid, the swarm's best over time."""
        from p2p_research.research.io.ideas import ideas_view
        from p2p_research.research.io.swarm_view import results_tsv, rows_of, view
        from p2p_research.store.ledger import Ledger

        h = NodeHome(resolve_home(home)).require()
        ledger = Ledger(h.ledger)
        try:
            latest = ledger.latest_baseline()
            if latest is None:
                raise CliError("this node has no baseline yet: nothing of its swarm to show")
            rows = rows_of(ledger, latest.protocol_id)
            ideas = ideas_view(ledger, latest.protocol_id)
        finally:
            ledger.close()
        data = {**view(rows), "across_hardware": ideas}
        if tsv is not None:
            tsv.expanduser().write_text(results_tsv(rows))
        if json_out:
            return print_json({**data, "protocol_id": latest.protocol_id, "tsv": str(tsv) if tsv else None})
        t = Table(title=f"nodes of protocol {latest.protocol_id[:12]} ({data['runs']} results, {data['kept']} kept)")
        for col in ("node", "results", "kept", "best val_bpb", "improved"):
            t.add_column(col, no_wrap=True)
        for n in data["nodes"][:limit]:
            best = "-" if n["best"] is None else f"{n['best']:.6f}"
            t.add_row(n["peer"][:20], str(n["runs"]), str(n["kept"]), best, f"{len(n['best_over_time'])} time(s)")
        out.print(t)
        k = Table(title="what paid (changes named in kept results' descriptions)")
        for col in ("knob", "tried", "kept", "total gain"):
            k.add_column(col, no_wrap=True)
        for knob in data["knobs"][:limit]:
            k.add_row(escape(knob["knob"]), str(knob["tried"]), str(knob["kept"]), f"{knob['gain']:.6f}")
        out.print(k)
        if ideas["ideas"]:
            out.print(ideas_table(ideas, limit))
        steps = data["swarm_best_over_time"]
        if steps:
            first = steps[0][0]
            line = "  ".join(f"+{(at - first) / 60:.0f}m {v:.4f}" for at, v in steps[-8:])
            out.print(f"swarm best over time: {line}", markup=False, highlight=False)
        if tsv is not None:
            out.print(f"wrote {tsv} ({time.strftime('%H:%M:%S')})", markup=False, highlight=False)


def _gain(x: float | None) -> str:
    return "?" if x is None else f"{x:+.6f}"


def ideas_table(ideas: dict, limit: int) -> Table:
    """Ideas across hardware: each sibling protocol's change tried here, its gain there, its verdict here."""
    held = sum(1 for i in ideas["ideas"] if i["held"])
    t = Table(title=f"ideas across hardware ({len(ideas['ideas'])} tried here, {held} held): gains are "
                    "each protocol's own, never compared")
    for col in ("from protocol", "budget there", "gain there", "here", "gain here", "change"):
        t.add_column(col, no_wrap=col != "change")
    for i in ideas["ideas"][-limit:]:
        t.add_row(i["from_protocol"][:12], escape(i["from_budget"]), _gain(i["gain_there"]), i["status_here"],
                  _gain(i["gain_here"]), escape(i["description"][:70]))
    return t
