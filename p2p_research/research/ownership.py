"""Who does what without talking: a consistent-hash ring of the peers a node has heard from (pure).

Two decisions assign work by hashing, and every node must reach the same answer from (nearly) the
same peer set: the *owner* of a candidate experiment (the one node that proposes it, so nodes on one
baseline propose disjoint experiments before their claims even arrive) and the *replicas* that re-run a
kept result at once (BOINC's replicas). Both take the peers met clockwise from sha256(key) on a ring
of sha256(peer).

A ring, not highest-random-weight ranking over every peer: the answer costs O(log N) with the peers
kept sorted, where ranking cost one sha256 per peer per question. A proposal asks about up to 60
candidates, so at 10,000 peers ranking cost ~600,000 hashes (about half a second of CPU) per
proposal (docs/scale.md); the ring costs a bisection.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

RING = 2**64
OWNER_MEMORY_S = 600.0  # a peer silent this long no longer owns a share of the candidates
MAX_HEARD = 10_000      # peers remembered (keys are free: memory must not follow them)


def point(name: str) -> int:
    """A name's place on the ring: the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def assignment_order(key: str, peers: Iterable[str]) -> list[str]:
    """`peers` in the order the ring assigns `key` to them: clockwise from the key's point (the
    reference the incremental `HashRing` must agree with; fine for small pools)."""
    k = point(key)
    return sorted(set(peers), key=lambda p: ((point(p) - k) % RING, p))


class HashRing:
    """Peers sorted by their ring point; add, remove and walk in O(log N)."""

    def __init__(self, peers: Iterable[str] = ()) -> None:
        self._points: list[tuple[int, str]] = sorted({(point(p), p) for p in peers})
        self._members = {p for _, p in self._points}

    def __len__(self) -> int:
        return len(self._points)

    def __contains__(self, peer: object) -> bool:
        return peer in self._members

    def add(self, peer: str) -> None:
        if peer not in self._members:
            self._members.add(peer)
            bisect.insort(self._points, (point(peer), peer))

    def remove(self, peer: str) -> None:
        if peer in self._members:
            self._members.discard(peer)
            entry = (point(peer), peer)
            i = bisect.bisect_left(self._points, entry)
            if i < len(self._points) and self._points[i] == entry:
                del self._points[i]

    def walk(self, key: str) -> Iterator[str]:
        """Every peer once, clockwise from `key`'s point."""
        n = len(self._points)
        if not n:
            return
        start = bisect.bisect_left(self._points, (point(key), ""))
        for i in range(n):
            yield self._points[(start + i) % n][1]

    def first(self, key: str, count: int, accept: Callable[[str], bool] = lambda p: True) -> list[str]:
        """The first `count` accepted peers clockwise from `key`."""
        pts = self._points
        if count == 1 and pts:  # the common question, without a generator
            start = bisect.bisect_left(pts, (point(key), ""))
            for i in range(len(pts)):
                p = pts[(start + i) % len(pts)][1]
                if accept(p):
                    return [p]
            return []
        out: list[str] = []
        for p in self.walk(key):
            if accept(p):
                out.append(p)
                if len(out) >= count:
                    break
        return out


class Ownership:
    """The owners of candidate experiments among the peers heard within `memory_s`, and this node.

    The driver notes each peer it hears from (`note`) with its own clock; `owns` answers for a time
    `now`. A peer silent for `memory_s` leaves the ring (its share passes to its successor); `memory_s`
    may be a function of how many peers are remembered (research/flooding.py: members of a very large
    sparse swarm announce themselves less often)."""

    def __init__(self, self_peer: str, memory_s: float | Callable[[int], float] = OWNER_MEMORY_S,
                 max_peers: int = MAX_HEARD) -> None:
        self.self_peer = self_peer
        self.memory_s = memory_s
        self.max_peers = max_peers
        self.heard: OrderedDict[str, float] = OrderedDict()  # peer -> last heard, least recent first
        self.ring = HashRing([self_peer])

    def note(self, peer: str, now: float) -> None:
        if peer == self.self_peer:
            return
        self.heard[peer] = now
        self.heard.move_to_end(peer)
        self.ring.add(peer)
        while len(self.heard) > self.max_peers:
            old, _ = self.heard.popitem(last=False)
            self.ring.remove(old)

    def expire(self, now: float) -> None:
        memory = self.memory_s(len(self.heard)) if callable(self.memory_s) else self.memory_s
        while self.heard:
            peer, t = next(iter(self.heard.items()))
            if now - t < memory:
                break
            del self.heard[peer]
            self.ring.remove(peer)

    def owner(self, exp_id: str, now: float, ignored: Callable[[str], bool] = lambda p: False) -> str:
        self.expire(now)
        found = self.ring.first(exp_id, 1, lambda p: p == self.self_peer or not ignored(p))
        return found[0] if found else self.self_peer

    def owns(self, exp_id: str, now: float, ignored: Callable[[str], bool] = lambda p: False) -> bool:
        """Whether this node is the owner of `exp_id` among the peers heard recently."""
        return self.owner(exp_id, now, ignored) == self.self_peer
