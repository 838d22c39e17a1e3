"""A blocking client for the daemon's control socket (the CLI needs no trio and no libp2p for it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from p2p_research.cli.common import CliError


class NoDaemon(CliError):
    pass


def request(home: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
    path = home / "control.sock"
    hint = f"no node daemon is running for {home} (start one with: p2p-research node start --home {home})"
    if not path.exists():
        raise NoDaemon(hint)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NoDaemon(hint) from None
        s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise CliError(f"the node daemon for {home} did not answer within {timeout:.0f} s") from None
    finally:
        s.close()
    if not buf:
        raise CliError("the node daemon closed the connection without an answer")
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise CliError(resp.get("error", "the daemon refused the request"))
    return resp.get("data")
