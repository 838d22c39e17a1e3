"""Sibling protocols: the same genesis, another protocol (budget, hardware class or data) (pure).

Under a wall-clock budget every GPU model is its own protocol, so numbers cannot cross: what an H100
reaches in 300 s says nothing about an RTX 4090's 300 s. Ideas can: a change that held there is a
candidate here. A research node learns its siblings from what connected peers announce in the peer
exchange (`about`: protocol and swarm), listens to their experiments topic, and keeps their kept
results as ideas (research/io/ideas.py) that it measures and judges under its own protocol.

What a peer says decides only what it cannot bend:
- a sibling is admitted only when the swarm the peer names is the one this node computes from its own
  genesis and the named protocol. The genesis is public, so this proves no knowledge; it keeps out
  every honest peer of another target (its swarm hashes another genesis) and any announcement that
  does not describe a topic this node would compute itself;
- at most `MAX_SIBLINGS` at once, first come (a node subscribes to one topic per sibling);
- a sibling is followed only while a connected peer announces it. A peer announces one protocol at a
  time, so one connection holds at most one place: made-up siblings cost an attacker a connection
  each, and their places go to the next sibling as soon as it leaves or announces another.

Free of I/O and clock-injected: the daemon performs what this decides (daemon/siblings.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from p2p_research.research.ids import is_hex40, swarm_id_of

MAX_SIBLINGS = 4   # sibling protocols followed at once (a subscription, a mesh and a drain task each)
#: what a node keeps of a sibling protocol: its kept changes (ideas to try here) and the baseline
#: measurements they were judged against (their gain there); anything else is refused
SIBLING_STATUSES = frozenset({"kept", "baseline"})


@dataclass(frozen=True)
class Sibling:
    """A protocol of this node's genesis other than its own, as a peer announced it."""

    protocol: str
    swarm: str
    budget: str  # as announced: shown, never used


@dataclass(frozen=True)
class SiblingChanges:
    joined: tuple[Sibling, ...] = ()
    left: tuple[Sibling, ...] = ()


def sibling_of(about: Mapping[str, object] | None, genesis: str, own_protocol: str) -> Sibling | None:
    """The sibling a peer's `about` names, or None: no protocol, this node's own, a malformed id, a
    relay, or a swarm that is not this genesis's swarm of that protocol."""
    if not isinstance(about, Mapping) or about.get("role") == "relay":
        return None
    protocol, swarm = about.get("protocol"), about.get("swarm")
    if not isinstance(protocol, str) or not isinstance(swarm, str) or not is_hex40(protocol):
        return None
    if protocol == own_protocol or swarm != swarm_id_of(genesis, protocol):
        return None
    budget = about.get("budget")
    return Sibling(protocol, swarm, budget if isinstance(budget, str) else "?")


@dataclass
class SiblingBook:
    """The sibling protocols this node follows: bounded, first come, while a connected peer announces them."""

    genesis: str
    protocol: str
    cap: int = MAX_SIBLINGS
    followed: dict[str, Sibling] = field(default_factory=dict)  # protocol -> sibling, in admission order
    since: dict[str, float] = field(default_factory=dict)       # protocol -> when it was admitted

    def __contains__(self, protocol: object) -> bool:
        return protocol in self.followed

    def observe(self, abouts: Iterable[Mapping[str, object] | None], now: float) -> SiblingChanges:
        """What the connected peers announce now (in the order they connected): the siblings to leave
        (no connected peer announces them any more) and to join (new ones, first come, while there is room)."""
        current: dict[str, Sibling] = {}
        for about in abouts:
            s = sibling_of(about, self.genesis, self.protocol)
            if s is not None:
                current.setdefault(s.protocol, s)
        left = tuple(s for p, s in self.followed.items() if p not in current)
        for s in left:
            del self.followed[s.protocol]
            self.since.pop(s.protocol, None)
        joined: list[Sibling] = []
        for p, s in current.items():
            if p in self.followed or len(self.followed) >= self.cap:
                continue
            self.followed[p] = s
            self.since[p] = now
            joined.append(s)
        return SiblingChanges(tuple(joined), left)

    def view(self) -> list[dict[str, object]]:
        """The followed siblings for `status`."""
        return [{"protocol": s.protocol, "swarm": s.swarm, "budget": s.budget, "since": self.since.get(p)}
                for p, s in self.followed.items()]
