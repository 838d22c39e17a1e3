"""What this node tells the swarm and what it asks the DHT: claims, results, presence, dedup lookups.

Which messages are flooded and which go to the DHT only is decided by `research/flooding.py` (pure);
this class carries the decisions out with the node's network. Its dependencies are named in
`AnnouncerDeps`, so it holds no reference back to the daemon.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from p2p_research.daemon.messages import make_claim, make_result
from p2p_research.research import flooding
from p2p_research.research.io.context import ResearchContext
from p2p_research.research.ownership import Ownership
from p2p_research.store.ledger import Run
from p2p_research.wire import Claim
from p2p_research.wire.records import ExpRecord

log = logging.getLogger("p2p_research.daemon")

DHT_LOOKUP_S = 3.0
DHT_LOOKUPS_PER_PROPOSAL = 5
DHT_PROPOSAL_S = 15.0  # DHT lookups one proposal may spend (each one is bounded by DHT_LOOKUP_S too)


@dataclass
class AnnouncerDeps:
    """`net` is the node's network (publish, peers, dht); `owners` the peers heard recently, shared with
    the coordinator; `start_soon` starts a background task in the daemon's nursery (DHT puts);
    `expected_seconds` the current run length (a claim's lease); `caught_up` whether a catch-up from a
    peer delivered (gossip then keeps the ledger current)."""

    ctx: ResearchContext
    net: Any
    key_pair: Any
    peer_id: str
    mode: str
    owners: Ownership
    start_soon: Callable[..., None]
    expected_seconds: Callable[[], float | None]
    caught_up: Callable[[], bool]
    measured_for_peers: Callable[[Run], bool] = lambda run: False  # a genesis measurement peers wait for
    running: Callable[[str], bool] = lambda exp_id: False  # whether a worker runs this experiment now
    on_dht_claim: Callable[[Claim], Awaitable[Any]] | None = None  # another node's claim found in the DHT


class Announcer:
    def __init__(self, deps: AnnouncerDeps) -> None:
        self.deps = deps
        self.last_presence = 0.0  # when a sparse peer last said it is alive: some peers flood no claims
        self._lookups_left = DHT_LOOKUPS_PER_PROPOSAL
        self._deadline = time.monotonic() + DHT_PROPOSAL_S

    # --- the protocol ---------------------------------------------------------------------------
    def sparse(self) -> bool:
        """Whether this node floods only kept results (research/flooding.py): network.announce, and for
        `auto` the number of peers heard within the last ten minutes."""
        owners = self.deps.owners
        owners.expire(time.time())
        return flooding.sparse(self.deps.mode, len(owners.heard))

    def serves(self) -> frozenset[str] | None:
        """The result statuses catch-up serves: what this node floods (else anti-entropy would carry
        every result everywhere); None: all."""
        return flooding.served_statuses(self.sparse())

    def on_presence(self) -> None:
        self.last_presence = time.time()

    def new_proposal(self) -> None:
        """A fresh DHT lookup budget for the next proposal."""
        self._lookups_left = flooding.DHT_LOOKUPS_SPARSE if self.sparse() else DHT_LOOKUPS_PER_PROPOSAL
        self._deadline = time.monotonic() + DHT_PROPOSAL_S

    # --- announcing -----------------------------------------------------------------------------
    async def announce_claim(self, exp_id: str, commit: str, description: str, semantic_id: str = "",
                             by_code: bool = False) -> None:
        d = self.deps
        claim = make_claim(d.ctx, d.peer_id, exp_id, commit, description, d.expected_seconds(), semantic_id)
        d.ctx.ledger.add_claim(claim.exp_id, claim.peer, claim.protocol_id, claim.parent, claim.lease_until,
                               claim.description, claim.ts, claim.semantic_id)
        if flooding.floods_claim(self.sparse()):
            await d.net.publish(claim)
            self.put_dht_claim(claim, commit)
        elif self.dht() is not None:
            d.start_soon(self._contest, claim, commit)
        if by_code and semantic_id:  # an agent's edit: late joiners find its code key in the DHT too
            self.put_dht_claim(claim, commit, key_id=semantic_id)

    async def announce_result(self, run: Run) -> None:
        d = self.deps
        msg = make_result(d.ctx, run, d.key_pair, d.peer_id)
        if run.run_id is not None:
            d.ctx.ledger.set_run_receipt(run.run_id, msg.receipt.canonical_bytes(), msg.signature, msg.public_key)
        if flooding.floods_result(self.sparse(), msg.receipt.status, d.measured_for_peers(run)):
            await d.net.publish(msg)
        self.put_dht_result(msg)

    async def announce_presence(self) -> None:
        """While sparse, a presence message every `flooding.presence_interval`: claims no longer tell
        every node who is active."""
        from p2p_research.wire import Presence

        d = self.deps
        while True:
            if self.sparse() and d.net.peers():  # once connected: a message with no mesh would go nowhere
                try:
                    await d.net.publish(Presence(d.peer_id, d.ctx.protocol_id, time.time()))
                except Exception as e:  # noqa: BLE001 - best effort, like every announcement
                    log.warning("could not announce presence: %s: %s", type(e).__name__, e)
                await trio.sleep(flooding.presence_interval(len(d.owners.heard)))
            else:
                await trio.sleep(2.0)

    # --- the DHT ---------------------------------------------------------------------------------
    def dht(self) -> Any:
        return getattr(self.deps.net, "dht", None)

    def put_dht_claim(self, claim: Any, commit: str, key_id: str = "") -> None:
        """The claim's DHT record, under its experiment id (or, with `key_id`, its code key)."""
        if self.dht() is None:
            return
        self.deps.start_soon(self._put, self._claim_record(claim, commit, key_id), self.sparse())

    def _claim_record(self, claim: Claim, commit: str, key_id: str = "") -> Any:
        """The claim's signed DHT record, with the claim's own time (the contest compares claims by it)."""
        from p2p_research.wire.records import make_claim_record

        return make_claim_record(key_id or claim.exp_id, commit, claim.lease_until, self.deps.key_pair, ts=claim.ts)

    async def _contest(self, claim: Claim, commit: str) -> None:
        """A sparse node's claim: put in the DHT, then looked up again while its run is young. Claims are
        in the DHT only, and a lookup made a moment before another node's put lands misses it: two nodes
        then run the same experiment (seen under load, 6 ms apart). The DHT keeps one claim per
        experiment (the newer lease), so the node that claimed first may never see the other's; each side
        that finds another node's live claim therefore floods its own, once, and takes the other's
        through intake: both then settle it by the claim rule (the earlier claim runs), as flooding nodes
        do. It costs one gossip message per contest."""
        await self._put(self._claim_record(claim, commit), lookup=True)
        told = False
        for delay in flooding.CONTEST_CHECKS_S:
            await trio.sleep(delay)
            dht = self.dht()
            if dht is None or not self.deps.running(claim.exp_id):
                return
            rec = None
            with trio.move_on_after(DHT_LOOKUP_S):
                try:
                    rec = await dht.get(claim.exp_id)
                except Exception as e:  # noqa: BLE001 - a failed lookup leaves the run as it is
                    log.debug("DHT get failed: %s", e)
            if rec is None or rec.peer == self.deps.peer_id or rec.state != "claim" or rec.lease_until <= time.time():
                continue
            log.info("experiment %s is claimed by %s too: settling it by the earlier claim", claim.exp_id[:10],
                     rec.peer[:16])
            if not told:
                told = True
                await self.deps.net.publish(claim)
            if self.deps.on_dht_claim is not None:
                theirs = dataclasses.replace(claim, peer=rec.peer, ts=rec.ts, lease_until=rec.lease_until,
                                             semantic_id="")
                refused = await self.deps.on_dht_claim(theirs)
                if refused:
                    log.info("%s's claim on %s does not count here: %s", rec.peer[:16], claim.exp_id[:10], refused)

    def put_dht_result(self, msg: Any) -> None:
        if self.dht() is None:
            return
        from p2p_research.wire.records import make_result_record

        self.deps.start_soon(self._put, make_result_record(msg.receipt, msg.signature, self.deps.key_pair), self.sparse())

    async def _put(self, record: Any, lookup: bool = False) -> None:
        try:
            # Flooding: only the peers already known (gossip told every live node, the DHT is memory for
            # late joiners, and a lookup per put would dial most of the swarm). Sparse: the DHT is the
            # record other nodes ask, so the put looks up the closest nodes.
            await self.dht().put(record, lookup=lookup)
        except Exception as e:  # noqa: BLE001 - the DHT is memory for late joiners, never a reason to stop
            log.debug("DHT put failed: %s", e)

    async def dht_record(self, exp_id: str) -> ExpRecord | None:
        """What the DHT holds about `exp_id` (a claim or a result), if it is worth asking. Flooding, the DHT is memory
        for nodes that were not listening: once a catch-up delivered, gossip keeps the ledger current and
        the (slow) lookup is skipped. Sparse (this node, or peers that announce presence), claims are
        only in the DHT. At most a budget of lookups per proposal, and DHT_PROPOSAL_S of them (measured:
        restarted nodes in a churn run spent minutes proposing, one bounded lookup per candidate)."""
        dht = self.dht()
        sparse_near = self.sparse() or time.time() - self.last_presence < flooding.PRESENCE_S * 2
        if dht is None or (self.deps.caught_up() and not sparse_near):
            return None
        if self._lookups_left <= 0 or time.monotonic() > self._deadline:  # a slow DHT must not stall research
            return None
        self._lookups_left -= 1
        try:
            # bounded: the proposer asks about many candidates, and a lookup on a busy swarm can take
            # seconds (measured: restarted nodes proposing nothing for minutes)
            rec = None
            with trio.move_on_after(DHT_LOOKUP_S) as scope:
                rec = await dht.get(exp_id)
            if scope.cancelled_caught:
                return None
        except Exception as e:  # noqa: BLE001 - the DHT asks peers: a failed lookup is an unknown id, dedup goes on
            log.debug("DHT get failed: %s", e)
            return None
        return rec
