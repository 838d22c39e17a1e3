"""The client side of the control socket protocol (see `daemon.control`), blocking and dependency-free.

One JSON request line out, one JSON response line back. Shared by the CLI, the simulator and the
benchmarks; each wraps the errors in its own terms.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


def call(sock_path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> dict[str, Any] | None:
    """Send one request; return the decoded response (None if the daemon closed without answering).

    Connection problems raise OSError (ConnectionRefusedError, FileNotFoundError, socket.timeout).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock_path))
        s.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf) if buf else None
