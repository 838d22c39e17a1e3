"""What the patches and guards of this package counted, per host.

The patched functions are libp2p's, shared by every host of the process, so their counts used to be
module-level dicts: in a process with several hosts (the tests, a simulation in one process) one
host's `status` showed all of them. Each count now goes to the host it happened for:

- where libp2p hands the function its host (the signed-record paths) or an object that has one
  (gossipsub's router), to that host's counters (`for_host`);
- elsewhere (an RPC queue, a multistream-select read: libp2p gives them no host), to the host whose
  task it runs in: `serving(host)` marks the task that starts a host, and every task libp2p starts
  for it from there inherits the mark (a context variable); a count with no host in its context goes
  to `UNATTRIBUTED`. libp2p starts identify and identify-push as trio system tasks, which begin from
  the run's first context and carry no mark: a count that can happen there is taken from an object
  marked where its host made it (a yamux connection's wedge, guards 7).
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class HostCounters:
    """One host's counts (names as `status` shows them under `net`)."""

    record_skipped: int = 0          # a peer's unchanged signed record not re-verified (rpc_cost 1)
    record_consumed: int = 0         # ... and those verified
    local_record_reused: int = 0     # our own record's bytes reused (rpc_cost 2)
    local_record_refreshed: int = 0
    idontwant_skipped: int = 0       # IDONTWANT not sent for a small or own message (rpc_cost 3)
    dropped_rpcs: int = 0            # outbound RPCs libp2p dropped (rpc_cost 4)
    dropped_messages: int = 0        # ... and the messages in them
    drops_queue_full: int = 0
    drops_queue_closed: int = 0
    multistream_refused: int = 0     # multistream-select reads refused (guards 1)
    control_ids_dropped: int = 0     # IHAVE/IWANT message ids beyond the guard's bound (guards 3)
    inbound_refused_by_address: int = 0  # inbound connections over an address's or subnet's share (guards 4)
    inbound_refused_full: int = 0    # inbound connections refused while the node held its cap of live ones (guards 4)
    publish_dropped: int = 0         # published messages of an RPC beyond the guard's bound (guards 5)
    yamux_write_timeouts: int = 0    # connections closed because a frame could not be written (guards 7)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


UNATTRIBUTED = HostCounters()
_by_host: weakref.WeakKeyDictionary[Any, HostCounters] = weakref.WeakKeyDictionary()
_serving: contextvars.ContextVar[HostCounters | None] = contextvars.ContextVar("p2p_libp2p_host", default=None)


def for_host(host: Any) -> HostCounters:
    """The counters of `host` (made on first use; they go with the host)."""
    try:
        counters = _by_host.get(host)
        if counters is None:
            counters = _by_host[host] = HostCounters()
        return counters
    except TypeError:  # an object that cannot be weakly referenced: nothing to attribute to
        return UNATTRIBUTED


def current() -> HostCounters:
    """The counters of the host whose task this is (UNATTRIBUTED outside any)."""
    return _serving.get() or UNATTRIBUTED


@contextmanager
def serving(host: Any) -> Iterator[HostCounters]:
    """Tasks started inside (and the tasks they start) count for `host`."""
    counters = for_host(host)
    token = _serving.set(counters)
    try:
        yield counters
    finally:
        try:
            _serving.reset(token)
        except ValueError:  # left from another context (an async generator closed elsewhere)
            pass
