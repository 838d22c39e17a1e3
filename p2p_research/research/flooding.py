"""What a node floods to the whole swarm, and what it only stores in the DHT (pure decisions).

Flooding every claim and every result gives each node an inbound load proportional to the swarm: at
N nodes running one experiment per `cost` seconds, N/cost claims and N/cost results per second reach
every node (docs/scale.md: 80 messages/s per node at 300 nodes, a whole core at ~1,000). Most of it
is worth little to a node far away: a claim matters only to a node about to propose the same
candidate, and ownership (research/ownership.py) already keeps nodes apart; a discarded result
matters only to a node that would re-run it. So, `sparse`:
- claims and results that were not kept go to the DHT only (the k nodes closest to the experiment's
  key), where a node asks about a candidate it is about to run;
- kept results are flooded (every node may adopt them; they get rarer as the swarm converges);
  measurements of a baseline are not (nobody adopts them, and every node of a swarm that starts at
  once measures the genesis: 10,000 of them in a minute saturated every node in the simulator);
- a confirmation is flooded by the `replicas` designated re-runners only (the votes every other node
  waits for); other confirmations stay local; a refutation is always flooded (rare, and it protects
  others from a liar);
- each node floods a small presence message every `presence_interval` (5 minutes, longer in a swarm
  so large that the presence messages would add up to more than PRESENCE_PER_S per second), so every
  node still knows the members that ownership and replicas are assigned over (a peer stays a member
  for 2.5 intervals).
`auto` floods everything while the swarm is small (every view complete: SWARM.md, dashboards) and
turns sparse once a node has heard from more than AUTO_SPARSE_PEERS peers within ten minutes.
"""

from __future__ import annotations

from collections.abc import Callable

from p2p_research.research.ownership import OWNER_MEMORY_S

MODES = ("auto", "all", "kept")
AUTO_SPARSE_PEERS = 100
PRESENCE_S = 300.0
# per proposal: the DHT is then the only record of other nodes' claims (docs/scale.md: 16 lookups left
# 1.4 % of experiments duplicated at 300 nodes over 20 minutes, 64 left 0.4 %, at the same load)
DHT_LOOKUPS_SPARSE = 64
# a sparse node's claim is in the DHT only: the node looks it up again this long after its put lands,
# then after each pause in turn (the contest, daemon/announcer.py; the DES's VirtualNode does the same).
# A lookup made a moment before another node's put lands misses it; a put under load can take seconds
CONTEST_CHECKS_S = (1.0, 3.0, 8.0)


PRESENCE_PER_S = 2.0  # swarm-wide presence messages per second at most: 8 copies/s, ~12 % of a core per node


def presence_interval(peers_heard: int) -> float:
    """How often a sparse node announces its presence: every 5 minutes, or so that the whole swarm sends
    at most PRESENCE_PER_S per second (one message per node per N / 2 seconds: 83 minutes at 10,000)."""
    return max(PRESENCE_S, peers_heard / PRESENCE_PER_S)


def member_memory(peers_heard: int) -> float:
    """How long a silent peer stays a member (owns candidates, may be a replica): 2.5 presence intervals."""
    return 2.5 * presence_interval(peers_heard)


def member_memory_for(mode: str) -> Callable[[int], float]:
    """`Ownership`'s memory under announce `mode`: 2.5 presence intervals while sparse (members speak only
    by presence), else ownership's own OWNER_MEMORY_S (every claim tells who is active)."""
    def memory(peers_heard: int) -> float:
        return member_memory(peers_heard) if sparse(mode, peers_heard) else OWNER_MEMORY_S
    return memory


def sparse(mode: str, peers_heard: int) -> bool:
    if mode not in MODES:
        raise ValueError(f"announce mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode == "kept" or (mode == "auto" and peers_heard > AUTO_SPARSE_PEERS)


def floods_claim(is_sparse: bool) -> bool:
    return not is_sparse


FLOODED_WHEN_SPARSE = frozenset({"kept"})  # the result statuses a sparse node floods (and serves by catch-up)


def floods_result(is_sparse: bool, status: str, for_peers: bool = False) -> bool:
    """`for_peers`: a genesis measurement this node made for the peers that skipped theirs
    (research/genesis.py): flooded even once the node turned sparse, or they would wait for it in vain
    (about a quarter of the nodes that started while the swarm was small, once each)."""
    return not is_sparse or status in FLOODED_WHEN_SPARSE or (for_peers and status == "baseline")


def served_statuses(is_sparse: bool) -> frozenset[str] | None:
    """The result statuses catch-up serves: what the node floods (None: every one)."""
    return FLOODED_WHEN_SPARSE if is_sparse else None


def floods_verification(is_sparse: bool, verdict: str, designated: bool) -> bool:
    return not is_sparse or verdict != "confirmed" or designated
