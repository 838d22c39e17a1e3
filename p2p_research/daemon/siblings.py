"""Following sibling protocols: the same genesis under another budget or hardware class.

`research/siblings.SiblingBook` decides, from what connected peers announce, which siblings this
research node follows; here that is performed: their experiments topic is joined (never their board),
the peer that announced one is asked once for the sibling's kept results so far (its ideas from before
this node listened), and a sibling no peer announces any more is left. Intake then stores their kept
results (daemon/intake.py) and the builtin proposer tries them here as ideas (research/ideas.py).
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


@dataclass
class SiblingFollower:
    """Joins and leaves sibling swarms as `book` decides; asks each announcing peer once for their past.

    `abouts` gives (peer id, about) of every connected peer, in the order they connected; `join` and
    `leave` subscribe and unsubscribe a swarm's experiments topic; `catch_up(peer, protocol)` fetches
    a sibling's kept results from a peer."""

    book: SiblingBook
    abouts: Callable[[], list[tuple[str, dict[str, str] | None]]]
    join: Callable[[str], Awaitable[Any]]
    leave: Callable[[str], Awaitable[Any]]
    catch_up: Callable[[str, str], Awaitable[int]]
    _asked: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
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
        for peer, about in peers:
            s = sibling_of(about, self.book.genesis, self.book.protocol)
            if (s is None or s.protocol not in self.book or (peer, s.protocol) in self._asked
                    or peer in self._in_flight or len(self._in_flight) >= MAX_CATCHUPS):
                continue
            self._asked[(peer, s.protocol)] = None
            while len(self._asked) > MAX_CAUGHT_UP:
                self._asked.popitem(last=False)
            self._in_flight.add(peer)
            tasks.start_soon(peer, "siblings.catchup", self._catch_up, peer, s.protocol)

    async def _catch_up(self, peer: str, protocol: str) -> None:
        try:
            await self.catch_up(peer, protocol)
        finally:
            self._in_flight.discard(peer)
