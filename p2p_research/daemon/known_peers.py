"""Peers remembered across restarts (`peers.json` in the node's home), as kubo keeps its peerstore.

A node that restarts with a bootstrap list that is all an attacker's (or all gone) would otherwise meet
only whom that list leads to. So the peers it was connected to, that completed a peer exchange and said
they are of its swarm (net/peers.PeerManager.good_peers: at most two of one subnet), are written here
every minute and when it stops, and dialed again at the next start whatever the bootstrap list says.

The file is this node's own; one it cannot read is replaced, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from p2p_research.net.peers import REMEMBERED_MAX

log = logging.getLogger(__name__)

FILE = "peers.json"
SAVE_EVERY_S = 60.0


def load(path: Path) -> list[str]:
    """The remembered addresses (full multiaddrs); [] when there is no file or it cannot be read."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("could not read %s (%s): starting without remembered peers", path, e)
        return []
    peers = doc.get("peers") if isinstance(doc, dict) else None
    if not isinstance(peers, list):
        return []
    return [a for a in peers if isinstance(a, str) and len(a) <= 300][:REMEMBERED_MAX]


def merge(now: list[str], before: list[str], limit: int = REMEMBERED_MAX) -> list[str]:
    """The peers connected now first, then those remembered before that are not (by peer id), at most
    `limit`: a peer that was not seen for a while drifts out as new ones come."""
    out: list[str] = []
    seen: set[str] = set()
    for addr in [*now, *before]:
        peer = addr.rsplit("/p2p/", 1)[-1]
        if peer in seen:
            continue
        seen.add(peer)
        out.append(addr)
    return out[:limit]


def save(path: Path, peers: list[str]) -> None:
    """Write the list atomically (a crash mid-write leaves the old file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"peers": peers}, indent=1) + "\n")
    os.replace(tmp, path)


async def keep(path: Path, good_peers: Callable[[], list[str]], before: list[str]) -> None:
    """Write the good peers every SAVE_EVERY_S, and once more when cancelled (the node stops)."""
    remembered = list(before)

    def write() -> None:
        nonlocal remembered
        try:  # the boundary of this task: what peers said of themselves must not stop the node
            now = good_peers()
            if not now:
                return  # nobody connected (yet, or any more): keep what was remembered
            remembered = merge(now, remembered)
            save(path, remembered)
        except Exception as e:  # noqa: BLE001 - the file is a convenience: say so and go on
            log.warning("could not write %s: %r", path, e)

    try:
        while True:
            await trio.sleep(SAVE_EVERY_S)
            write()
    finally:
        write()
