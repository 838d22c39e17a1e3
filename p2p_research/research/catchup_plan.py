"""Whom a node asks for the results it missed, and from when: catch-up and anti-entropy (pure, no I/O).

A node that starts catches up in full from its first few peers (a refused or failed catch-up is tried
again, at most `CATCHUP_TRIES` times per peer) for up to `FIRST_WINDOW_S`. After that, every interval
it syncs with one connected peer: the one whose turn is oldest (asked longest ago, or first seen
longest ago if never asked), so that repairs cover every neighbour rather than whichever a coin picks
twice, and a peer that keeps connecting under fresh identities always waits behind the neighbours it
found. A sync asks for what finished since the last successful one, minus a margin for gossip that is
still under way.
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
    # per peer: (when it was last asked, or first seen; 1 if asked): at one time, the never-asked go first
    turn_at: dict[str, tuple[float, int]] = field(default_factory=dict)

    # --- the first catch-ups ------------------------------------------------------------------------
    def catching_up(self, now: float) -> bool:
        return self.completed < self.max_peers and now - self.started < FIRST_WINDOW_S

    def catchup_peers(self, connected: Sequence[str]) -> list[str]:
        """The connected peers to catch up from, in the order they connected (the caller stops once
        `catching_up` is false: `max_peers` ran to the end, or the window closed)."""
        return [p for p in connected if p not in self.done_with]

    def on_catchup(self, peer: str, completed: bool) -> None:
        self.tries[peer] = self.tries.get(peer, 0) + 1
        if completed:
            self.completed += 1
        if completed or self.tries[peer] >= CATCHUP_TRIES:
            self.done_with.add(peer)

    # --- anti-entropy -------------------------------------------------------------------------------
    def next_sync(self, connected: Sequence[str], now: float) -> tuple[str, float] | None:
        """(peer, since) for the next sync, or None when no peer is connected."""
        if not connected:
            return None
        for p in connected:
            self.turn_at.setdefault(p, (now, 0))
        oldest = min(self.turn_at[p] for p in connected)
        due = sorted(p for p in connected if self.turn_at[p] == oldest)
        since = (self.last_sync if self.last_sync is not None else self.started) - SYNC_MARGIN_S
        return self.rng.choice(due), since

    def on_sync(self, peer: str, started_at: float, ok: bool) -> None:
        self.turn_at[peer] = (started_at, 1)
        if ok:
            self.last_sync = started_at
        if len(self.turn_at) > 4096:  # peers come and go: forget the longest-waiting half
            for p in sorted(self.turn_at, key=self.turn_at.__getitem__)[:2048]:
                del self.turn_at[p]
