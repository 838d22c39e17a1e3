"""`node start`: the daemon in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from p2p_research.cli.common import CliError, HomeOpt, one_line_errors, resolve_home
from p2p_research.cli.research_cmds import apply_loop_overrides, make_proposer
from p2p_research.home import NodeHome

node_app = typer.Typer(help="Run a node daemon.", no_args_is_help=True)
console = Console(stderr=True)


@node_app.command("start")
@one_line_errors
def start(
    home: Path | None = HomeOpt,
    listen: list[str] = typer.Option([], "--listen", help="Multiaddr to listen on (repeatable) [default: node.toml]"),
    bootstrap: list[str] = typer.Option([], "--bootstrap", help="Bootstrap address /ip4/.../tcp/.../p2p/<id> (repeatable)"),
    no_research: bool = typer.Option(False, "--no-research", help="Relay only: gossip and serve objects, train nothing"),
    experiments: int | None = typer.Option(None, "--experiments", "-n", min=0, help="Stop proposing after N experiments "
                                           "and follow the swarm (0: only measure the genesis, verify and adopt)"),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Training budget in tokens (part of "
                                             "the protocol: only nodes with the same budget share results)"),
    budget_seconds: float | None = typer.Option(None, "--budget-seconds", help="Training budget in wall-clock "
                                                "seconds (part of the protocol, with the hardware class)"),
    proposer: str | None = typer.Option(None, "--proposer", help="builtin | command"),
    proposer_command: str | None = typer.Option(None, "--proposer-command", help="Agent command for --proposer "
                                                "command (docs/autoresearch.md)"),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the training runs and the builtin proposer"),
    margin: float | None = typer.Option(None, "--margin", help="Keep a result only if it beats the baseline by "
                                        "more than this (0: any improvement, autoresearch's rule) [default: "
                                        "2 sigma of the measured noise, else 0.002]"),
    progress_every: float = typer.Option(60.0, "--progress-every", metavar="SECONDS", min=0,
                                         help="A one-line progress log every SECONDS while a run goes on; on a "
                                         "terminal, a live line updated in place instead (0: off)"),
    dashboard: bool = typer.Option(False, "--dashboard", help="Serve the web dashboard and /metrics "
                                   "(network.dashboard, else 127.0.0.1:8642 or a free port)"),
    dashboard_addr: str | None = typer.Option(None, "--dashboard-addr", metavar="HOST:PORT",
                                              help="Serve the dashboard here (implies --dashboard; beyond "
                                              "loopback, posting needs the token in <home>/dashboard.token)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr"),
) -> None:
    """Run a node daemon in the foreground: libp2p host, gossip, the research loop, a control socket."""
    import trio

    from p2p_research.cli.live_line import run_daemon, wants_live
    from p2p_research.daemon.node import DaemonOptions, NodeDaemon
    from p2p_research.net.identity import IdentityError
    from p2p_research.net.logsetup import configure_logging

    h = NodeHome(resolve_home(home)).require()
    cfg = apply_loop_overrides(h.load_config(), budget_tokens, budget_seconds, proposer, proposer_command, seed, margin)
    h.logs.mkdir(exist_ok=True)
    live = console if wants_live(progress_every) else None  # logs and the live line share one console
    configure_logging("DEBUG" if verbose else "INFO", str(h.logs / "node.log"), console=live)
    from p2p_research.dashboard.serve import DEFAULT_ADDR

    board_addr = dashboard_addr or (cfg.network.dashboard or DEFAULT_ADDR if dashboard else cfg.network.dashboard)
    daemon = NodeDaemon(h, cfg, DaemonOptions(list(listen), list(bootstrap), not no_research, experiments,
                                              dashboard=board_addr or None,
                                              dashboard_fall_back=dashboard_addr is None,
                                              progress_every_s=progress_every or None), make_proposer)

    def ready(info: dict) -> None:
        print(f"peer id: {info['peer_id']} ({info['name']})")
        for a in info["addrs"]:
            print(f"address: {a}")
        print(f"sandbox: {info['sandbox']} (trust policy {info['trust_policy']}; peers' code: {info['peers_code']})")
        if info.get("dashboard"):
            print(f"dashboard: {info['dashboard']}" + (" (posting needs the token in "
                  f"{h.path / 'dashboard.token'})" if info.get("dashboard_token") else ""))
        print(f"control: {h.control_socket}", flush=True)

    try:
        trio.run(run_daemon, daemon, ready, live)
    except (ValueError, IdentityError) as e:
        raise CliError(str(e), 2) from None
