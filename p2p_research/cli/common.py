"""Shared CLI plumbing: one-line errors with a non-zero exit, JSON output, the --home option."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from p2p_research.errors import P2PResearchError
from p2p_research.home import default_home

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = typer.Option(None, "--home", help="Node home folder [default: $P2P_RESEARCH_HOME or ~/.p2p-research]")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON")


def resolve_home(home: Path | None) -> Path:
    return (home or default_home()).expanduser()


class CliError(P2PResearchError):
    """An error to show as one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except P2PResearchError as e:  # the project's own refusals (p2p_research/errors.py); a bug keeps its traceback
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(getattr(e, "code", 1)) from None
    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def setup_logging(verbose: bool, logfile: Path | None = None, stderr_level: int = logging.WARNING) -> None:
    """Project logs to stderr (warnings, unless verbose) and in full to a file in the home."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.DEBUG if verbose else stderr_level)
    handlers: list[logging.Handler] = [stderr]
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile)
        fh.setLevel(logging.DEBUG if verbose else logging.INFO)
        handlers.append(fh)
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger("p2p_research")
    root.handlers.clear()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
