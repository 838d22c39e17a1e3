"""Following sibling protocols: the same genesis under another budget or hardware class.

`research/siblings.SiblingBook` decides, from what connected peers announce, which siblings this
research node follows; here that is performed: their experiments topic is joined (never their board),
the peer that announced one is asked for the sibling's kept results so far (its ideas from before
this node listened), then again every RESYNC_S for what finished since (gossip drops messages under
load: this is the siblings' anti-entropy), and a sibling no peer announces any more is left. Intake then stores their kept
results (daemon/intake.py) and the builtin proposer tries them here as ideas (research/io/ideas.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2p_research.net.boundary import PeerTasks
from p2p_research.net.ratelimit import RateLimitedLog
from p2p_research.research.siblings import SiblingBook, sibling_of

log = logging.getLogger("p2p_research.siblings")

FOLLOW_S = 2.0           # how often the peers' announcements are looked at
MAX_CAUGHT_UP = 1024     # (peer, protocol) pairs already asked, remembered (oldest forgotten first)
MAX_CATCHUPS = 2         # sibling catch-ups in flight at once (one per peer)
RESYNC_S = 600.0         # a peer is asked again for a sibling's kept results this long after the last time
RESYNC_MARGIN_S = 180.0  # ... for those that finished since then, less this (gossip's latency, clocks)


@dataclass
class SiblingFollower:
    """Joins and leaves sibling swarms as `book` decides; asks each announcing peer for their past, and
    again every RESYNC_S for what is new.

    `abouts` gives (peer id, about) of every connected peer, in the order they connected; `join` and
    `leave` subscribe and unsubscribe a swarm's experiments topic; `catch_up(peer, protocol, since)`
    fetches a sibling's kept results from a peer (all of them: since None)."""

    book: SiblingBook
    abouts: Callable[[], list[tuple[str, dict[str, str] | None]]]
    join: Callable[[str], Awaitable[Any]]
    leave: Callable[[str], Awaitable[Any]]
    catch_up: Callable[[str, str, float | None], Awaitable[int]]
    clock: Callable[[], float] = time.time
    _asked: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)  # -> when last asked
    _in_flight: set[str] = field(default_factory=set)  # peers a sibling catch-up is asking now

    def __post_init__(self) -> None:
        self._rlog = RateLimitedLog(log, interval=60.0)

    async def run(self, tasks: PeerTasks) -> None:
        while True:
            try:
                await self.step(tasks)
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - libp2p's subscribe/unsubscribe; research goes on
                self._rlog.log(logging.WARNING, "follow", "following sibling protocols failed: %s: %s",
                               type(e).__name__, e)
            await trio.sleep(FOLLOW_S)

    async def step(self, tasks: PeerTasks) -> None:
        """One look at the peers: leave siblings no peer announces, join new ones, catch up from new
        announcers (one at a time per peer, MAX_CATCHUPS in all; the others on a later look)."""
        peers = self.abouts()
        changes = self.book.observe((about for _, about in peers), time.time())
        for s in changes.left:
            await self.leave(s.swarm)
            for key in [k for k in self._asked if k[1] == s.protocol]:  # a return catches up on what it missed
                del self._asked[key]
            log.info("no longer following sibling protocol %s (budget %s): no connected peer announces it",
                     s.protocol[:12], s.budget)
        for s in changes.joined:
            await self.join(s.swarm)
            log.info("following sibling protocol %s (budget %s, swarm %s): its kept changes are tried here as ideas, "
                     "its numbers never count here", s.protocol[:12], s.budget, s.swarm)
        now = self.clock()
        for peer, about in peers:
            s = sibling_of(about, self.book.genesis, self.book.protocol)
            if s is None or s.protocol not in self.book or peer in self._in_flight or len(self._in_flight) >= MAX_CATCHUPS:
                continue
            key = (peer, s.protocol)
            last = self._asked.get(key)
            if last is not None and now - last < RESYNC_S:
                continue
            self._asked.pop(key, None)
            self._asked[key] = now  # the newest last: the oldest is forgotten first
            while len(self._asked) > MAX_CAUGHT_UP:
                self._asked.popitem(last=False)
            self._in_flight.add(peer)
            since = None if last is None else last - RESYNC_MARGIN_S
            tasks.start_soon(peer, "siblings.catchup", self._catch_up, peer, s.protocol, since)

    async def _catch_up(self, peer: str, protocol: str, since: float | None) -> None:
        try:
            await self.catch_up(peer, protocol, since)
        finally:
            self._in_flight.discard(peer)
