"""Targeted patches that cut py-libp2p 0.8.1's fixed CPU cost per pubsub RPC (registered in __init__.py).

A py-spy profile of one node daemon in a CPU-saturated 35-process swarm on the 2-core machine put
~24 ms of py-libp2p CPU on every delivered message; of the main thread's samples:

- ``libp2p.pubsub.utils.maybe_consume_signed_record`` ~6 %: py-libp2p attaches the sender's signed
  peer record (``senderRecord``) to EVERY pubsub RPC and the receiver re-parses it, re-verifies its
  ed25519 signature and rewrites the sender's addresses in the peerstore each time (twice for an RPC
  with control messages: once in ``Pubsub.continuously_read_stream``, once in
  ``GossipSub.handle_rpc``), although a peer's record only changes when its addresses do;
- ``libp2p.peer.peerstore.env_to_send_in_RPC`` ~5 %: called for every outgoing RPC, it calls
  ``host.get_addrs()`` (~4.4 %: multiaddr building and encapsulation) and re-serializes the cached
  local record, only to find that nothing changed;
- ``GossipSub._emit_idontwant_for_message`` ~4 %: gossipsub v1.2 sends one IDONTWANT RPC (with its
  own ``senderRecord``) to every v1.2 mesh peer for every message, whatever its size, and also for
  our own publishes.

:func:`apply` installs four patches, once per process, before hosts are created
(``p2p_research.net.host.make_host`` and ``p2p_research.net.gossip.Gossip`` call it):

1. ``record_cache`` (receive side): a peer's ``senderRecord`` bytes identical to the last ones this
   peerstore accepted from that same peer, less than :data:`RECORD_RECHECK_S` ago and still the record
   the peerstore holds for it, are not consumed again. Anything else (new bytes, a forged or garbled
   record, a record of another peer, an entry the peerstore has since replaced or dropped) takes the
   original path, verification included; only records the original path accepted are cached.
2. ``local_record_cache`` (send side): ``env_to_send_in_RPC(host)`` returns the envelope bytes it
   returned less than :data:`LOCAL_RECORD_TTL_S` ago, as long as the host's set of transport
   listeners and the peerstore's local record object are unchanged; otherwise (or after the TTL,
   which bounds the staleness of observed addresses) the original runs and refreshes the record.
3. ``idontwant_threshold``: IDONTWANT is emitted only for messages whose data is at least
   ``router.idontwant_message_threshold`` bytes (default :data:`IDONTWANT_MIN_DATA` = 1024, go-libp2p's
   ``GossipSubIDontWantMessageThreshold``), and never for our own publishes (gossipsub never sends a
   message back to its origin, so there is nothing to suppress). py-libp2p 0.8.1 has no threshold and
   neither its constructor nor an attribute offers one. For a small message the IDONTWANT RPC costs
   its receiver about as much as the duplicate it might save, and it goes to every mesh peer,
   the one we got the message from included.
4. ``outbound_queue``: a peer's outbound RPC queue holds 256 RPCs instead of 32 before libp2p drops
   (silently) what a slow node cannot write yet, and every drop is counted for its host
   (counters.py; the daemon's `status` shows it as ``net.libp2p_dropped_rpcs``).

Every patch checks that libp2p is version :data:`EXPECTED_LIBP2P` and that what it replaces exists;
otherwise it logs a warning and leaves libp2p alone (never raises). Applying twice is a no-op.
The environment variable ``P2P_RPC_PATCHES`` selects them (for A/B measurements, or as a kill switch):
unset or ``all``: all four; ``none`` (or ``0``/``off``): none; else a comma-separated list of names.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import counters
from .pin import EXPECTED_LIBP2P, libp2p_version

log = logging.getLogger(__name__)

RECORD_RECHECK_S = 60.0  # identical record bytes are re-consumed at most once a minute per peer
RECORD_CACHE_PEERS = 1024  # peers remembered per peerstore (the longest unconsumed dropped first)
LOCAL_RECORD_TTL_S = 1.0  # the local record's bytes are reused for at most this long
IDONTWANT_MIN_DATA = 1024  # bytes of message data; go-libp2p's GossipSubIDontWantMessageThreshold

# Modules that import the patched functions by name (grep of libp2p 0.8.1): their references are
# replaced too. Modules imported after `apply` get the patched function from the defining module.
_CONSUME_IMPORTERS = ("libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub", "libp2p.pubsub.floodsub")
_ENV_IMPORTERS = ("libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub", "libp2p.pubsub.floodsub",
                  "libp2p.identity.identify.identify")  # fmt: skip

_applied: dict[str, bool] = {}

_orig_consume: Callable[..., bool] | None = None
_orig_env: Callable[..., tuple[bytes, bool]] | None = None
_orig_emit: Callable[..., Any] | None = None

# peerstore -> {peer id -> (record bytes, envelope the peerstore stored, monotonic time consumed)}
_seen_records: weakref.WeakKeyDictionary[Any, OrderedDict[Any, tuple[bytes, Any, float]]] = (
    weakref.WeakKeyDictionary()
)
# host -> (listener fingerprint, local record object, envelope bytes, monotonic time refreshed)
_local_records: weakref.WeakKeyDictionary[Any, tuple[Any, Any, bytes, float]] = weakref.WeakKeyDictionary()


# --- 1. receive side: senderRecord ---------------------------------------------------------------


def _stored_envelope(peerstore: Any, peer_id: Any) -> Any:
    state = peerstore.peer_record_map.get(peer_id)
    return None if state is None else state.envelope


def maybe_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
    """``libp2p.pubsub.utils.maybe_consume_signed_record`` that skips re-consuming unchanged records."""
    assert _orig_consume is not None
    if not msg.HasField("senderRecord"):
        return True
    data = msg.senderRecord
    try:
        peerstore = host.get_peerstore()
        seen = _seen_records.get(peerstore)
        if seen is not None:
            hit = seen.get(peer_id)
            if (hit is not None and hit[0] == data and time.monotonic() - hit[2] < RECORD_RECHECK_S
                    and _stored_envelope(peerstore, peer_id) is hit[1]):  # fmt: skip
                counters.for_host(host).record_skipped += 1
                return True
    except Exception as e:  # noqa: BLE001 - an unexpected peerstore: behave exactly as libp2p does
        log.debug("record cache lookup failed: %r", e)
        return _orig_consume(msg, host, peer_id)
    ok = _orig_consume(msg, host, peer_id)
    counters.for_host(host).record_consumed += 1
    if ok:
        try:
            env = _stored_envelope(peerstore, peer_id)
            if env is not None:
                if seen is None:
                    seen = _seen_records.setdefault(peerstore, OrderedDict())
                seen[peer_id] = (bytes(data), env, time.monotonic())
                seen.move_to_end(peer_id)
                while len(seen) > RECORD_CACHE_PEERS:
                    seen.popitem(last=False)
        except Exception as e:  # noqa: BLE001 - a cache update failing: libp2p's answer stands
            log.debug("record cache update failed: %r", e)
    return ok


def _apply_record_cache() -> bool:
    global _orig_consume
    import libp2p.pubsub.utils as putils
    from libp2p.peer.peerstore import PeerStore

    orig = getattr(putils, "maybe_consume_signed_record", None)
    if orig is maybe_consume_signed_record:
        return True
    if not callable(orig) or not callable(getattr(PeerStore, "consume_peer_record", None)) \
            or "peer_record_map" not in PeerStore().__dict__:  # fmt: skip
        log.warning("rpc_cost: libp2p.pubsub.utils.maybe_consume_signed_record or "
                    "PeerStore.peer_record_map not found; senderRecord cache not applied")  # fmt: skip
        return False
    _orig_consume = orig
    _replace_references("maybe_consume_signed_record", orig, maybe_consume_signed_record,
                        ("libp2p.pubsub.utils", *_CONSUME_IMPORTERS))  # fmt: skip
    return True


# --- 2. send side: the local record --------------------------------------------------------------


def _listen_fingerprint(host: Any) -> tuple[tuple[int, int], ...]:
    """Changes when a transport listener is added/removed or starts listening on one more socket."""
    return tuple((id(t), len(t.listeners)) for t in host.get_network().listeners.values())


def env_to_send_in_RPC(host: Any) -> tuple[bytes, bool]:  # noqa: N802 (libp2p's name)
    """``libp2p.peer.peerstore.env_to_send_in_RPC`` that reuses the bytes for LOCAL_RECORD_TTL_S."""
    assert _orig_env is not None
    try:
        fp = _listen_fingerprint(host)
        peerstore = host.get_peerstore()
        cached = _local_records.get(host)
        if (cached is not None and time.monotonic() - cached[3] < LOCAL_RECORD_TTL_S and cached[0] == fp
                and cached[1] is not None and peerstore.get_local_record() is cached[1]):  # fmt: skip
            counters.for_host(host).local_record_reused += 1
            return cached[2], False
    except Exception as e:  # noqa: BLE001 - an unexpected host: behave exactly as libp2p does
        log.debug("local record cache lookup failed: %r", e)
        return _orig_env(host)
    data, created = _orig_env(host)
    counters.for_host(host).local_record_refreshed += 1
    try:
        _local_records[host] = (fp, peerstore.get_local_record(), data, time.monotonic())
    except Exception as e:  # noqa: BLE001 - a cache update failing: libp2p's answer stands
        log.debug("local record cache update failed: %r", e)
    return data, created


def _apply_local_record_cache() -> bool:
    global _orig_env
    import libp2p.peer.peerstore as pstore
    from libp2p.host.basic_host import BasicHost
    from libp2p.network.swarm import Swarm

    orig = getattr(pstore, "env_to_send_in_RPC", None)
    if orig is env_to_send_in_RPC:
        return True
    if not callable(orig) or not callable(getattr(BasicHost, "get_network", None)) \
            or "listeners" not in getattr(Swarm, "__annotations__", {}) \
            or not callable(getattr(pstore.PeerStore, "get_local_record", None)):  # fmt: skip
        log.warning("rpc_cost: libp2p.peer.peerstore.env_to_send_in_RPC or the listener/local-record "
                    "attributes not found; local record cache not applied")  # fmt: skip
        return False
    _orig_env = orig
    _replace_references(
        "env_to_send_in_RPC", orig, env_to_send_in_RPC, ("libp2p.peer.peerstore", *_ENV_IMPORTERS)
    )
    return True


# --- 3. IDONTWANT threshold ----------------------------------------------------------------------


async def _emit_idontwant_for_message(self: Any, msg_id: bytes, topic_ids: Any) -> None:
    """GossipSub._emit_idontwant_for_message, only for others' messages of >= the threshold."""
    assert _orig_emit is not None
    try:
        msg = self.mcache.msgs.get(msg_id)  # keyed by from_id + seqno, libp2p's default message id
        if msg is not None and self.pubsub is not None:
            if (len(msg.data) < getattr(self, "idontwant_message_threshold", IDONTWANT_MIN_DATA)
                    or msg.from_id == self.pubsub.my_id.to_bytes()):  # fmt: skip
                counters.for_host(self.pubsub.host).idontwant_skipped += 1
                return
    except Exception as e:  # noqa: BLE001 - unknown message: emit as libp2p does
        log.debug("idontwant size check failed: %r", e)
    await _orig_emit(self, msg_id, topic_ids)


def _apply_idontwant_threshold() -> bool:
    global _orig_emit
    from libp2p.pubsub.gossipsub import GossipSub
    from libp2p.pubsub.mcache import MessageCache

    orig = GossipSub.__dict__.get("_emit_idontwant_for_message")
    if orig is _emit_idontwant_for_message:
        return True
    if orig is None or not callable(getattr(GossipSub, "publish", None)) \
            or "msgs" not in MessageCache(1, 1).__dict__:  # fmt: skip
        log.warning("rpc_cost: GossipSub._emit_idontwant_for_message or MessageCache.msgs not found; "
                    "IDONTWANT threshold not applied")  # fmt: skip
        return False
    _orig_emit = orig
    GossipSub._emit_idontwant_for_message = _emit_idontwant_for_message  # type: ignore[method-assign]
    return True


# --- 4. outbound queue -----------------------------------------------------------------------------

OUTBOUND_QUEUE = 256  # RPCs per peer (py-libp2p: 32)
_orig_drop: Any = None


def drop_rpc(peer_id: Any, rpc: Any) -> None:
    """libp2p's own drop_rpc (a debug log line), counted for the host whose task drops it: a drop
    loses the message for that peer."""
    c = counters.current()
    c.dropped_rpcs += 1
    try:
        c.dropped_messages += len(rpc.publish)
    except Exception:  # noqa: BLE001 - counting must never break sending
        pass
    _orig_drop(peer_id, rpc)


def _apply_outbound_queue() -> bool:
    """py-libp2p drops an outbound RPC silently when a peer's queue holds 32 already. A CPU-saturated
    node falls behind its writes in bursts (a result forwarded to every mesh peer, IHAVE gossip,
    subscriptions), and each drop loses a claim or result for that peer unless gossip repairs it
    within its 3-heartbeat window. The queue grows to OUTBOUND_QUEUE RPCs (messages are capped at
    512 KiB by the wire layer, and a node has ~10 peers), and every drop is counted (counters.py)."""
    global _orig_drop
    from libp2p.pubsub import rpc_queue

    init = rpc_queue.RpcQueue.__init__
    if init.__defaults__ is None or len(init.__defaults__) != 2 or not callable(getattr(rpc_queue, "drop_rpc", None)):
        log.warning("rpc_cost: RpcQueue.__init__ defaults or drop_rpc not as expected; outbound queue not changed")
        return False
    init.__defaults__ = (max(OUTBOUND_QUEUE, init.__defaults__[0]), init.__defaults__[1])
    push = rpc_queue.RpcQueue.push
    if not getattr(push, "_p2p_counting", False):
        def counting_push(self: Any, rpc: Any, priority: bool = False) -> bool:
            ok = push(self, rpc, priority)
            if not ok:  # why: a closed queue (peer gone) is harmless, a full one loses a message
                c = counters.current()
                if getattr(self, "_closed", False):
                    c.drops_queue_closed += 1
                else:
                    c.drops_queue_full += 1
            return ok
        counting_push._p2p_counting = True  # type: ignore[attr-defined]
        rpc_queue.RpcQueue.push = counting_push  # type: ignore[method-assign]
    if rpc_queue.drop_rpc is not drop_rpc:
        _orig_drop = rpc_queue.drop_rpc
        _replace_references("drop_rpc", _orig_drop, drop_rpc, ("libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub"))
    return True


# --- applying ------------------------------------------------------------------------------------


def _replace_references(name: str, old: Any, new: Any, modules: tuple[str, ...]) -> list[str]:
    """Point ``name`` at ``new`` in the listed modules (imported here) and in every loaded libp2p
    module that holds ``old`` under that name."""
    done = []
    for mod_name in modules:
        try:
            importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001 - a libp2p module that cannot be imported keeps its own function
            log.debug("rpc_cost: cannot import %s: %r", mod_name, e)
    for mod_name, mod in list(sys.modules.items()):
        if (mod_name == "libp2p" or mod_name.startswith("libp2p.")) and getattr(mod, name, None) is old:
            setattr(mod, name, new)
            done.append(mod_name)
    log.debug("rpc_cost: %s replaced in %s", name, ", ".join(done))
    return done


_PATCHES: dict[str, Callable[[], bool]] = {
    "record_cache": _apply_record_cache,
    "local_record_cache": _apply_local_record_cache,
    "idontwant_threshold": _apply_idontwant_threshold,
    "outbound_queue": _apply_outbound_queue,
}


def _selected() -> set[str]:
    raw = os.environ.get("P2P_RPC_PATCHES", "").strip().lower()
    if raw in ("", "all"):
        return set(_PATCHES)
    if raw in ("none", "0", "off"):
        return set()
    names = {x.strip() for x in raw.split(",") if x.strip()}
    unknown = names - set(_PATCHES)
    if unknown:
        log.warning("rpc_cost: unknown names in P2P_RPC_PATCHES ignored: %s", ", ".join(sorted(unknown)))
    return names & set(_PATCHES)


def apply() -> dict[str, bool]:
    """Apply the selected patches once per process (idempotent, never raises); which ones are active."""
    if _applied:
        return dict(_applied)
    selected = _selected()
    ver = libp2p_version()
    if ver != EXPECTED_LIBP2P:
        log.warning("rpc_cost: libp2p %s is not %s; RPC cost patches not applied", ver, EXPECTED_LIBP2P)
        for name in _PATCHES:
            _applied[name] = False
        return dict(_applied)
    for name, fn in _PATCHES.items():
        if name not in selected:
            _applied[name] = False
            continue
        try:
            _applied[name] = fn()
        except Exception as e:  # noqa: BLE001 - a patch that fails is reported off, never the node's end
            log.warning("rpc_cost: patch %s failed (%r); not applied", name, e)
            _applied[name] = False
    log.info(
        "rpc_cost: libp2p RPC cost patches: %s", ", ".join(n for n, on in _applied.items() if on) or "none"
    )
    return dict(_applied)


def applied() -> dict[str, bool]:
    return dict(_applied)
