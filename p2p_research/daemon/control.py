"""The control socket: a unix socket (0600) in the node home through which the CLI talks to the daemon.

One JSON request line in, one JSON response line out: {"cmd": "status", "args": {...}} ->
{"ok": true, "data": ...} or {"ok": false, "error": "one line"}. Only the home's owner can connect.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2p_research.errors import P2PResearchError

log = logging.getLogger("p2p_research.control")

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(P2PResearchError):
    """A request the daemon refuses, with the reason shown to the user."""


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ControlError("request too large")
    return buf.split(b"\n", 1)[0]


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(10):
                    line = await _read_line(stream)
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ControlError("malformed request")
                handler = self.handlers.get(req["cmd"])
                if handler is None:
                    raise ControlError(f"unknown command {req['cmd']!r}")
                args = req.get("args") or {}
                if not isinstance(args, dict):
                    raise ControlError("args must be an object")
                data = await handler(args)
                resp: dict[str, Any] = {"ok": True, "data": data}
            except (ControlError, ValueError, KeyError) as e:
                resp = {"ok": False, "error": str(e)}
            except trio.TooSlowError:
                return
            except Exception as e:  # noqa: BLE001 - one bad request must not take the daemon down
                log.exception("control request failed")
                resp = {"ok": False, "error": f"internal error: {e}"}
            try:
                await stream.send_all(json.dumps(resp, default=str).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # A stale socket from a killed daemon is replaced: the home lock proves no daemon owns it.
        self.path.unlink(missing_ok=True)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [listener])
        finally:
            self.path.unlink(missing_ok=True)
