"""Per-peer token buckets and rate-limited logging.

GossipSub's built-in spam protection caps 10 msg/s per topic *including the local publisher*
(docs/libp2p.md), so it is disabled and replaced by these buckets in the topic validator.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` stored."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, n: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class PerPeerRateLimiter:
    """One token bucket per key (peer id), LRU-bounded so that many identities cannot exhaust memory."""

    def __init__(
        self, rate: float, burst: int, *, max_peers: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit must be positive (rate={rate}, burst={burst})")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[key] = b
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b.take(now)


class RateLimitedLog:
    """Log at most one line per ``key`` per ``interval`` seconds, reporting how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if len(self._last) > 10_000 or len(self._suppressed) > 10_000:  # bound memory under many keys
            self._last.clear()
            self._suppressed.clear()
        suffix = f" ({n} similar suppressed)" if n else ""
        self.logger.log(level, msg + suffix, *args)
