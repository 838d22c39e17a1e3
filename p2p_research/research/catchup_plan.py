"""Whom a node asks for the results it missed, and from when: catch-up and anti-entropy (pure, no I/O).

A node that starts catches up in full from its first few peers (a refused or failed catch-up is tried
again, at most `CATCHUP_TRIES` times per peer) for up to `FIRST_WINDOW_S`. After that, every interval
it syncs with one connected peer: first those it never asked, then the one it asked longest ago, so
that repairs cover every neighbour rather than whichever a coin picks twice. A sync asks for what
finished since the last successful one, minus a margin for gossip that is still under way.
`daemon/catchup.py` performs what this decides.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

CATCHUP_TRIES = 2          # attempts per peer before the first catch-up looks elsewhere
FIRST_WINDOW_S = 60.0      # how long the first catch-ups may take in all
SYNC_MARGIN_S = 180.0      # a result can reach a peer this late (gossip latency under load: p99 ~2 min)


@dataclass
class CatchUpPlan:
    started: float
    max_peers: int = 3
    rng: random.Random = field(default_factory=random.Random)
    completed: int = 0                                        # full catch-ups that ran to the end
    tries: dict[str, int] = field(default_factory=dict)
    done_with: set[str] = field(default_factory=set)
    last_sync: float | None = None                            # start of the last successful sync
    asked_at: dict[str, float] = field(default_factory=dict)  # when each peer was last asked to sync

    # --- the first catch-ups ------------------------------------------------------------------------
    def catching_up(self, now: float) -> bool:
        return self.completed < self.max_peers and now - self.started < FIRST_WINDOW_S

    def catchup_peers(self, connected: Sequence[str]) -> list[str]:
        """The connected peers to catch up from now, in the order they connected."""
        left = self.max_peers - self.completed
        return [p for p in connected if p not in self.done_with][:max(0, left)]

    def on_catchup(self, peer: str, completed: bool) -> None:
        self.tries[peer] = self.tries.get(peer, 0) + 1
        if completed:
            self.completed += 1
        if completed or self.tries[peer] >= CATCHUP_TRIES:
            self.done_with.add(peer)

    # --- anti-entropy -------------------------------------------------------------------------------
    def next_sync(self, connected: Sequence[str]) -> tuple[str, float] | None:
        """(peer, since) for the next sync, or None when no peer is connected."""
        if not connected:
            return None
        oldest = min(self.asked_at.get(p, float("-inf")) for p in connected)
        due = sorted(p for p in connected if self.asked_at.get(p, float("-inf")) == oldest)
        since = (self.last_sync if self.last_sync is not None else self.started) - SYNC_MARGIN_S
        return self.rng.choice(due), since

    def on_sync(self, peer: str, started_at: float, ok: bool) -> None:
        self.asked_at[peer] = started_at
        if ok:
            self.last_sync = started_at
        if len(self.asked_at) > 4096:  # peers come and go: forget the longest-asked half
            for p in sorted(self.asked_at, key=self.asked_at.__getitem__)[:2048]:
                del self.asked_at[p]
