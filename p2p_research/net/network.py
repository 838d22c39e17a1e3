"""The one facade the daemon uses: a libp2p node with the swarm's topics, object transfer and peers.

    async with open_network(cfg, object_source) as net:
        await net.publish(claim)
        async for inc in net.incoming: ...

Everything runs in one nursery owned by :func:`open_network`; leaving the block stops it all and
closes the host. ``network.host`` and ``network.nursery`` are exposed so that a DHT (``KadDHT``)
can be started alongside (``background_trio_service`` inside the same block).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from ..wire import GitObject, Message
from .addresses import exempt_set
from .boundary import Faults
from .dht import ExperimentDHT
from .gossip import BATCH_WAIT_S, INCOMING_CAPACITY, Gossip, Incoming, new_stats, open_gossip
from .host import full_addrs, make_host, parse_listen_addr, parse_peer_addr, running_host
from .nat import NatTraversal
from .peers import PeerManager, PeerState
from .reachability import is_loopback_only
from .streams import StreamGuard, StreamLimits
from .topics import topic_names
from .transfer import OBJECTS_LIMITS, OBJECTS_PROTOCOL, ObjectServer, ObjectSource, TransferError
from .transfer import fetch_objects as _fetch_objects

log = logging.getLogger(__name__)

_SWARM_ID = re.compile(r"[0-9a-f]{1,64}")

__all__ = ["Incoming", "NetConfig", "Network", "PeerState", "TransferError", "open_network", "topic_names"]


@dataclass
class NetConfig:
    key_pair: KeyPair
    swarm_id: str  # short hex string; scopes the topics
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    target_peers: int = 6
    rate_limit_per_s: float = 20.0
    rate_burst: int = 60
    dht: bool = True  # run the experiment-record DHT (``Network.dht``)
    batch_wait_s: float = BATCH_WAIT_S  # results/verifications wait this long for a claim to ride with; 0: never
    about: dict[str, str] = field(default_factory=dict)  # swarm, protocol, budget: told to peers in exchanges
    serve_any_swarm: bool = False  # a relay: also join, forward and store the swarms peers use
    nat: bool = True  # AutoNAT, relay reservations and hole punching (off loopback-only addresses)
    relay_service: bool | None = False  # relay others' connections (circuit relay v2 HOP, with limits); None: once public
    remembered: list[str] = field(default_factory=list)  # peers of the last run (daemon/known_peers.py), dialed at start
    #: addresses counted like 127.0.0.1 by the per-address and per-subnet limits: the machines of one's own
    #: cluster (net/addresses.py), where hundreds of daemons share a few addresses and one /24
    exempt_addresses: list[str] = field(default_factory=list)


class Network:
    """A running node's network side. Create with :func:`open_network`."""

    def __init__(
        self, host: IHost, gossip: Gossip, peers: PeerManager, incoming: trio.MemoryReceiveChannel[Incoming],
        stats: dict[str, Any], nursery: trio.Nursery, faults: Faults, streams: StreamGuard,
    ) -> None:  # fmt: skip
        self.host = host
        self.peer_id: str = host.get_id().to_base58()
        self.gossip = gossip
        self.pubsub = gossip.pubsub
        self.peer_manager = peers
        self.incoming = incoming
        self.stats = stats
        self.nursery = nursery
        #: Offences contained at fault boundaries (counted in ``stats["faults"]``).
        self.faults = faults
        #: Registers stream protocols with slots, deadlines and a fault boundary.
        self.streams = streams
        #: The experiment-record DHT (None when ``NetConfig.dht`` is False).
        self.dht: ExperimentDHT | None = None
        #: Reachability: AutoNAT, relay reservations, circuit dials, DCUtR.
        self.nat: NatTraversal | None = None

    def addrs(self) -> list[str]:
        """Full bootstrap-form addresses ``/ip4/.../tcp/.../p2p/<id>``."""
        return full_addrs(self.host)

    async def publish(self, msg: Message) -> None:
        """Publish on the topic of the message's type. Raises WireError for a message peers would reject."""
        await self.gossip.publish(msg)

    async def fetch_objects(self, peer_id: str, oids: list[str], *, timeout: float = 60.0) -> list[GitObject]:
        """Fetch git objects from a peer (dialing it if needed through known addresses).

        Returns the verified objects the peer had (missing ones omitted); raises TransferError.
        """
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise ValueError(f"invalid peer id {peer_id!r}") from None
        return await _fetch_objects(self.host, pid, oids, timeout=timeout)

    def handle(self, protocol: str, handler: Any, limits: StreamLimits) -> None:
        """Serve a stream protocol behind the guard (slots per peer and in total, deadline, boundary)."""
        self.streams.register(protocol, handler, limits)

    def swarms(self) -> list[dict[str, Any]]:
        """The swarms this node serves, with how many connected peers use each (its own first)."""
        seen = self.gossip.swarm_peers()
        own = self.gossip.swarm_id
        return [{"swarm": s, "peers": seen.get(s, 0), "own": s == own}
                for s in sorted(self.gossip.swarms, key=lambda s: (s != own, -seen.get(s, 0), s))]

    async def join_swarm(self, swarm_id: str, board: bool = True) -> bool:
        """Also listen to another swarm's topics (without `board`: its experiments topic only); its
        messages are validated and budgeted like the node's own and arrive in `incoming` with that swarm."""
        if not isinstance(swarm_id, str) or not _SWARM_ID.fullmatch(swarm_id):
            raise ValueError(f"invalid swarm id {swarm_id!r}")
        return await self.gossip.join(swarm_id, board=board)

    async def leave_swarm(self, swarm_id: str) -> None:
        """Stop listening to a swarm joined with `join_swarm` (never the node's own)."""
        await self.gossip.leave(swarm_id)

    def peers(self) -> list[PeerState]:
        """Connected peers (refreshed every second)."""
        return self.peer_manager.peers()

    async def connect(self, addr: str) -> None:
        """Dial a peer by bootstrap address once (no retries; relayed addresses too); raises on failure."""
        info = parse_peer_addr(addr)
        if self.nat is not None:
            await self.nat.dial(info)
            return
        with trio.fail_after(10):
            await self.host.connect(info)


@asynccontextmanager
async def open_network(cfg: NetConfig, object_source: ObjectSource) -> AsyncIterator[Network]:
    """Start host, gossip, object server and peer management; stop and close everything on exit.

    Configuration errors (malformed listen or bootstrap address, bad swarm id) raise ValueError
    before anything starts. Unreachable bootstrap peers only log warnings and are retried.
    """
    if not isinstance(cfg.swarm_id, str) or not _SWARM_ID.fullmatch(cfg.swarm_id):
        raise ValueError(f"invalid swarm id {cfg.swarm_id!r}: expected 1..64 lowercase hex chars")
    if cfg.target_peers < 1:
        raise ValueError(f"target_peers must be >= 1, got {cfg.target_peers}")
    if cfg.rate_limit_per_s <= 0 or cfg.rate_burst < 1:
        raise ValueError("rate_limit_per_s and rate_burst must be positive")
    exempt = exempt_set(cfg.exempt_addresses)
    listen = [parse_listen_addr(a) for a in (cfg.listen or ["/ip4/127.0.0.1/tcp/0"])]
    boot = [parse_peer_addr(a) for a in cfg.bootstrap]
    my_id = ID.from_pubkey(cfg.key_pair.public_key)
    boot = [b for b in boot if b.peer_id != my_id]  # a node listed as its own bootstrap peer
    remembered = []
    for a in cfg.remembered:  # this node's own file: one it cannot read is skipped, never fatal
        try:
            info = parse_peer_addr(a)
        except ValueError:
            log.debug("a remembered peer address does not parse: %r", a)
            continue
        if info.peer_id != my_id and all(info.peer_id != b.peer_id for b in boot):
            remembered.append(info)

    host = make_host(cfg.key_pair, cfg.target_peers)
    host.get_network()._p2p_exempt = exempt  # type: ignore[attr-defined]  # the inbound guard's (libp2p_compat)
    stats = new_stats()
    faults = Faults(stats["faults"])
    streams = StreamGuard(host, faults, stats, exempt=exempt)
    send, recv = trio.open_memory_channel[Incoming](INCOMING_CAPACITY)
    peers = PeerManager(host, boot, target_peers=cfg.target_peers, streams=streams, about=dict(cfg.about),
                        remembered=remembered, exempt=exempt)
    server = ObjectServer(object_source)
    async with running_host(host, listen):
        streams.register(OBJECTS_PROTOCOL, server.handle, OBJECTS_LIMITS)
        async with open_gossip(
            host, cfg.swarm_id, send, rate_limit_per_s=cfg.rate_limit_per_s, rate_burst=cfg.rate_burst,
            stats=stats, on_received_from=peers.note_message_from, batch_wait_s=cfg.batch_wait_s,
            streams=streams, serve_any_swarm=cfg.serve_any_swarm,
        ) as gossip:  # fmt: skip
            streams.is_banned = gossip.is_banned  # a banned peer is refused on every protocol, not only pubsub
            gossip.is_relay = lambda peer: peers.role_of(peer) == "relay"
            peers.is_banned = gossip.is_banned
            async with trio.open_nursery() as nursery:
                dht = None
                if cfg.dht:  # before peers.run: the KAD handler must exist when identify runs
                    dht = ExperimentDHT(host, streams=streams)
                    await nursery.start(dht.run)
                nat = NatTraversal(host, streams, relay_service=cfg.relay_service,
                                   active=cfg.nat and not is_loopback_only([str(a) for a in listen]),
                                   on_addrs_changed=peers.readvertise)
                await nursery.start(nat.run)
                peers.dialer = nat.dial
                await nursery.start(peers.run)
                net = Network(host, gossip, peers, recv, stats, nursery, faults, streams)
                net.dht = dht
                net.nat = nat
                log.info("network up: %s listening on %s", net.peer_id, ", ".join(net.addrs()))
                try:
                    yield net
                finally:
                    nursery.cancel_scope.cancel()
                    send.close()
