"""A stable listen address: a node keeps its port across restarts, so a printed bootstrap address
stays valid (kubo keeps 4001; a node here keeps whatever free port its first start got).

`/tcp/0` in the configuration means "a port of the node's own": the first start takes a free one
from the system and remembers it in `<home>/listen.json`; later starts ask for the same port, and only
if something else holds it now take a new one (with a warning that the address changed). An explicit
port is used as given.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import socket
from pathlib import Path

log = logging.getLogger("p2p_research.daemon")

TCP_ZERO = re.compile(r"^(/ip[46]/([^/]+))/tcp/0(/.*)?$")
TCP_PORT = re.compile(r"^/ip[46]/([^/]+)/tcp/([0-9]+)(/.*)?$")


def check_listen(addrs: list[str]) -> None:
    """ValueError, in one line, for an explicit TCP port this node cannot listen on. libp2p only logs
    an ERROR and goes on, so a node would print "listening on" with nothing after it and train where
    no peer can reach it."""
    for a in addrs:
        m = TCP_PORT.match(a)
        if m is None or m.group(2) == "0":
            continue
        family = socket.AF_INET6 if a.startswith("/ip6/") else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((m.group(1), int(m.group(2))))
            except OSError as e:
                why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise ValueError(f"cannot listen on {a}: {why} (choose another --listen, or /tcp/0 for a "
                                 "port of the node's own)") from None


def _free(host: str, port: int, family: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _pick(host: str, family: int) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def load(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
        return {k: int(v) for k, v in data.items() if isinstance(v, int) and 0 < v < 65536}
    except (OSError, ValueError, AttributeError):
        return {}


def stable_listen(addrs: list[str], state: Path) -> list[str]:
    """`addrs` with each `/tcp/0` replaced by the port this node remembers for it (or a new free one,
    remembered at once)."""
    check_listen(addrs)
    remembered = load(state)
    out: list[str] = []
    for a in addrs:
        m = TCP_ZERO.match(a)
        if m is None:
            out.append(a)
            continue
        prefix, host, rest = m.group(1), m.group(2), m.group(3) or ""
        family = socket.AF_INET6 if a.startswith("/ip6/") else socket.AF_INET
        port = remembered.get(a)
        if port is not None and not _free(host, port, family):
            log.warning("listen port %d (remembered for %s) is taken; using another: the node's bootstrap "
                        "address changes", port, a)
            port = None
        if port is None:
            port = _pick(host, family)
            remembered[a] = port
        out.append(f"{prefix}/tcp/{port}{rest}")
    try:
        state.write_text(json.dumps(remembered, indent=1) + "\n")
    except OSError as e:
        log.warning("could not remember the listen port in %s: %s", state, e)
    return out
