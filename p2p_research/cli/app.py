"""The typer application: every command group registers itself here."""

from __future__ import annotations

import typer

from p2p_research import __version__
from p2p_research.cli import get_cmd, inspect_cmds, research_cmds, sim_cmds, swarm_cmd
from p2p_research.cli.node_cmds import node_app

app = typer.Typer(name="p2p-research", help="Autonomous ML research on a peer-to-peer swarm.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"p2p-research {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit")) -> None:
    """Autonomous ML research on a peer-to-peer swarm."""


research_cmds.register(app)
app.add_typer(node_app, name="node")
inspect_cmds.register(app)
get_cmd.register(app)
swarm_cmd.register(app)
sim_cmds.register(app)
