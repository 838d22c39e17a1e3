"""Every inbound stream protocol is registered through :class:`StreamGuard`: slots, deadline, boundary.

A stream handler that a peer can hold open, or make raise, is a lever on the whole node: py-libp2p
runs handlers in the host's own tasks (an exception stops the host), and nothing bounds how many a
peer may open or how long they may sit idle. The guard gives each protocol:

- a fault boundary (:mod:`p2p_research.net.boundary`): an exception is counted, logged once with the
  peer, and the stream is reset;
- slots per peer, per address, per subnet and in total: a stream over any limit is reset at once
  (never queued), so a peer with many idle streams holds at most ``per_peer`` slots, the identities of
  one host at most a quarter of the total and those of one /24 at most half (net/addresses.py), and
  honest peers find the rest free;
- when a protocol is full, a stream from a subnet holding fewer of its slots takes the oldest slot of
  the subnet holding the most (``addresses.yielding_subnet``; that stream is reset and counted in
  ``stats["streams_preempted"]``), so a few subnets cannot keep a newcomer out;
- a deadline for the whole stream (``deadline_s``; None for long-lived streams such as pubsub's,
  whose reads are bounded by the protocol itself): a slow or stalled peer loses the stream.

The handlers themselves read with per-frame size caps and per-frame deadlines
(:mod:`p2p_research.net.framing`). Refusals are counted per protocol in ``stats["streams_refused"]``
and deadlines in ``stats["streams_timed_out"]``; ``status`` shows both.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.abc import IHost, INetStream

from .addresses import EXEMPT, AddressSlots, key_of, remote_ip, subnet_of, yielding_subnet
from .boundary import Faults
from .framing import reset_quietly
from .host import is_relayed, strip_benign_teardown
from .ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Handler = Callable[[INetStream], Awaitable[None]]


@dataclass(frozen=True)
class StreamLimits:
    per_peer: int = 2
    total: int = 32
    deadline_s: float | None = 30.0
    per_address: int | None = None   # None: a quarter of the total (at least per_peer)
    per_subnet: int | None = None    # None: half of the total (at least per_address)
    #: a stream over its peer's limit waits this long for one of the peer's streams to end before it is
    #: refused (at most per_peer of them wait): an honest peer's burst of requests (a DHT put beside its
    #: lookups, on a loaded machine) is served late rather than lost; a hostile one gains no slot by it
    wait_s: float = 0.0

    def address_slots(self, exempt: frozenset[str] = EXEMPT) -> AddressSlots:
        per_address = self.per_address if self.per_address is not None else max(self.per_peer, self.total // 4)
        per_subnet = self.per_subnet if self.per_subnet is not None else max(per_address, self.total // 2)
        return AddressSlots(per_address, per_subnet, exempt)


def remote_peer(stream: Any) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:  # noqa: BLE001 - a stream whose connection is already gone
        return "?"


class StreamGuard:
    """Registers stream handlers on a host, each wrapped in slots, a deadline and a fault boundary."""

    def __init__(self, host: IHost, faults: Faults, stats: dict[str, Any], exempt: frozenset[str] = EXEMPT) -> None:
        self.host = host
        #: addresses whose streams no per-address or per-subnet slot limit counts (net/addresses.py)
        self.exempt = exempt
        self.faults = faults
        self.stats = stats
        stats.setdefault("streams_refused", Counter())
        stats.setdefault("streams_timed_out", Counter())
        stats.setdefault("stream_errors", Counter())
        stats.setdefault("streams_refused_by_address", Counter())
        stats.setdefault("streams_waited", Counter())  # streams over their peer's slots that waited (wait_s)
        stats.setdefault("streams_preempted", Counter())  # streams reset to give their slot to another subnet
        #: peers whose streams are refused outright (gossip's bans); set by the network
        self.is_banned: Callable[[str], bool] = lambda peer: False
        self._open: dict[str, Counter[str]] = {}
        self._total: Counter[str] = Counter()
        self._waiting: dict[str, Counter[str]] = {}
        self._freed: dict[str, trio.Event] = {}  # set (and replaced) whenever a stream of the protocol ends
        self._by_address: dict[str, AddressSlots] = {}
        # protocol -> subnet -> the cancel scopes of its open streams, oldest first (as many as the
        # protocol's AddressSlots counts for the subnet: both change together, with no wait between)
        self._holders: dict[str, dict[str, list[trio.CancelScope]]] = {}
        self._rlog = RateLimitedLog(log, interval=30.0)
        self.protocols: dict[str, StreamLimits] = {}

    @classmethod
    def standalone(cls, host: IHost, stats: dict[str, Any] | None = None) -> StreamGuard:
        """A guard of its own, for a part (gossip, peers, DHT) started without a network's shared one:
        its handlers are guarded all the same, with faults counted in `stats`."""
        stats = {} if stats is None else stats
        return cls(host, Faults(stats.setdefault("faults", Counter())), stats)

    def busy(self, protocol: str, peer: str | None = None) -> int:
        """Streams of `protocol` open now (of `peer`, when given)."""
        return self._open.get(protocol, Counter())[peer] if peer is not None else self._total[protocol]

    def register(self, protocol: str, handler: Handler, limits: StreamLimits) -> Handler:
        """Serve `protocol` with `handler` behind the guard; returns the guarded handler."""
        self.protocols[protocol] = limits
        guarded = self.wrap(protocol, handler, limits)
        self.host.set_stream_handler(protocol, guarded)  # type: ignore[arg-type]
        return guarded

    def wrap(self, protocol: str, handler: Handler, limits: StreamLimits) -> Handler:
        open_by_peer = self._open.setdefault(protocol, Counter())
        waiting = self._waiting.setdefault(protocol, Counter())
        by_address = self._by_address.setdefault(protocol, limits.address_slots(self.exempt))
        holders = self._holders.setdefault(protocol, {})

        async def make_room(subnet: str, peer: str) -> None:
            """The protocol is full: take the oldest slot of the subnet holding the most, if it holds at
            least two more than `subnet` (addresses.yielding_subnet), and wait (1 s at most) for it to end."""
            top = yielding_subnet(by_address.by_subnet, subnet)  # what holders holds, counted by take
            if top is None:
                return
            victim = next((held for held in holders.get(top, ()) if not held.cancel_called), None)
            if victim is None:  # each is already giving way to another stream
                return
            victim.cancel()
            self._rlog.log(logging.INFO, f"preempt:{protocol}:{subnet}", "a %s stream of %s (subnet %s) takes "
                           "the oldest slot of %s, which holds %d of %d", protocol, peer[:20], subnet, top,
                           by_address.by_subnet[top], limits.total)
            with trio.move_on_after(1.0):
                while self._total[protocol] >= limits.total:
                    await self._freed.setdefault(protocol, trio.Event()).wait()

        async def wait_for_own_slot(peer: str) -> None:
            """Wait (at most limits.wait_s, at most per_peer waiters) for one of `peer`'s streams to end."""
            if limits.wait_s <= 0 or waiting[peer] >= limits.per_peer:
                return
            waiting[peer] += 1
            self.stats["streams_waited"][protocol] += 1
            try:
                with trio.move_on_after(limits.wait_s):
                    while open_by_peer[peer] >= limits.per_peer:
                        await self._freed.setdefault(protocol, trio.Event()).wait()
            finally:
                waiting[peer] -= 1
                if waiting[peer] <= 0:
                    del waiting[peer]

        async def guarded(stream: INetStream) -> None:
            peer = remote_peer(stream)
            if self.is_banned(peer):
                self.stats["streams_refused"][protocol] += 1
                await reset_quietly(stream, grace=0.5)
                return
            if open_by_peer[peer] >= limits.per_peer and self._total[protocol] < limits.total:
                await wait_for_own_slot(peer)
                if self.is_banned(peer):  # banned while it waited
                    self.stats["streams_refused"][protocol] += 1
                    await reset_quietly(stream, grace=0.5)
                    return
            ip = None if is_relayed(stream.muxed_conn) else remote_ip(stream)  # a relay's address is shared
            key = key_of(ip, by_address.exempt) if ip is not None else None
            subnet = subnet_of(key) if key is not None else None
            if (self._total[protocol] >= limits.total and subnet is not None and open_by_peer[peer] < limits.per_peer
                    and by_address.refusal(ip) is None):
                await make_room(subnet, peer)
            if self._total[protocol] >= limits.total or open_by_peer[peer] >= limits.per_peer:
                self.stats["streams_refused"][protocol] += 1
                self._rlog.log(logging.INFO, f"{protocol}:{peer}", "refused a %s stream from %s: %d open of %d "
                               "for this peer, %d of %d in all", protocol, peer[:20], open_by_peer[peer],
                               limits.per_peer, self._total[protocol], limits.total)
                await reset_quietly(stream, grace=0.5)
                return
            why = by_address.take(ip) if ip is not None else None
            if why is not None:
                self.stats["streams_refused"][protocol] += 1
                self.stats["streams_refused_by_address"][protocol] += 1
                self._rlog.log(logging.INFO, f"{protocol}:{ip}", "refused a %s stream from %s: %s", protocol,
                               peer[:20], why)
                await reset_quietly(stream, grace=0.5)
                return
            open_by_peer[peer] += 1
            self._total[protocol] += 1
            held = trio.CancelScope()  # cancelled when another subnet takes this slot (make_room)
            if subnet is not None:
                holders.setdefault(subnet, []).append(held)
            try:
                with held:
                    with trio.move_on_after(limits.deadline_s if limits.deadline_s is not None else float("inf")) as scope:
                        await handler(stream)
                if held.cancelled_caught:
                    self.stats["streams_preempted"][protocol] += 1
                    await reset_quietly(stream, grace=0.5)
                elif scope.cancelled_caught:
                    self.stats["streams_timed_out"][protocol] += 1
                    self._rlog.log(logging.INFO, f"deadline:{protocol}:{peer}", "a %s stream of %s exceeded %.0f s;"
                                   " reset", protocol, peer[:20], limits.deadline_s)
                    await reset_quietly(stream, grace=0.5)
            except Exception as e:  # noqa: BLE001 - the boundary of this peer's stream
                if strip_benign_teardown(e) is None:  # libp2p's own nurseries closing as the node stops
                    log.debug("%s stream of %s ended with the host: %r", protocol, peer[:20], e)
                elif _is_stream_error(e):  # the peer went away or broke the stream: its loss, no bug of ours
                    self.stats["stream_errors"][protocol] += 1
                    log.debug("%s stream of %s failed: %r", protocol, peer[:20], e)
                else:
                    self.faults.record(peer, protocol, e)
                await reset_quietly(stream, grace=0.5)
            finally:
                if subnet is not None:
                    scopes = holders[subnet]
                    scopes.remove(held)
                    if not scopes:
                        del holders[subnet]
                open_by_peer[peer] -= 1
                if open_by_peer[peer] <= 0:
                    del open_by_peer[peer]
                self._total[protocol] -= 1
                if ip is not None:
                    by_address.give_back(ip)
                freed = self._freed.pop(protocol, None)
                if freed is not None:
                    freed.set()

        guarded.__qualname__ = f"guarded[{protocol}]"
        guarded._p2p_guarded = True  # type: ignore[attr-defined]
        return guarded


def _is_stream_error(e: BaseException) -> bool:
    from libp2p.io.exceptions import IOException
    from libp2p.stream_muxer.exceptions import MuxedStreamError

    if isinstance(e, BaseExceptionGroup):
        return all(_is_stream_error(x) for x in e.exceptions)
    return isinstance(e, (IOException, MuxedStreamError, trio.BrokenResourceError, trio.ClosedResourceError,
                          ConnectionError, EOFError))


def is_guarded(handler: Any) -> bool:
    """Whether a registered handler came from :meth:`StreamGuard.wrap` (tests check every protocol)."""
    return bool(getattr(handler, "_p2p_guarded", False))
