"""Fault boundaries: whatever a peer's input makes our code raise ends at the boundary of that input.

A node on an open network handles bytes from strangers in many places (gossip messages, stream
protocols, DHT requests, git objects, catch-up entries). A bug of ours that one such input triggers
must cost that input, never the node: every task that handles a peer's input runs inside
:func:`contained` (directly, or through :class:`PeerTasks`, a nursery whose tasks are all contained,
or :class:`p2p_research.net.streams.StreamGuard` for stream handlers). The offence is logged once per
(peer, place) and interval, with the peer id, and counted in :class:`Faults` so that ``status`` shows
it. Cancellation is never caught: trio's ``Cancelled`` is a BaseException and passes through.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .ratelimit import RateLimitedLog

log = logging.getLogger("p2p_research.faults")


class Faults:
    """Offences contained at a boundary: counted by place, logged rate-limited with the peer."""

    def __init__(self, counter: Counter[str] | None = None, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = counter if counter is not None else Counter()
        self.by_peer: Counter[str] = Counter()
        self._rlog = RateLimitedLog(logger, interval=10.0)
        #: callbacks(peer, place) run on every recorded fault (peer scoring hooks in here)
        self.listeners: list[Callable[[str, str], None]] = []

    def record(self, peer: str, where: str, exc: BaseException) -> None:
        self.counts[where] += 1
        self.by_peer[peer] += 1
        if len(self.by_peer) > 10_000:
            self.by_peer = Counter(dict(self.by_peer.most_common(1000)))
        self._rlog.log(logging.WARNING, f"{where}:{peer}", "contained a fault in %s from %s: %s: %s", where,
                       peer[:20] or "?", type(exc).__name__, str(exc)[:160])
        for cb in self.listeners:
            try:
                cb(peer, where)
            except Exception:  # noqa: BLE001 - a listener must not turn a contained fault into a crash
                log.exception("fault listener failed")


async def contained(faults: Faults, peer: str, where: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``fn(*args)``; an Exception (also an ExceptionGroup of them) is recorded and ends here."""
    try:
        await fn(*args)
    except Exception as e:  # noqa: BLE001 - this is the boundary: the peer's input fails, the node goes on
        faults.record(peer, where, e)


class PeerTasks:
    """A nursery for tasks that handle peer input: each one runs inside :func:`contained`.

    Tasks started here can never take the nursery (and the daemon above it) down; cancelling the
    nursery still cancels them.
    """

    def __init__(self, nursery: trio.Nursery, faults: Faults) -> None:
        self.nursery = nursery
        self.faults = faults

    def start_soon(self, peer: str, where: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.nursery.start_soon(contained, self.faults, peer, where, fn, *args, name=f"{where} {peer[:12]}")
