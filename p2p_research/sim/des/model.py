"""The network a discrete-event simulation assumes: latency, GossipSub amplification, CPU, loss, NAT.

Every default is a measured figure of the real stack or a stated assumption about the world; the
source is named next to it (docs/scale.md lists them). Two machines matter:
- *one machine per node* (`cores` = 0): each daemon has one core for its event loop (Python runs the
  daemon on one thread) and hosts are a WAN apart;
- *one shared machine* (`cores` = 2, loopback latency): the 35-process runs of `simulate --engine
  process` on this 2-core machine, where every daemon's gossip work competes for the same two cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MASK = 2**64 - 1


def mix(a: int, b: int) -> float:
    """A uniform number in [0, 1) from two integers (splitmix64): the same pair always gives the same
    number, so a message's delivery to a node is reproducible without storing it."""
    z = (a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return ((z ^ (z >> 31)) & MASK) / 2**64


@dataclass
class NetModel:
    #: median one-hop latency between two daemons (s): 40 ms is a WAN hop; 1 ms for loopback
    hop_latency_s: float = 0.040
    #: spread of a hop's latency (sigma of the log-normal)
    hop_latency_sigma: float = 0.6
    #: GossipSub mesh degree D (net/gossip.py: 4): each node forwards a message to D mesh peers
    mesh_degree: int = 4
    #: copies of each publish a node receives (GossipSub sends to every mesh peer; IDONTWANT, sent only for
    #: messages >= 1 KiB, suppresses some): D
    amplification: float = 4.0
    #: CPU one publish costs each daemon, all copies included (docs/bench-gossip.md: 15.0 ms per posted
    #: message per daemon with the RPC patches, N = 15)
    cpu_per_publish_s: float = 0.015
    #: CPU of one DHT request at each end (calibrated on the real 35-process run with network.announce =
    #: kept, docs/scale.md: ~350 CPU s more than gossip alone for ~36,000 requests; py-libp2p's requests
    #: carry signed peer records and often a new connection)
    cpu_per_dht_rpc_s: float = 0.005
    #: a daemon's idle CPU, share of a core (docs/bench-gossip.md: 1.6-2.2 % with 4-9 connections)
    idle_cpu: float = 0.02
    #: CPU of a node's own work around a run: propose (dedup checks), commit, ledger (docs/bench-overhead.md:
    #: 0.023 s per experiment)
    own_work_s: float = 0.025
    #: bytes each daemon receives per publish, all copies and control traffic (measured in the 35-process run
    #: of docs/simulation.md: 625 MB sent by 35 daemons for 789 publishes)
    bytes_per_publish: float = 22_600.0
    #: bytes each end receives per DHT request (the same calibration: ~700 MB for ~36,000 requests)
    bytes_per_dht_rpc: float = 10_000.0
    #: a node's inbound bandwidth (bytes/s): 100 Mbit/s
    bandwidth_bytes_s: float = 12.5e6
    #: cores of the machine all nodes share; 0: one machine per node, each daemon with one core
    cores: float = 0.0
    #: share of messages a node misses (then gets by anti-entropy, every `anti_entropy_s`)
    loss: float = 0.0
    anti_entropy_s: float = 60.0
    #: share of nodes behind NAT: their traffic takes one more hop (a relay)
    nat_share: float = 0.0
    #: Kademlia: replicas of a record (k) and parallel lookups (alpha)
    dht_k: int = 20
    dht_alpha: int = 3
    #: seconds a restarted node needs to catch up on what it missed (catch-up protocol, one peer)
    catch_up_s: float = 5.0

    def mean_hops(self, n: int) -> float:
        """Mean hops of a flooded message to one node of an n-node mesh of degree D: log_D(n - 1)."""
        return math.log(n - 1) / math.log(max(2, self.mesh_degree)) if n > 2 else 0.5

    @staticmethod
    def hops(mean: float, u: float) -> int:
        """Hops to one node (u uniform in [0, 1)): the mean rounded up or down, at least one."""
        return max(1, int(mean + u - 0.5))

    def hop_delay(self, u: float, hops: int = 1) -> float:
        """The mean latency of `hops` hops (u uniform in [0, 1)): a log-normal around the median, its
        spread narrowing as 1/sqrt(hops) (the average of independent hops)."""
        return self.hop_latency_s * math.exp(self.hop_latency_sigma * _Z[int(u * len(_Z))] / math.sqrt(max(1, hops)))

    def dht_hops(self, n: int) -> int:
        """Iterative Kademlia lookup rounds to find a key among n nodes: about log2(n) / log2(alpha + 1)."""
        return max(1, math.ceil(math.log2(max(2, n)) / math.log2(self.dht_alpha + 1)))

    def dht_rpcs_per_lookup(self, n: int) -> int:
        return self.dht_alpha * self.dht_hops(n)


def _erfinv(y: float) -> float:
    """Inverse error function (Giles' single-precision approximation; enough for latency draws)."""
    w = -math.log((1.0 - y) * (1.0 + y))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                  -0.00417768164, 0.246640727, 1.50140941):
            p = c + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                  0.00943887047, 1.00167406, 2.83297682):
            p = c + p * w
    return p * y


def queue_delay(service_s: float, utilisation: float) -> float:
    """Mean time a message waits and is served at a daemon whose CPU is `utilisation` busy (M/M/1)."""
    return service_s / (1.0 - min(utilisation, 0.98))


_Z = [math.sqrt(2) * _erfinv(2 * (i + 0.5) / 4096 - 1) for i in range(4096)]  # standard normal quantiles
