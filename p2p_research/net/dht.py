"""A DHT of experiment records: py-libp2p's Kademlia with the project's validator and time bounds.

    dht = ExperimentDHT(host)
    await nursery.start(dht.run)          # open_network does this when NetConfig.dht is True
    n = await dht.put(make_claim_record(exp_id, commit, lease_until, key_pair))
    rec = await dht.get(exp_id)           # best valid ExpRecord or None, within ~8 s

What py-libp2p 0.8.1 does not do and this module does (docs/libp2p.md):

* connected peers are not added to the routing table: a loop adds every connected peer every
  ``poll_interval`` seconds and refreshes the table when the first peers join, then after
  ``refresh_interval`` seconds, doubling up to ``REFRESH_MAX`` (10 min);
* ``put_value`` returns None even when every remote rejected: :meth:`ExperimentDHT.put` stores at
  the closest peers itself and counts the acknowledgements (a remote that rejects resets the stream);
* ``get_value`` returns the *local* value whenever there is one, and never bounds its time:
  :meth:`ExperimentDHT.get` merges the local record with what the closest peers hold (validated
  record by record), stores the best locally and pushes it to peers that returned an older one;
* the default validator keeps the first value ever stored: namespace ``exp`` gets a validator whose
  ``select`` is :func:`~p2p_research.wire.records.select_record` (result > claim, newest lease,
  first finisher), and ``strict_validation`` refuses keys outside registered namespaces.

The lookups use two private helpers of libp2p's ``ValueStore`` (``_store_at_peer`` and
``_get_from_peer``); libp2p is pinned to 0.8.1 in pyproject.toml.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.kad_dht import DHTMode, KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Record
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.records.record import make_signed_put_record
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from ..wire import WireError
from ..wire.records import ExpRecord, decode_record, encode_record, exp_id_of_key, record_key, select_best
from .ratelimit import RateLimitedLog
from .streams import StreamGuard, StreamLimits

log = logging.getLogger(__name__)

KAD_PROTOCOL = "/ipfs/kad/1.0.0"
NAMESPACE = "exp"
# k: how many of the closest peers a put stores at (and a get consults). Kademlia's usual 20 suits large
# networks; a research swarm has tens of nodes, where 8 replicas survive heavy churn and a put no longer
# dials most of the swarm (every new connection costs a Noise handshake, identify and pubsub set-up).
REPLICATION = 8
LOOKUP_ALPHA = 6  # concurrent queries per round of a get
QUERY_TIMEOUT = 5.0  # one peer's GET_VALUE / PUT_VALUE
PUT_TIMEOUT = 12.0
GET_TIMEOUT = 8.0
GET_QUORUM = 3  # stop a get after this many valid records (the local one counts); 0: ask all k closest
POLL_INTERVAL = 2.0
REFRESH_INTERVAL = 30.0  # first period after the first peers join; doubles up to REFRESH_MAX
REFRESH_MAX = 600.0  # libp2p's own period
REFRESH_TIMEOUT = 20.0
CORRECTION_TIMEOUT = 10.0
REJECT_RETRY = 60.0  # seconds before retrying add_peer for a peer the routing table refused
RECORD_SKEW_S = 300.0  # a record may be dated at most this far ahead of this node's clock
KAD_IDLE_S = 5.0  # an inbound KAD stream's next request must arrive within this
#: inbound KAD streams: 2 per peer, 32 in all, each at most 30 s (a lookup needs one request per stream);
#: a peer's third waits up to 3 s for one of its two to end: a node's put beside its own lookups to the
#: same peer was refused on a loaded machine, and a claim that no one stored let a duplicate run
KAD_LIMITS = StreamLimits(per_peer=2, total=32, deadline_s=30.0, wait_s=3.0)
#: peers of one /24 (/48) in the whole routing table (go-libp2p's maxForTable); globally routable addresses only
TABLE_PEERS_PER_SUBNET = 3


class _DeadlineReads:
    """A stream whose every read must complete within `idle_s` (TooSlowError otherwise, which libp2p's
    handler treats like any read error: it resets the stream)."""

    def __init__(self, stream: Any, idle_s: float) -> None:
        self._stream = stream
        self._idle_s = idle_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def read(self, n: int | None = None) -> bytes:
        with trio.fail_after(self._idle_s):
            return await self._stream.read(n)


class ExpValidator(Validator):
    """libp2p validator for ``/exp/<hex40>``: full record verification and the project's merge rule."""

    def validate(self, key: str, value: bytes) -> None:
        exp_id = exp_id_of_key(key)  # ValueError for a malformed key
        check_record_time(decode_record(value, exp_id), time.time())  # WireError (a ValueError) for a bad one

    def select(self, key: str, values: list[bytes]) -> int:
        exp_id = _exp_id_or_none(key)
        decoded: list[tuple[int, ExpRecord]] = []
        for i, v in enumerate(values):
            try:
                decoded.append((i, decode_record(v, exp_id)))
            except WireError:
                continue  # an invalid value never wins
        if not decoded:
            return 0
        best = decoded[select_best([r for _, r in decoded])][1]
        # Among byte-identical best values prefer the last: libp2p's PUT handler calls
        # select([existing, new]) and answers 0 with a reset; re-storing an identical record
        # must be acknowledged (and refreshes its age), not refused.
        best_bytes = values[next(i for i, r in decoded if r == best)]
        return max(i for i, v in enumerate(values) if v == best_bytes)


class _KadStreamFailureFilter(logging.Filter):
    """Drop libp2p's "Failed to open stream ... ['/ipfs/kad/1.0.0']" errors: DHT queries to busy or
    departed peers fail routinely and every caller here handles it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a log record that cannot format itself is let through, never dropped
            return True
        return not (msg.startswith("Failed to open stream") and KAD_PROTOCOL in msg)


def check_record_time(rec: ExpRecord, now: float) -> ExpRecord:
    """A record is bounded by this node's clock, not its author's: dated at most RECORD_SKEW_S ahead
    (a claim dated ten years ahead held its experiment for ten years, measured by fuzzing), so a
    claim's lease ends at most MAX_LEASE_SECONDS + RECORD_SKEW_S from now."""
    if rec.ts > now + RECORD_SKEW_S:
        raise WireError(f"record dated {rec.ts - now:.0f} s in the future")
    return rec


def _exp_id_or_none(key: str) -> str | None:
    try:
        return exp_id_of_key(key)
    except ValueError:
        return None


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8")


class ExperimentDHT:
    """Experiment records in a Kademlia DHT (server mode). Start with ``await nursery.start(dht.run)``."""

    def __init__(
        self,
        host: IHost,
        *,
        put_timeout: float = PUT_TIMEOUT,
        get_timeout: float = GET_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
        log_level: int | None = logging.ERROR,
        auto_refresh: bool = False,
        streams: StreamGuard | None = None,
    ) -> None:
        # Kademlia's periodic refresh looks up random ids and dials nearly every peer it learns of: on one
        # machine that turns a sparse swarm into a full mesh and doubles each node's idle CPU (measured
        # with bench/bench_gossip.py: 14 -> 9 peers per node and 4.7 % -> 2.3 % of a core at N=15). The
        # routing table is filled from our connections every poll instead; `refresh()` stays callable.
        self.auto_refresh = auto_refresh
        self.host = host
        self.my_id = host.get_id()
        self.put_timeout = put_timeout
        self.get_timeout = get_timeout
        self.poll_interval = poll_interval
        self.refresh_interval = refresh_interval
        if log_level is not None:
            # libp2p's DHT logs a warning for every unreachable peer and every missing key.
            for name in ("libp2p.kad_dht", "libp2p.records"):
                logging.getLogger(name).setLevel(log_level)
            # ... and every failed KAD stream shows up as a multi-line ERROR of the host's logger.
            host_log = logging.getLogger("libp2p.host.basic_host")
            if not any(isinstance(f, _KadStreamFailureFilter) for f in host_log.filters):
                host_log.addFilter(_KadStreamFailureFilter())
        # py-libp2p keeps at most 2 peers of one /24 (/48) per k-bucket already; the cap over the whole
        # table is off by default there, and go-libp2p's is 3: so is ours (eclipse, docs/security.md)
        self.kad = KadDHT(host, DHTMode.SERVER, strict_validation=True,
                          max_peers_per_subnet_table=TABLE_PEERS_PER_SUBNET)
        self.kad.register_validator(NAMESPACE, ExpValidator())
        self._guard_server(streams)
        self.stats: dict[str, Any] = {
            "puts": 0, "put_acks": 0, "gets": 0, "found": 0, "not_found": 0, "invalid_remote": 0,
            "corrections": 0, "refreshes": 0,
        }  # fmt: skip
        self._nursery: trio.Nursery | None = None
        self._refused: dict[ID, float] = {}
        self._rlog = RateLimitedLog(log, interval=60.0)
        self._started = trio.Event()

    # --- the server side -------------------------------------------------------------------------

    def _guard_server(self, streams: StreamGuard | None) -> None:
        """Serve KAD requests behind our stream guard instead of libp2p's handler.

        py-libp2p 0.8.1's handler allows 12 inbound streams for the whole node, reads each with no
        deadline and loops on a stream until the peer closes it: twelve idle streams from anyone
        refused every honest lookup for as long as they stayed open (measured). Here a peer holds at
        most KAD_LIMITS.per_peer streams, each read must arrive within KAD_IDLE_S and a stream lives at
        most KAD_LIMITS.deadline_s; libp2p's per-stream loop (``_do_handle_stream``, which handles every
        message kind inline) does the rest. Re-registering through ``handle_stream`` keeps
        ``switch_mode`` from putting libp2p's handler back.
        """
        kad = self.kad
        if streams is None:
            streams = StreamGuard.standalone(self.host)
        serve_one = getattr(kad, "_do_handle_stream", None)
        if serve_one is None:  # another libp2p version: keep its handler, say so once
            log.warning("libp2p %s has no KadDHT._do_handle_stream: the DHT server runs unguarded",
                        getattr(kad, "__module__", "?"))
            return

        async def handler(stream: Any) -> None:
            if kad.mode == DHTMode.CLIENT:
                await stream.close()
                return
            await serve_one(_DeadlineReads(stream, KAD_IDLE_S))

        kad.handle_stream = streams.register(KAD_PROTOCOL, handler, KAD_LIMITS)

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the DHT service and the routing-table upkeep until cancelled."""
        async with background_trio_service(self.kad), trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._upkeep_loop, name="dht-upkeep")
            self._started.set()
            task_status.started()

    async def _upkeep_loop(self) -> None:
        """Add connected peers to the routing table; refresh it on first peers and periodically."""
        next_refresh: float | None = None
        interval = self.refresh_interval
        while True:
            added = await self.sync_routing_table()
            now = trio.current_time()
            if added and next_refresh is None:
                next_refresh = now  # the first peers joined: refresh at once
            if self.auto_refresh and next_refresh is not None and now >= next_refresh:
                await self.refresh()
                next_refresh = trio.current_time() + interval * random.uniform(0.8, 1.2)
                # A refresh dials nearly every peer it learns of: in a 35-process swarm on 2 cores a
                # fixed 30 s period costs more CPU than the gossip itself. Back off to REFRESH_MAX.
                interval = min(interval * 2, REFRESH_MAX)
            await trio.sleep(self.poll_interval)

    async def sync_routing_table(self) -> int:
        """Add every connected KAD-speaking peer to the routing table now; returns how many were new."""
        rt = self.kad.routing_table
        ps = self.host.get_peerstore()
        now = trio.current_time()
        added = 0
        for pid in list(self.host.get_connected_peers()):
            if pid == self.my_id or rt.peer_in_table(pid) or self._refused.get(pid, 0) > now:
                continue
            try:
                ok = await self.kad.add_peer(pid)
            except Exception as e:  # noqa: BLE001 - never let upkeep die on a libp2p quirk
                ok = False
                self._rlog.log(logging.DEBUG, "add_peer", "add_peer %s failed: %s", pid, e)
            if ok:
                added += 1
            else:
                self._refused[pid] = now + REJECT_RETRY
        # A peer whose identify result lacks the KAD protocol (DHT off) leaves the table.
        for pid in list(rt.get_peer_ids()):
            try:
                protos = ps.get_protocols(pid)
            except Exception:  # noqa: BLE001 - a peer the peerstore no longer knows: skipped
                continue
            if protos and KAD_PROTOCOL not in protos:
                rt.remove_peer(pid)
        return added

    async def refresh(self) -> None:
        """One bounded routing-table refresh (lookups of our own id and of a random id per bucket)."""
        self.stats["refreshes"] += 1
        with trio.move_on_after(REFRESH_TIMEOUT):
            try:
                await self.kad.refresh_routing_table()
            except Exception as e:  # noqa: BLE001 - libp2p's refresh against peers: a failure is retried next period
                self._rlog.log(logging.DEBUG, "refresh", "routing table refresh failed: %s", e)

    def routing_table_size(self) -> int:
        return self.kad.get_routing_table_size()

    # --- local store -----------------------------------------------------------------------------

    def local_count(self) -> int:
        """How many (unexpired) experiment records this node stores."""
        return sum(1 for k in list(self.kad.value_store.store) if k.startswith(b"/exp/"))

    def get_local(self, exp_id: str) -> ExpRecord | None:
        """The record this node stores for ``exp_id`` (no network); None if none or invalid."""
        key = record_key(exp_id)
        return self._local(key, exp_id)[0]

    def _local(self, key: str, exp_id: str) -> tuple[ExpRecord | None, Record | None]:
        kb = _key_bytes(key)
        rec = self.kad.value_store.get(kb)
        if rec is None:
            return None, None
        try:
            return decode_record(rec.value, exp_id), rec
        except WireError as e:  # cannot happen via libp2p's handler (it validates); be safe anyway
            log.warning("dropping invalid local record %s: %s", key, e.reason)
            self.kad.value_store.remove(kb)
            return None, None

    # --- put -------------------------------------------------------------------------------------

    def _count_put(self, key: str, record: ExpRecord, acks: int) -> int:
        self.stats["put_acks"] += acks
        log.debug("dht put %s (%s): %d acks", key, record.state, acks)
        return acks

    async def put(self, record: ExpRecord, *, timeout: float | None = None, lookup: bool = True) -> int:
        """Store ``record`` locally and at the closest peers; return how many peers acknowledged it.

        Returns 0 without storing anything when this node already holds a more advanced record
        for the experiment (see ``select_record``).
        Raises ``WireError`` only for a record that this node itself would reject (a local bug).
        Remote failures and rejections (a peer holding a better record refuses an older one) only
        lower the count. Time-bounded by ``timeout`` (default ``put_timeout``, ~12 s).
        """
        key = record_key(record.exp_id)
        value = encode_record(record)
        decode_record(value, record.exp_id)
        kb = _key_bytes(key)
        self.stats["puts"] += 1
        local, _ = self._local(key, record.exp_id)
        if local is not None and local != record and select_best([local, record]) == 0:
            # We already hold a more advanced record (e.g. a result when a claim is put): peers
            # holding it would refuse ours, and a get anywhere prefers it. Nothing to do.
            log.debug("dht put %s (%s): a better record is stored locally; not stored", key, record.state)
            return 0
        self.kad.value_store.put(kb, value)  # signed by our host key, republished by libp2p
        pb = make_signed_put_record(kb, value, self.host.get_private_key())
        budget = self.put_timeout if timeout is None else timeout
        acks_box = [0]

        async def store(pid: ID) -> None:
            with trio.move_on_after(QUERY_TIMEOUT):
                try:
                    if await self.kad.value_store._store_at_peer(pid, kb, value, record=pb):
                        acks_box[0] += 1
                except Exception:  # noqa: BLE001 - one peer's store failing: the others' acks count
                    pass

        tried: set[ID] = {self.my_id}

        def store_at(nursery: trio.Nursery, peers: list[ID]) -> None:
            for pid in peers:
                if pid not in tried:
                    tried.add(pid)
                    nursery.start_soon(store, pid)

        with trio.move_on_after(budget):
            async with trio.open_nursery() as nursery:
                # Store at the closest peers we know at once. With `lookup`, a network lookup runs
                # meanwhile and any closer peers it finds get the record too; without it no new
                # connections are dialed (on one machine every new connection costs CPU that gossip needs).
                store_at(nursery, self._local_closest(kb))
                if lookup:
                    with trio.move_on_after(budget * 0.6):
                        try:
                            found = await self.kad.peer_routing.find_closest_peers_network(kb, REPLICATION)
                        except Exception as e:  # noqa: BLE001 - a lookup through peers: failing, the record is stored at the peers in hand
                            found = []
                            self._rlog.log(logging.DEBUG, "lookup", "closest-peer lookup failed: %s", e)
                        store_at(nursery, sort_peer_ids_by_distance(kb, [p for p in found if p != self.my_id]))
        return self._count_put(key, record, acks_box[0])

    def _local_closest(self, kb: bytes) -> list[ID]:
        """The REPLICATION closest peers to a key among the routing table and the connected peers."""
        local = self.kad.routing_table.find_local_closest_peers(kb, REPLICATION)
        pool = [p for p in dict.fromkeys([*local, *self.host.get_connected_peers()]) if p != self.my_id]
        return sort_peer_ids_by_distance(kb, pool)[:REPLICATION]

    # --- get -------------------------------------------------------------------------------------

    async def get(
        self, exp_id: str, *, timeout: float | None = None, quorum: int | None = None
    ) -> ExpRecord | None:
        """The best valid record for ``exp_id`` (local store and the closest peers), or None.

        Never raises for not-found, unreachable peers or timeouts (returns what it has by then);
        a malformed ``exp_id`` is a ValueError. Default bound ``get_timeout`` (~8 s). The lookup
        stops early once ``quorum`` valid records (default GET_QUORUM = 3, the local one included)
        are in hand; ``quorum=0`` asks all of the k closest peers.
        """
        rec, _, _ = await self._lookup(record_key(exp_id), timeout, quorum)
        return rec

    async def get_raw(
        self, key: str, *, timeout: float | None = None, quorum: int | None = None
    ) -> tuple[bytes | None, str]:
        """For ``dht get KEY``: the best value's raw bytes and where it came from (a short description)."""
        _rec, raw, where = await self._lookup(key, timeout, quorum)
        return raw, where

    async def _lookup(
        self, key: str, timeout: float | None, quorum: int | None
    ) -> tuple[ExpRecord | None, bytes | None, str]:
        exp_id = exp_id_of_key(key)
        kb = _key_bytes(key)
        self.stats["gets"] += 1
        local, local_pb = self._local(key, exp_id)
        # candidates: (source peer or None for local, record, protobuf record)
        found: list[tuple[ID | None, ExpRecord, Record]] = []
        if local is not None and local_pb is not None:
            found.append((None, local, local_pb))
        asked: dict[ID, bytes | None] = {}  # peer -> the value it answered (None: nothing / failed)
        budget = self.get_timeout if timeout is None else timeout
        t0 = trio.current_time()
        with trio.move_on_after(budget):
            await self._query_network(kb, exp_id, found, asked, GET_QUORUM if quorum is None else quorum)
        elapsed = trio.current_time() - t0
        if not found:
            self.stats["not_found"] += 1
            return None, None, f"not found (asked {len(asked)} peers in {elapsed:.1f}s)"
        self.stats["found"] += 1
        src, best, best_pb = found[select_best([r for _, r, _ in found])]
        value = encode_record(best)
        if src is not None and (local is None or local != best):
            self.kad.value_store.put_record(kb, best_pb)  # keep the author's libp2p signature
        outdated = [p for p, v in asked.items() if v is not None and v != value]
        if outdated and self._nursery is not None:
            self._nursery.start_soon(self._correct, kb, value, best_pb, outdated)
        holders = sum(1 for v in asked.values() if v == value)
        where = "local store" if src is None else f"peer {src.to_base58()}"
        return best, value, f"{where} ({holders}/{len(asked)} peers asked hold it, {elapsed:.1f}s)"

    async def _query_network(
        self, kb: bytes, exp_id: str, found: list[tuple[ID | None, ExpRecord, Record]],
        asked: dict[ID, bytes | None], quorum: int,
    ) -> None:  # fmt: skip
        """Iterative GET_VALUE with up to LOOKUP_ALPHA queries in flight, closest unasked peer first.

        Stops when ``found`` holds ``quorum`` valid records (the local one counts; 0: never), or
        when the REPLICATION closest peers known have all answered or failed. Fills ``found`` and
        ``asked`` as it goes (the caller bounds the time).
        """
        local_closest = self.kad.routing_table.find_local_closest_peers(kb, REPLICATION)
        known = [
            p for p in dict.fromkeys([*local_closest, *self.host.get_connected_peers()]) if p != self.my_id
        ]
        state = {"in_flight": 0, "changed": trio.Event()}

        async def ask(pid: ID) -> None:
            closer: list[ID] = []
            try:
                with trio.move_on_after(QUERY_TIMEOUT):
                    try:
                        res = await self.kad.value_store._get_from_peer(
                            pid, kb, return_record=True, return_closer_peers=True
                        )
                    except Exception:  # noqa: BLE001 - one peer's answer failing: the others are asked
                        res = None
                    if isinstance(res, tuple):
                        rec, closer = res
                        if isinstance(rec, Record) and rec.value:
                            try:
                                r = check_record_time(decode_record(rec.value, exp_id), time.time())
                            except WireError as e:
                                self.stats["invalid_remote"] += 1
                                self._rlog.log(
                                    logging.INFO, f"bad:{pid}", "invalid record from %s: %s", pid, e.reason
                                )
                            else:
                                asked[pid] = rec.value
                                found.append((pid, r, rec))
                for c in closer or []:
                    if c != self.my_id and c not in known:
                        known.append(c)
            finally:
                state["in_flight"] -= 1
                state["changed"].set()

        async with trio.open_nursery() as nursery:
            while True:
                if quorum and len(found) >= quorum:
                    nursery.cancel_scope.cancel()
                    return
                top = sort_peer_ids_by_distance(kb, known)[:REPLICATION]
                todo = [p for p in top if p not in asked]
                if not todo and state["in_flight"] == 0:
                    return
                if todo and state["in_flight"] < LOOKUP_ALPHA:
                    asked[todo[0]] = None
                    state["in_flight"] += 1
                    nursery.start_soon(ask, todo[0])
                    continue
                await state["changed"].wait()
                state["changed"] = trio.Event()

    async def _correct(self, kb: bytes, value: bytes, pb: Record, peers: list[ID]) -> None:
        """Entry correction: push the best record to peers that answered an older one (best effort)."""
        with trio.move_on_after(CORRECTION_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for pid in peers:
                    nursery.start_soon(self._store_quietly, pid, kb, value, pb)

    async def _store_quietly(self, pid: ID, kb: bytes, value: bytes, pb: Record) -> None:
        try:
            if await self.kad.value_store._store_at_peer(pid, kb, value, record=pb):
                self.stats["corrections"] += 1
        except Exception:  # noqa: BLE001 - a correction is best effort: the record stays where it was
            pass
