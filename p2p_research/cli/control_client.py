"""A blocking client for the daemon's control socket (the CLI needs no trio and no libp2p for it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p_research.cli.common import CliError
from p2p_research.daemon.control_call import call


class NoDaemon(CliError):
    pass


def request(home: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
    path = home / "control.sock"
    hint = f"no node daemon is running for {home} (start one with: p2p-research node start --home {home})"
    if not path.exists():
        raise NoDaemon(hint)
    try:
        resp = call(path, cmd, args, timeout)
    except (ConnectionRefusedError, FileNotFoundError):
        raise NoDaemon(hint) from None
    except TimeoutError:
        raise CliError(f"the node daemon for {home} did not answer within {timeout:.0f} s") from None
    if resp is None:
        raise CliError("the node daemon closed the connection without an answer")
    if not resp.get("ok"):
        raise CliError(resp.get("error", "the daemon refused the request"))
    return resp.get("data")
