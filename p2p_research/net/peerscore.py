"""Scores of the connections that deliver gossip to us, and bans for the ones that keep sending junk.

py-libp2p 0.8.1's GossipSub has no peer scoring that acts on a topic validator's rejections (its
``spam_protection`` only counts messages per topic, our own publishes included). So rejections are
scored here, per *forwarder* (the peer on the other end of the connection, whoever signed the
message): a connection that keeps delivering messages we reject is disconnected, blacklisted in
pubsub and not dialed again for a backoff that doubles with every ban.

Pure and clock-injected: the gossip validator calls :meth:`ForwarderScores.penalize` and acts on the
answer. The score decays exponentially (half-life ``half_life_s``), so an honest forwarder that
relays the odd bad message from someone else never reaches the threshold, while a stream of junk
does within seconds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

#: weights of one rejected message, by the reason it was rejected. Only invalid content scores: an honest
#: relay validates with the same rules and never forwards it. Messages over a budget (per originator,
#: per connection, new keys per connection) cost nothing here: an honest relay forwards whatever its
#: own budgets allow (it may serve several attackers' connections at once), so scoring them would let
#: an attacker get honest relays banned. Over-budget messages are only dropped, and forgotten by
#: pubsub's validation cache so that another relay's copy is judged afresh. Messages of an older wire
#: version cost nothing either: nodes not yet upgraded are not hostile.
WEIGHTS: dict[str, float] = {
    "malformed": 1.0, "bad_signature": 1.0, "peer_mismatch": 1.0, "wrong_topic": 1.0, "validator_error": 1.0,
    "malformed_rpc": 5.0,
    "forwarder_rate_limited": 0.0, "new_originators": 0.0, "rate_limited": 0.0, "obsolete_version": 0.0,
}  # fmt: skip
BUDGET_REASONS = frozenset({"forwarder_rate_limited", "new_originators", "rate_limited"})


@dataclass
class _Score:
    value: float
    updated: float
    bans: int = 0
    banned_until: float = 0.0


class ForwarderScores:
    def __init__(self, threshold: float = 50.0, half_life_s: float = 30.0, ban_s: float = 60.0,
                 max_ban_s: float = 3600.0, max_peers: int = 10_000) -> None:
        self.threshold = threshold
        self.decay = math.log(2) / half_life_s
        self.ban_s = ban_s
        self.max_ban_s = max_ban_s
        self.max_peers = max_peers
        self._scores: OrderedDict[str, _Score] = OrderedDict()

    def _get(self, peer: str, now: float) -> _Score:
        s = self._scores.get(peer)
        if s is None:
            s = self._scores[peer] = _Score(0.0, now)
            if len(self._scores) > self.max_peers:
                # forget the least recently scored peer that is not banned (the oldest ban when all are)
                victim = next((k for k, old in self._scores.items() if old.banned_until <= now), None)
                del self._scores[victim if victim is not None else next(iter(self._scores))]
        else:
            self._scores.move_to_end(peer)
        s.value *= math.exp(-self.decay * max(0.0, now - s.updated))
        s.updated = now
        return s

    def score(self, peer: str, now: float) -> float:
        return self._get(peer, now).value

    def penalize(self, peer: str, reason: str, now: float) -> float | None:
        """Count one rejected message; returns the ban's length in seconds when this one crosses the
        threshold (the caller disconnects), else None."""
        weight = WEIGHTS.get(reason, 1.0)
        if weight <= 0:
            return None
        s = self._get(peer, now)
        if s.banned_until > now:
            return None  # already banned; the caller has acted
        s.value += weight
        if s.value < self.threshold:
            return None
        length = min(self.max_ban_s, self.ban_s * 2**s.bans)
        s.bans += 1
        s.banned_until = now + length
        s.value = 0.0
        return length

    def banned(self, peer: str, now: float) -> bool:
        s = self._scores.get(peer)
        return s is not None and s.banned_until > now

    def expired_bans(self, now: float) -> list[str]:
        """Peers whose ban ended (the caller lifts it); each is reported once."""
        out = [p for p, s in self._scores.items() if 0 < s.banned_until <= now]
        for p in out:
            self._scores[p].banned_until = 0.0
        return out

    def banned_peers(self, now: float) -> dict[str, float]:
        return {p: s.banned_until - now for p, s in self._scores.items() if s.banned_until > now}
