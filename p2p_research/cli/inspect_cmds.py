"""Inspection commands (`id`, `status`, `peers`, `experiments`, `show`, `leaderboard`, `board`, `post`).

They ask the running daemon over its control socket. Without one, `id`, `status`, `peers` and `post`
say so and exit non-zero; the read-only history views fall back to the ledger and say so on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2p_research.cli.common import CliError, HomeOpt, JsonOpt, one_line_errors, print_json, resolve_home
from p2p_research.cli.control_client import NoDaemon, request
from p2p_research.home import NodeHome

out = Console()
err = Console(stderr=True)


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _with_fallback(home: Path, cmd: str, args: dict, fallback: Callable[[Any, Any], Any]) -> Any:
    """Ask the daemon; without one, compute the same view from the ledger (read-only)."""
    try:
        return request(home, cmd, args)
    except NoDaemon:
        from p2p_research.research.io.workspace import Workspace
        from p2p_research.store.ledger import Ledger

        h = NodeHome(home).require()
        err.print("(no daemon running: read from the ledger)")
        ledger = Ledger(h.ledger)
        try:
            return fallback(ledger, Workspace(h.repo))
        except ValueError as e:
            raise CliError(str(e)) from None
        finally:
            ledger.close()


def _offline_config(home: Path) -> dict[str, Any]:
    """`config` without a daemon: the same table from node.toml and the ledger (one worker's view)."""
    from p2p_research.cli.research_cmds import make_proposer
    from p2p_research.daemon.workers import worker_envs
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import ResearchEngine

    h = NodeHome(home).require()
    err.print("(no daemon running: computed from node.toml and the ledger)")
    ctx = open_context(h, h.load_config())
    try:
        return ResearchEngine(ctx, make_proposer(ctx)).effective_config(worker_envs(ctx.config))
    finally:
        ctx.ledger.close()


dht_app = typer.Typer(help="Look at the DHT of experiment records.", no_args_is_help=True)


@dht_app.command("get")
@one_line_errors
def dht_get(key: str = typer.Argument(..., help="/exp/<40-hex experiment id>"), home: Path | None = HomeOpt,
            json_out: bool = JsonOpt) -> None:
    """The decoded record the node finds for KEY, with its signature checked."""
    data = request(resolve_home(home), "dht_get", {"key": key}, timeout=30)
    if json_out:
        return print_json(data)
    if not data["found"]:
        out.print(f"{key}: {data['where']}")  # the DHT says "not found (asked N peers in T s)"
        raise typer.Exit(1)
    if not data.get("valid"):
        out.print(f"{key}: INVALID record ({data['error']}) from {data['where']}")
        raise typer.Exit(1)
    r = data["record"]
    out.print(f"{key}  [{data['where']}]  signature ok")
    out.print(f"state {r['state']}  status {r['status']}  by {r['peer']}")
    out.print(f"commit {r['commit']}  val_bpb {_fmt(r['value'])}")
    if r["state"] == "claim":
        out.print(f"lease ends in {r['lease_until'] - time.time():.0f} s")
    if r["receipt"]:
        rc = r["receipt"]
        out.print(f"receipt: protocol {rc['protocol_id'][:12]} parent {rc['parent'][:7]} seed {rc['seed']} "
                  f"hardware {rc['hardware']} software {rc['software']}")


def _protocol_cell(p: dict) -> str:
    """`same` or `other (20000 tokens)`: whether a peer's results count here; `relay` for a relay."""
    if p.get("role") == "relay":
        return "relay (any swarm)"
    if p.get("same_protocol") is None:
        return "?"
    return "same" if p["same_protocol"] else f"other ({escape(p.get('budget') or '?')})"  # the peer's words


def register(app: typer.Typer) -> None:
    app.add_typer(dht_app, name="dht")
    @app.command("id")
    @one_line_errors
    def id_(home: Path | None = HomeOpt, json_out: bool = JsonOpt) -> None:
        """Peer id, name and bootstrap addresses of the running node."""
        data = request(resolve_home(home), "id")
        if json_out:
            return print_json(data)
        out.print(f"peer id: {data['peer_id']}\nname:    {data['name']}")
        for a in data["addrs"]:
            out.print(f"address: {a}", soft_wrap=True)

    @app.command()
    @one_line_errors
    def status(home: Path | None = HomeOpt, json_out: bool = JsonOpt) -> None:
        """The node's state: swarm, baseline and lineage, current experiment, counts, peers, uptime."""
        d = request(resolve_home(home), "status")
        if json_out:
            return print_json(d)
        b = d["baseline"]
        out.print(f"[bold]{d['name']}[/] {d['peer_id']}")
        if d.get("role") == "relay":
            out.print(f"relay: serves every swarm its peers use  up {_ago(time.time() - d['uptime_s'])}")
        else:
            out.print(f"swarm {d['swarm']}  protocol {d['protocol_id'][:12]}  budget {d['budget']}  up {_ago(time.time() - d['uptime_s'])}")
            out.print(f"baseline {b['commit'][:7]} val_bpb {_fmt(b['val_bpb'])}  research: {d['research']}")
        if "sandbox" in d:
            out.print(f"sandbox  {d['sandbox']}  trust policy {d['trust_policy']}", markup=False, highlight=False)
            if d.get("peers_code"):
                out.print(f"peers' code  {d['peers_code']}", markup=False, highlight=False)
        r = d.get("reachability") or {}
        if r:
            line = f"reach    {r['status']}"
            if r.get("relayed"):
                line += f", relayed via {len(r['relayed_addrs'])} relay(s): {', '.join(r['relayed_addrs'])}"
            if r.get("upgraded"):
                line += f"; {r['upgraded']} relayed connection(s) upgraded to direct"
            if r.get("relay_service"):
                line += f"; relay service on ({r['reservations_held']} reservation(s) held)"
            out.print(line, markup=False, highlight=False)
        if len(d.get("workers") or []) > 1:
            for w in d["workers"]:
                dev = ", ".join(f"{k}={v}" for k, v in w["device"].items()) or "default device"
                out.print(f"worker {w['worker']} {w['phase']} {w['exp_id'][:10]} {w['description'][:50]} ({dev}; "
                          f"{w['experiments_done']} done, {w['kept']} kept)", markup=False, highlight=False)
        if d.get("protocol_note"):
            out.print(f"note     {d['protocol_note']}", markup=False, highlight=False)
        if d.get("siblings"):  # protocols of this genesis whose kept changes are tried here as ideas
            out.print("ideas    from " + ", ".join(f"{s['protocol'][:12]} ({s['budget']})" for s in d["siblings"]),
                      markup=False, highlight=False)
        c = d.get("current")
        if c:
            prog = f" {100 * c['progress']:.0f}%" if c.get("progress") is not None else ""
            out.print(f"current  {c['phase']} {c['exp_id'][:10]} {escape(c['description'][:60])}{prog}")
            if c.get("waiting_for"):
                out.print(f"waiting  for {c['waiting_for']}", markup=False, highlight=False)
        e = d["experiments"]
        out.print(f"experiments: {e['local']} local, {e['from_peers']} from peers; peers connected: {d['peers_connected']}")
        if d.get("role") == "relay" and d.get("swarms"):
            t = Table(title="swarms served")
            for col in ("swarm", "peers", "protocol", "budget", "results", "best val_bpb"):
                t.add_column(col, no_wrap=col in ("swarm", "protocol", "budget"), min_width=16 if col == "swarm" else None)
            for sw in d["swarms"]:
                for i, p in enumerate(sw["protocols"] or [{"protocol": "", "budget": "", "results": 0, "best": None}]):
                    first = i == 0
                    t.add_row(sw["swarm"] or "(no peer now)" if first else "", str(sw["peers"]) if first else "",
                              escape(p["protocol"][:12]), escape(p["budget"]), str(p["results"]), _fmt(p["best"]))
            out.print(t)
        if b["lineage"] and d.get("role") != "relay":
            t = Table(title="baseline lineage")
            for col in ("commit", "val_bpb", "found by", "why"):
                t.add_column(col)
            for step in b["lineage"]:
                t.add_row(step["commit"][:7], _fmt(step["val_bpb"]), step["found_by"][:16], escape(step["reason"][:60]))
            out.print(t)

    @app.command()
    @one_line_errors
    def peers(home: Path | None = HomeOpt, verbose: bool = typer.Option(False, "-v", "--verbose"),
              json_out: bool = JsonOpt) -> None:
        """Connected peers (-v: addresses, direction, latency, agent, what each announced)."""
        data = request(resolve_home(home), "peers")
        if json_out:
            return print_json(data)
        t = Table()
        cols = ["name", "peer id", "direction", "latency", "results", "protocol"] + (["addresses", "agent", "best"] if verbose else [])
        for col in cols:
            t.add_column(col)
        for p in data:
            direction = p["direction"] + (" (relayed)" if p.get("connection") == "relayed" else "")
            row = [p["name"], p["peer_id"] if verbose else p["peer_id"][:16], direction,
                   "-" if p["latency_ms"] is None else f"{p['latency_ms']:.1f} ms", str(p["announced"]["results"]),
                   _protocol_cell(p)]
            if verbose:
                row += [escape("\n".join(p["addrs"])), escape(p.get("agent_version") or "-"),
                        _fmt(p["announced"].get("best_val_bpb"))]
            t.add_row(*row)
        out.print(t)
        out.print(f"{len(data)} peer(s) connected")

    @app.command()
    @one_line_errors
    def experiments(
        home: Path | None = HomeOpt,
        status_: str | None = typer.Option(None, "--status", help="kept | discarded | crash | baseline | running | aborted"),
        peer: str | None = typer.Option(None, "--peer", help="Peer id (prefix), or 'local'"),
        origin: str | None = typer.Option(None, "--origin", help="local | peer"),
        limit: int | None = typer.Option(None, "--limit", min=1),
        json_out: bool = JsonOpt,
    ) -> None:
        """Experiments run here and received from peers."""
        from p2p_research.daemon.views import experiments_view

        args = {"status": status_, "peer": peer, "origin": origin, "limit": limit}
        data = _with_fallback(resolve_home(home), "experiments", args,
                              lambda led, ws: experiments_view(led, "", **args))
        if json_out:
            return print_json(data)
        t = Table()
        wide = out.width >= 100  # at 80 columns the commit (in `show`) gives its room to the description
        for col in ("id", "commit", "peer", "status", "val_bpb", "description") if wide else (
                "id", "peer", "status", "val_bpb", "description"):
            t.add_column(col, no_wrap=col != "description")
        for e in data:
            cells = [e["id"][:10], e["commit"][:7], ("local" if e["origin"] == "local" else e["peer"][:12]),
                     e["status"], _fmt(e["val_bpb"]), escape(e["description"][:60])]
            t.add_row(*(cells if wide else cells[:1] + cells[2:]))
        out.print(t)

    @app.command()
    @one_line_errors
    def show(exp: str = typer.Argument(..., help="Experiment id or commit (prefix)"), home: Path | None = HomeOpt,
             json_out: bool = JsonOpt) -> None:
        """One experiment: its diff, metrics and provenance."""
        from p2p_research.daemon.views import show_view

        data = _with_fallback(resolve_home(home), "show", {"exp": exp}, lambda led, ws: show_view(led, ws, exp))
        if json_out:
            return print_json(data)
        e = data["experiment"]
        out.print(f"experiment {e['id']}\ncommit     {e['commit']}\nparent     {e['parent']}\n"
                  f"proposed   by {escape(e['proposer'] or 'local')} ({e['origin']})\n{escape(e['description'])}")
        t = Table(title="runs")
        for col in ("kind", "peer", "status", "val_bpb", "train s", "received"):
            t.add_column(col)
        for r in data["runs"]:
            t.add_row(r["kind"], ("local" if r["origin"] == "local" else r["peer"][:12]), r["status"], _fmt(r["val_bpb"]),
                      _fmt(r["training_seconds"], 1), _ago(r["received_at"]) if r["received_at"] else "-")
        out.print(t)
        for r in data["runs"]:
            if r.get("log"):
                out.print(f"{r['kind']} log: {r['log']}" + (f"  agent: {r['agent_log']}" if r.get("agent_log") else "")
                          + f"  (p2p-research logs {e['id'][:10]} [-f])", markup=False, highlight=False)
        out.print(data["diff"] or "(no diff: objects not present locally)", markup=False, highlight=False)

    @app.command()
    @one_line_errors
    def logs(exp: str = typer.Argument(..., help="Experiment id or commit (prefix)"), home: Path | None = HomeOpt,
             follow: bool = typer.Option(False, "--follow", "-f", help="Follow the log while the run goes on"),
             agent: bool = typer.Option(False, "--agent", help="The output of the agent that wrote its code"),
             kind: str | None = typer.Option(None, "--kind", help="experiment | verification | baseline | noise "
                                             "[default: the newest local run]")) -> None:
        """A local run's log (train.py's output), or its agent's output; -f follows it live."""
        from p2p_research.store.ledger import Ledger

        h = NodeHome(resolve_home(home)).require()
        ledger = Ledger(h.ledger)
        try:
            found = {m["exp_id"] for m in ledger.find_experiments(exp)} if len(exp) >= 4 else set()
            if len(found) != 1:
                raise CliError(f"no experiment or commit starts with {exp!r}" if not found
                               else f"{exp!r} is ambiguous ({len(found)} experiments); give more characters")
            runs = [r for r in ledger.runs(exp_id=found.pop()) if r.origin == "local" and r.log_path
                    and (kind is None or r.kind == kind)]
            if not runs:
                raise CliError(f"no local run of {exp} has a log here (a peer's result has none on this node)")
            run = max(runs, key=lambda r: r.run_id or 0)
            path = Path(run.log_path).with_name("agent.log") if agent else Path(run.log_path)
            if not path.is_file():
                raise CliError(f"{path} is not there" + (" (its code did not come from an agent)" if agent else
                                                         " (the run's folder was cleaned up)"))
            pos = 0
            while True:
                with path.open("rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                if not follow:
                    return
                if ledger.run_status(run.run_id) != "running":
                    return
                time.sleep(0.5)
        finally:
            ledger.close()

    @app.command()
    @one_line_errors
    def leaderboard(home: Path | None = HomeOpt, limit: int = typer.Option(10, "--limit", min=1),
                    json_out: bool = JsonOpt) -> None:
        """Best results per protocol, with who found them."""
        from p2p_research.daemon.views import leaderboard_view

        data = _with_fallback(resolve_home(home), "leaderboard", {"limit": limit},
                              lambda led, ws: leaderboard_view(led, "", limit))
        if json_out:
            return print_json(data)
        for protocol, rows in data.items():
            t = Table(title=f"protocol {protocol[:12]}")
            for col in ("#", "val_bpb", "status", "id", "found by", "description"):
                t.add_column(col, no_wrap=col != "description")
            for r in rows:
                t.add_row(str(r["rank"]) if r.get("rank") else "-", _fmt(r["val_bpb"]), r.get("status", ""),
                          r["id"][:8], r["found_by"][:12], escape(r["description"][:60]))
            out.print(t)

    @app.command("config")
    @one_line_errors
    def config_cmd(home: Path | None = HomeOpt, json_out: bool = JsonOpt) -> None:
        """The configuration in force: what each automatic key of node.toml amounts to on this node
        (the margin, the run's time limit, workers and threads, verification), and where it came from."""
        h = resolve_home(home)
        try:
            data = request(h, "config")
        except NoDaemon:
            data = _offline_config(h)
        if json_out:
            return print_json(data)
        t = Table(title="configuration in force")
        for col in ("key", "set", "in force", "from"):
            t.add_column(col, no_wrap=col != "from")
        for key, row in data.items():
            t.add_row(key, escape(str(row["set"])), escape(str(row["effective"])), escape(str(row["from"])))
        out.print(t)

    @app.command()
    @one_line_errors
    def board(home: Path | None = HomeOpt, limit: int = typer.Option(50, "--limit", min=1), json_out: bool = JsonOpt) -> None:
        """The swarm's Markdown message board."""
        from p2p_research.daemon.views import board_view

        data = _with_fallback(resolve_home(home), "board", {"limit": limit}, lambda led, ws: board_view(led, limit))
        if json_out:
            return print_json(data)
        from rich.markdown import Markdown

        for p in data:
            out.rule(f"{p['name']} ({p['author'][:12]}) {_ago(p['ts'])} ago")
            out.print(Markdown(p["text"]))

    @app.command()
    @one_line_errors
    def post(text: str = typer.Argument(..., help="Markdown text ('-' reads standard input)"),
             home: Path | None = HomeOpt, json_out: bool = JsonOpt) -> None:
        """Post a Markdown note to the swarm's board."""
        import sys

        if text == "-":
            text = sys.stdin.read()
        data = request(resolve_home(home), "post", {"text": text})
        if json_out:
            return print_json(data)
        out.print("posted")

    @app.command()
    @one_line_errors
    def doctor(home: Path | None = HomeOpt, json_out: bool = JsonOpt) -> None:
        """Check this machine and node: reachability, bootstrap peers, sandbox, torch and GPUs, disk,
        clock skew against peers, protocol and budget; every problem with a one-line fix."""
        from p2p_research.doctor import run_checks

        path = resolve_home(home)
        status = None
        try:
            status = request(path, "status", timeout=5.0)
            status["addrs"] = request(path, "id", timeout=5.0).get("addrs", [])
        except NoDaemon:
            pass
        checks = run_checks(path, status)
        failed = any(c.status == "fail" for c in checks)
        if json_out:
            print_json({"ok": not failed, "daemon_running": status is not None, "checks": [c.as_dict() for c in checks]})
        else:
            marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
            # a grid, so a long detail wraps under itself (readable at 80 columns), not under the marks
            grid = Table.grid(padding=(0, 1))
            grid.add_column(no_wrap=True, min_width=4)
            grid.add_column(no_wrap=True, min_width=12)
            grid.add_column(overflow="fold")
            for c in checks:
                grid.add_row(marks[c.status], c.name, escape(c.detail))
                if c.hint:
                    grid.add_row("", "", f"fix: {escape(c.hint)}")
            out.print(grid)
            if status is None:
                out.print("(no daemon running: reachability and peers are checked when one is)")
        if failed:
            raise typer.Exit(1)
