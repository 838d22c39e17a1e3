"""Which candidate a proposal takes: one order for the daemon's builtin proposer and for the DES.

A proposal walks its candidates in the order they come (combinations of peers' wins best first, then
mutations as the random stream draws them) and takes the first that this node owns and that is known
nowhere; only where none of the owned ones is new does it settle for the first new one of up to
PREFER_TRIES others. Whether a candidate is known is the expensive question (a DHT lookup for a
sparse node), so it is asked only where the answer decides something.

The walk is sans-IO (h11 style): a generator that yields each candidate whose knownness it needs and
is sent back the answer (True: known). `drive` answers with a plain function (the DES's model of what
reached a node), `drive_async` with a coroutine (the daemon's ledger, claims and DHT). Drawing is lazy,
so both consume a random stream the same way: a draw happens only when the walk wants one more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Hashable, Iterable
from typing import Generic, TypeVar

#: mutations drawn for one proposal before it gives up
BUILTIN_TRIES = 200
#: candidates examined for one this node owns before settling for another unknown one
PREFER_TRIES = 60
#: combinations and ideas merged per proposal (the rest next time: merges are cached per baseline)
MAX_MERGES = 8

C = TypeVar("C")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: a walk: yields a candidate to ask about, is sent whether it is known, returns the one taken (or None)
Walk = Generator[C, bool, "C | None"]


def owned_first(draws: Iterable[C | None], is_mine: Callable[[C], bool] | None,
                key: Callable[[C], Hashable] = lambda c: c, prefer_tries: int = PREFER_TRIES) -> Walk[C]:
    """The first owned candidate that is not known; else the first unknown of the first `prefer_tries`
    distinct others (by `key`). A None draw (a mutation that changed nothing) is skipped. Without
    `is_mine` (a node alone) every candidate is owned."""
    others: dict[Hashable, C] = {}
    for c in draws:
        if c is None:
            continue
        if is_mine is not None and not is_mine(c):
            others.setdefault(key(c), c)
            if len(others) >= prefer_tries:
                break
            continue
        if not (yield c):
            return c
    for c in others.values():
        if not (yield c):
            return c
    return None


def owned_only(candidates: Iterable[C | None], is_mine: Callable[[C], bool] | None) -> Walk[C]:
    """The first candidate this node owns that is not known: combinations are left to their owners."""
    for c in candidates:
        if c is None or (is_mine is not None and not is_mine(c)):
            continue
        if not (yield c):
            return c
    return None


def drive(walk: Walk[C], known: Callable[[C], bool]) -> C | None:
    """Run a walk, answering its questions with `known`."""
    try:
        c = next(walk)
        while True:
            c = walk.send(known(c))
    except StopIteration as stop:
        return stop.value


async def drive_async(walk: Walk[C], known: Callable[[C], Awaitable[bool]]) -> C | None:
    """Run a walk, answering its questions with an awaited `known`."""
    try:
        c = next(walk)
        while True:
            c = walk.send(await known(c))
    except StopIteration as stop:
        return stop.value


class Merges(Generic[K, V]):
    """Peers' wins merged onto a baseline, cached per (win, baseline), and at most MAX_MERGES fresh
    merges per proposal: a merge reads objects and parses programs, and a busy node hears hundreds of
    wins. A merge that cannot be made yet (a peer's objects still arriving) is not cached."""

    def __init__(self, limit: int = MAX_MERGES) -> None:
        self.limit = limit
        self._baseline: str | None = None
        self._done: dict[K, V | None] = {}
        self._left = limit

    def start(self, baseline: str) -> None:
        """A new proposal on `baseline`: the budget refills; another baseline forgets the cache."""
        if baseline != self._baseline:
            self._baseline = baseline
            self._done.clear()
        self._left = self.limit

    def get(self, key: K, make: Callable[[], V | None], ready: bool = True) -> V | None:
        """The cached merge of `key`, else `make()` while the budget lasts (and `ready`); None otherwise."""
        if key in self._done:
            return self._done[key]
        if self._left <= 0 or not ready:
            return None
        self._left -= 1
        value = self._done[key] = make()
        return value

    def never(self, key: K) -> None:
        """Mark `key` as never mergeable (an object of it cannot be read)."""
        self._done[key] = None

    def __bool__(self) -> bool:
        return bool(self._done)
