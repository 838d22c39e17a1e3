"""Swarm topics: their names, which ones a node accepts subscriptions to, and which ones a relay joins.

A research node lives in one swarm (its genesis and protocol). A relay lives in whichever swarms its
peers use: it learns them from the subscriptions peers announce (GossipSub tells every connected
peer which topics it subscribed to) and joins them, so it forwards their messages, stores their
results and serves them to late joiners. Every choice here is a pure function, so the rules that
bound what a hostile peer can make a relay do are tested without a network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

#: a swarm id is 1..64 lowercase hex characters (16 in practice: see research.ids.swarm_id_of)
TOPIC_RE = re.compile(r"/p2p-research/([0-9a-f]{1,64})/(exp|board)/1")
#: the most swarms a relay serves at once (each costs two subscriptions, a mesh and a drain task)
MAX_SWARMS = 32
#: a peer announcing more topics than this is ignored beyond it (libp2p keeps a set per topic)
MAX_SUBSCRIPTIONS_PER_PEER = 2 * MAX_SWARMS + 8


def topic_names(swarm_id: str) -> tuple[str, str]:
    """(experiments topic, board topic) of a swarm."""
    return f"/p2p-research/{swarm_id}/exp/1", f"/p2p-research/{swarm_id}/board/1"


def swarm_of_topic(topic: str) -> str | None:
    """The swarm id of one of our topics, else None (any other string a peer announces)."""
    m = TOPIC_RE.fullmatch(topic)
    return m.group(1) if m else None


@dataclass
class TopicFilter:
    """Which topics' subscriptions libp2p records for peers (its ``Pubsub.allowed_topics``).

    A research node records only its own swarm's topics. A relay also records any topic shaped like
    a swarm topic, since that is how it learns which swarms its peers use; libp2p caps how many
    topics one peer may announce (``max_subscriptions_per_peer``), so the record stays bounded.
    """

    joined: set[str] = field(default_factory=set)
    open: bool = False

    def __contains__(self, topic: object) -> bool:
        if not isinstance(topic, str):
            return False
        return topic in self.joined or (self.open and swarm_of_topic(topic) is not None)


#: a relay's vote counts this much of a research node's: relays repeat what their peers announce
RELAY_VOTE = 0.25


def swarm_peer_counts(peer_topics: Mapping[str, Iterable[object]],
                      counts: Callable[[object], bool] = lambda peer: True) -> dict[str, int]:
    """Connected peers per swarm (those `counts` accepts), from libp2p's topic -> subscribed peers map."""
    out: dict[str, int] = {}
    for topic, peers in peer_topics.items():
        swarm = swarm_of_topic(topic)
        if swarm is not None and topic.endswith("/exp/1"):
            out[swarm] = sum(1 for p in peers if counts(p))
    return out


def swarm_weights(peer_topics: Mapping[str, Iterable[object]],
                  is_relay: Callable[[object], bool] = lambda peer: False) -> dict[str, float]:
    """How much connected peers use each swarm: a peer counts 1 spread over the swarms it announces.

    A research node (one swarm) gives its swarm a whole vote; a relay announcing ten swarms gives each
    a tenth of RELAY_VOTE; a hostile peer announcing dozens of made-up swarms gives each almost nothing,
    so it cannot push a real swarm out of a relay's places.
    """
    per_peer: dict[object, list[str]] = {}
    for topic, peers in peer_topics.items():
        swarm = swarm_of_topic(topic)
        if swarm is not None and topic.endswith("/exp/1"):
            for p in peers:
                per_peer.setdefault(p, []).append(swarm)
    out: dict[str, float] = {}
    for peer, swarms in per_peer.items():
        vote = RELAY_VOTE if is_relay(peer) else 1.0
        for s in swarms:
            out[s] = out.get(s, 0.0) + vote / len(swarms)
    return out


def swarms_to_join(joined: Iterable[str], weights: Mapping[str, float], cap: int = MAX_SWARMS) -> list[str]:
    """Swarms a relay should join now, most-used first, without going over `cap` in all.

    `weights` says how much connected peers use each swarm (:func:`swarm_weights`). A swarm nobody
    connected uses is not joined; once the cap is reached nothing more is joined here (see
    :func:`swarm_to_replace`).
    """
    have = set(joined)
    free = cap - len(have)
    if free <= 0:
        return []
    candidates = sorted((s for s, w in weights.items() if w > 0 and s not in have), key=lambda s: (-weights[s], s))
    return candidates[:free]


def swarm_to_replace(joined: Iterable[str], weights: Mapping[str, float], keep: Iterable[str] = (),
                     cap: int = MAX_SWARMS, factor: float = 2.0) -> tuple[str, str] | None:
    """At the cap, (swarm to leave, swarm to join) when a swarm not joined is used `factor` times more
    than the least-used joined one (never `keep`); one swap per call, so the set cannot flap."""
    have = set(joined)
    if len(have) < cap:
        return None
    kept = set(keep)
    leavable = sorted((s for s in have if s not in kept), key=lambda s: (weights.get(s, 0.0), s))
    waiting = sorted((s for s, w in weights.items() if w > 0 and s not in have), key=lambda s: (-weights[s], s))
    if leavable and waiting and weights[waiting[0]] > factor * weights.get(leavable[0], 0.0):
        return leavable[0], waiting[0]
    return None


def swarms_to_leave(joined: Iterable[str], seen: Mapping[str, int], idle_since: Mapping[str, float], now: float,
                    keep: Iterable[str] = (), idle_s: float = 600.0) -> list[str]:
    """Joined swarms no connected peer has used for `idle_s` (their places go to swarms in use);
    `keep` (the node's own swarm) is never left. `seen` should count research nodes only: relays
    repeating each other's subscriptions would otherwise keep a made-up swarm alive among them."""
    kept = set(keep)
    return sorted(s for s in joined if s not in kept and seen.get(s, 0) == 0
                  and now - idle_since.get(s, now) >= idle_s)
