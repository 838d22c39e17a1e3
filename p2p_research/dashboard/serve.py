"""Serving the dashboard on the daemon's own trio loop (hypercorn's trio worker; no second event loop).

The listening socket is bound here, before hypercorn starts, so the node knows its URL at once (and
can fall back from the default port to a free one when several nodes share a machine); hypercorn is
handed the socket as ``fd://``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("p2p_research.dashboard")

DEFAULT_ADDR = "127.0.0.1:8642"


@dataclass
class Bound:
    sock: socket.socket
    host: str
    port: int
    token: str | None  # None: loopback only, no token needed to post

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def parse_addr(addr: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, or `PORT`); ValueError with a clear message."""
    text = addr.strip() or DEFAULT_ADDR
    host, _, port = text.rpartition(":")
    host = (host or "127.0.0.1").strip("[]")
    try:
        ipaddress.ip_address(host)
        n = int(port)
        if not 0 <= n <= 65535:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid dashboard address {addr!r}: expected HOST:PORT, e.g. {DEFAULT_ADDR}") from None
    return host, n


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def bind(addr: str, token_file: Path, *, fall_back: bool = True) -> Bound:
    """Bind the dashboard's socket. A busy default port falls back to a free one (logged); a token is
    made (and kept in `token_file`, 0600) when the address is not loopback."""
    host, port = parse_addr(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not fall_back or port == 0:
                raise
            log.warning("dashboard port %d is in use; using a free one", port)
            sock.bind((host, 0))
    except OSError as e:  # e.g. an address this machine does not have, or a port asked for that is in use
        sock.close()
        why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise ValueError(f"dashboard address {host}:{port} unavailable: {why}") from None
    sock.listen(128)
    sock.setblocking(False)
    token = None
    if not is_loopback(host):
        if token_file.exists():
            token = token_file.read_text().strip() or None
        if token is None:
            token = secrets.token_urlsafe(24)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        token_file.chmod(0o600)
    return Bound(sock, host, sock.getsockname()[1], token)


async def serve(app: Any, bound: Bound, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run hypercorn's trio worker on the bound socket until cancelled."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    # hypercorn closes the descriptor it is handed: give it a duplicate, so ours is closed exactly once
    config.bind = [f"fd://{os.dup(bound.sock.fileno())}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2p_research.dashboard.http")
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    task_status.started()
    try:
        await hypercorn_serve(app, config, mode="asgi")
    finally:
        bound.sock.close()
