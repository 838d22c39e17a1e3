"""Virtual time, the modelled network and what every message costs: the world the virtual nodes live in.

Nothing here decides research: the nodes (vnode.py) drive the project's own state machines. The world
keeps the clock (a heap of events), the messages each node published, and answers, for any message and
node, *when* that node receives it: hops x (a hop's latency + the CPU queue at each daemon), later for
a node behind NAT (one relay hop), missed by loss (then delivered by anti-entropy) or while the node was
down (then delivered by its catch-up). Deliveries are computed when a node looks, never stored per
(message, node): a 10,000-node swarm would need 10^9 of them.

Two protocols are modelled (`announce`):
- `all` (the protocol of the real daemon today): claims and every result are flooded to the swarm, so
  every node's inbound load grows with N;
- `kept`: only kept results, verifications and presence are flooded; claims and other results go to
  the DHT (put to k nodes), and a node asks the DHT about a candidate before it runs it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from p2p_research.research import flooding
from p2p_research.research.ownership import HashRing
from p2p_research.sim.des.model import NetModel, mix, queue_delay

BATCH_WAIT_S = 2.0   # net/gossip.py: results and verifications wait this long for the sender's next claim
BIN_S = 1.0          # load is accounted per second of virtual time
LOAD_WINDOW_S = 10.0  # a daemon's CPU utilisation: the demand of the last 10 s

Process = Generator[float, None, None]


@dataclass
class Message:
    seq: int
    kind: str            # claim | result | verification | baseline
    peer: int            # the publisher (node index)
    t: float             # when it was published
    exp_id: str = ""
    status: str = ""     # result: kept | discarded | crash | baseline; verification: confirmed | refuted
    value: float | None = None
    commit: str = ""
    parent: str = ""
    seed: int = 0
    target: int = -1     # verification: whose claim was re-run
    claimed: float | None = None
    flooded: bool = True  # sent over gossip (else stored in the DHT only)
    sent: float = math.inf  # when it left in a gossip publish (results wait in the outbox, net/gossip.py)
    wait: float = 0.0       # CPU queue per hop when it left
    reach: float = 1.0      # records only: the share of forwarders that pass it on (flooding.forwards_kept)


@dataclass
class Load:
    """Per-second counters of what the swarm sent (for the load a node sees)."""

    publishes: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    dht_rpcs: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    own_work: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    by_kind: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))


class World:
    def __init__(self, n: int, net: NetModel, announce: str = "all", seed: int = 0) -> None:
        if announce not in flooding.MODES:
            raise ValueError(f"announce must be one of {', '.join(flooding.MODES)}")
        # `auto` turns sparse once a node hears more than AUTO_SPARSE_PEERS peers: at once, for a swarm that large
        announce = "kept" if flooding.sparse(announce, n - 1) else "all"
        self.n = n                      # swarm nodes (the solo node is outside the network)
        self.net = net
        self.announce = announce
        self.seed = seed
        self.t = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.messages: list[Message] = []
        self.flooded: list[Message] = []            # kept results, verifications, baselines (every mode)
        self.claims: dict[str, list[Message]] = defaultdict(list)   # exp id -> claims
        self.results: dict[str, list[Message]] = defaultdict(list)  # exp id -> results
        self.first_claim: dict[str, int] = {}       # exp id -> the node whose claim came first
        self.load = Load()
        self.ring = HashRing()                      # every node heard (flooding: every view is the same)
        self.peers: dict[str, None] = {}
        self.down: dict[int, list[tuple[float, float]]] = defaultdict(list)  # node -> (from, until)
        self.nat: set[int] = set()
        self._backlog = 0.0     # seconds of queued gossip work at a daemon (utilisation above 1)
        self._backlog_bin = -1
        self.utilisation: dict[int, float] = {}   # second -> a daemon's CPU utilisation
        self.outbox: dict[int, list[Message]] = defaultdict(list)
        self._demand: dict[int, float] = {}
        self._mean_hops = net.mean_hops(n)
        self.processes = n + 1  # daemons sharing the machine when `cores` > 0 (the solo node included)
        self.nodes: list[Any] = []  # the virtual nodes, by index (vnode.VirtualNode)
        self.forward_records_only = False  # DesOptions.forward_records_only
        self.margin = 0.002

    # --- the clock --------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def spawn(self, process: Process, start: float) -> Proc:
        """Run a generator process from `start`: each value it yields is a delay in seconds."""
        proc = Proc(self, process)
        proc.resume_at(start)
        return proc

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, fn = heapq.heappop(self._heap)
            self.t = t
            self._settle_backlog(t)
            fn()
        self.t = t_end

    # --- load and delay ---------------------------------------------------------------------------
    def demand(self, t: float) -> float:
        """A daemon's CPU demand in cores at `t` (the average of the last LOAD_WINDOW_S)."""
        b1 = int(t)
        if b1 < int(self.t):  # a past second: its counters are final
            cached = self._demand.get(b1)
            if cached is None:
                cached = self._demand[b1] = self._demand_at(t)
            return cached
        return self._demand_at(t)

    @staticmethod
    def _rate(counts: dict[int, Any], t: float) -> float:
        """Per second over the LOAD_WINDOW_S up to `t` (shorter at the start) of per-second `counts`."""
        b1 = int(t)
        span = max(1.0, min(LOAD_WINDOW_S, t)) if t > 0 else 1.0
        return sum(counts.get(b, 0) for b in range(max(0, b1 - int(LOAD_WINDOW_S) + 1), b1 + 1)) / span

    def _demand_at(self, t: float) -> float:
        net, load, n = self.net, self.load, max(1, self.n)
        return net.idle_cpu + (self._rate(load.publishes, t) * net.cpu_per_publish_s
                               + 2 * self._rate(load.dht_rpcs, t) * net.cpu_per_dht_rpc_s / n
                               + self._rate(load.own_work, t) / n)

    def capacity(self) -> float:
        """Cores one daemon has: its own (one machine per node) or its share of the shared machine."""
        return 1.0 if self.net.cores <= 0 else self.net.cores / self.processes

    def rho(self, t: float) -> float:
        """Utilisation of the core(s) a daemon runs on."""
        return self.demand(t) / self.capacity()

    def _settle_backlog(self, t: float) -> None:
        """Integrate the overload of each elapsed second into a backlog of queued work."""
        b = int(t)
        while self._backlog_bin < b:
            self._backlog_bin += 1
            r = self.rho(self._backlog_bin)
            self.utilisation[self._backlog_bin] = r
            self._backlog = max(0.0, self._backlog + (r - 1.0) * BIN_S)

    def link_wait(self, t: float) -> float:
        """Time one copy of a message spends on a node's inbound link at `t`, queue included (M/M/1 at
        the link's utilisation by the swarm's publishes)."""
        net = self.net
        utilisation = self._rate(self.load.publishes, t) * net.bytes_per_publish / net.bandwidth_bytes_s
        return queue_delay(net.bytes_per_publish / max(1.0, net.amplification) / net.bandwidth_bytes_s, utilisation)

    def cpu_wait(self, t: float, service_s: float) -> float:
        """How long a piece of work of `service_s` CPU seconds takes at a daemon at `t`, queue included
        (M/M/1 at the utilisation of the daemon's core, or of the shared machine)."""
        return queue_delay(service_s, self.rho(t)) + self._backlog

    def delivery(self, m: Message, node: int) -> float:
        """When `node` has `m` (math.inf: never, e.g. its own)."""
        if m.peer == node or m.sent == math.inf:
            return math.inf
        net = self.net
        hops = net.hops(self._mean_hops, mix(m.seq, node)) + (1 if node in self.nat or m.peer in self.nat else 0)
        # the sum of `hops` log-normal hop latencies, drawn as one log-normal of the same median and mean
        latency = hops * net.hop_delay(mix(m.seq * 7, node), hops)
        t = m.sent + latency + hops * m.wait
        if m.reach < 1.0 and hops > 1 and mix(m.seq * 19, node) >= m.reach ** (hops - 1):
            return math.inf  # stopped at a hop whose node knew better (it is in the DHT; catch-up serves it)
        if net.loss and mix(m.seq * 13, node) < net.loss:
            t += net.anti_entropy_s * (0.5 + mix(m.seq * 17, node))
        for start, until in self.down.get(node, ()):
            if start <= t < until:
                return until + net.catch_up_s
        return t

    def down_until(self, node: int, t: float) -> float | None:
        """When a node that is down at `t` is back (None: it is up)."""
        for s, u in self.down.get(node, ()):
            if s <= t < u:
                return u
        return None

    # --- publishing -------------------------------------------------------------------------------
    def publish(self, m: Message) -> Message:
        m.seq = len(self.messages)
        self.messages.append(m)
        is_sparse = self.announce == "kept"
        flood = (m.kind == "claim" and flooding.floods_claim(is_sparse)) or (
            m.kind in ("result", "baseline") and flooding.floods_result(is_sparse, m.status)) or m.kind in (
            "verification", "presence")  # an unflooded confirmation never reaches publish (vnode.py)
        m.flooded = flood
        if flood:
            self.load.by_kind[m.kind] += 1
            if m.kind in ("claim", "presence"):  # leaves at once, with whatever waits in the outbox
                self.flush(m.peer, m)
            else:
                box = self.outbox[m.peer]
                box.append(m)
                if len(box) == 1:
                    self.at(m.t + BATCH_WAIT_S, lambda p=m.peer: self.flush(p))
        else:  # a DHT put: a lookup for the k closest nodes, then k stores
            m.sent = m.t
            self.load.dht_rpcs[int(m.t)] += self.net.dht_rpcs_per_lookup(self.n) + min(self.net.dht_k, max(1, self.n - 1))
            self.load.by_kind[f"{m.kind} (DHT)"] += 1
        if m.kind == "verification" or (m.kind == "result" and m.status == "kept"):
            self.flooded.append(m)  # what a node's swarm state takes in (baselines and presence only load it)
        if m.kind == "claim":
            self.claims[m.exp_id].append(m)
            self.first_claim.setdefault(m.exp_id, m.peer)
        elif m.kind in ("result", "baseline"):
            self.results[m.exp_id].append(m)
        name = peer_name(m.peer)
        if name not in self.peers:
            self.peers[name] = None
            self.ring.add(name)
        return m

    def flush(self, peer: int, extra: Message | None = None) -> None:
        """One gossip publish: the outbox of `peer` and `extra` leave together (net/gossip.py's Bundle)."""
        batch, self.outbox[peer] = self.outbox[peer], []
        if extra is not None:
            batch.append(extra)
        if not batch:
            return
        wait = self.cpu_wait(self.t, self.net.cpu_per_publish_s) + self.link_wait(self.t)
        for m in batch:
            m.sent, m.wait = self.t, wait
            if self.forward_records_only and self.announce == "kept" and m.kind == "result" and m.status == "kept":
                m.reach = self._forwarded_share(m)
        # the copies a node receives: all of them, or the share of the mesh that passed the batch on
        self.load.publishes[int(self.t)] += max(m.reach for m in batch)

    def _forwarded_share(self, m: Message, sample: int = 64) -> float:
        """The share of nodes (a sample of up to `sample`, by the message's own hash) that would pass `m` on."""
        if not self.nodes:
            return 1.0
        picks = [int(mix(m.seq * 23 + k, k) * len(self.nodes)) for k in range(min(sample, len(self.nodes)))]
        votes = [forwards_kept(m.value, self.nodes[i].loop.baseline_value, self.margin) for i in picks]
        return max(1e-3, sum(votes) / len(votes))

    def dht_lookup(self, t: float) -> float:
        """Count one DHT lookup at `t`; returns how long it takes."""
        net = self.net
        self.load.dht_rpcs[int(t)] += net.dht_rpcs_per_lookup(self.n)
        return net.dht_hops(self.n) * (2 * net.hop_latency_s + self.cpu_wait(t, net.cpu_per_dht_rpc_s))

    def dht_stored_at(self, t: float) -> float:
        """When a record put at `t` is stored (its put's hops there and back)."""
        return t + self.net.dht_hops(self.n) * 2 * self.net.hop_latency_s

    def in_dht(self, m: Message, t: float) -> bool:
        """Whether a record published by `m` is found by a lookup at `t` (stored once its put finished)."""
        return t >= self.dht_stored_at(m.t)

    def own_work(self, t: float, seconds: float) -> None:
        self.load.own_work[int(t)] += seconds


class Proc:
    """A process of virtual time: a generator resumed after each delay it yields. `interrupt` resumes
    it early (a run stopped by a winning claim); the pending resume is then dropped."""

    def __init__(self, world: World, gen: Process) -> None:
        self.world = world
        self.gen = gen
        self.token = 0
        self.interrupted = False
        self.done = False

    def resume_at(self, t: float) -> None:
        self.token += 1
        mine = self.token
        self.world.at(t, lambda: self._resume(mine))

    def _resume(self, expected: int) -> None:
        if expected != self.token or self.done:
            return
        try:
            delay = next(self.gen)
        except StopIteration:
            self.done = True
            return
        self.resume_at(self.world.t + max(0.0, delay))

    def interrupt(self, t: float) -> None:
        self.interrupted = True
        self.resume_at(t)


def forwards_kept(value: float | None, baseline_value: float | None, margin: float) -> bool:
    """An experiment of the simulator only (DesOptions.forward_records_only; docs/scale.md says what it
    did): a sparse node passes a peer's kept result on only where it beats the node's own adopted baseline
    by the margin it would adopt with, so a non-record stops at the first hop that knows better (it still
    reaches the publisher's mesh and the DHT). The reference is the node's adopted baseline, never a value
    it merely heard, so a liar's made-up record could not stop honest ones."""
    if value is None or baseline_value is None:
        return True
    return value < baseline_value - margin


def peer_name(i: int) -> str:
    """A virtual node's peer id (stable, sortable, distinct)."""
    return f"v{i:05d}"

