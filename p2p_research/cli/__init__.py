"""The `p2p-research` command line. Imports stay light: torch and libp2p load only where needed."""

from p2p_research.cli.app import app


def main() -> None:
    app()
