"""A hostile peer for tests: a real py-libp2p host that speaks the swarm's wire format and lies in it.

It joins a swarm of real daemons like any node (TCP, Noise, Yamux, GossipSub on the swarm's topics) and
can publish anything under its own key or under a fresh key per message (signed correctly, so only
our validation can refuse it), serve forged git objects and catch-up frames, and open idle streams.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.tools.anyio_service import background_trio_service
from net_helpers import pid_of  # re-exported: the hostile-peer tests import it from here

from p2p_research.net import topic_names
from p2p_research.net.host import strip_benign_teardown
from p2p_research.wire import Claim, Receipt, Result, Verification, sign_receipt

_seq = itertools.count(int(time.time() * 1000))


@dataclass
class Adversary:
    host: Any
    ps: Pubsub
    kp: Any
    swarm: str = ""
    received: list[Any] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return pid_of(self.kp)

    @property
    def topics(self) -> tuple[str, str]:
        return topic_names(self.swarm)

    async def connect(self, addr: str) -> None:
        await self.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

    def subscription(self, topic: str) -> Any:
        """The queue of messages on a topic this host subscribed to (join subscribes to both)."""
        return self.ps.subscribed_topics_receive[topic]

    async def join(self, addr: str, swarm: str, timeout: float = 30.0) -> None:
        """Connect to a daemon and wait until it has us in its mesh on both topics."""
        self.swarm = swarm
        for t in self.topics:
            if t not in self.ps.subscribed_topics_receive:
                await self.ps.subscribe(t)
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        for t in self.topics:
            await self.ps.wait_for_subscription(info.peer_id, t, timeout=timeout)
            await self.ps.wait_for_mesh(info.peer_id, t, timeout=timeout)

    async def publish(self, data: bytes, topic: str | None = None) -> None:
        await self.ps.publish(topic or self.topics[0], data)

    async def publish_as(self, kp: Any, data: bytes, topic: str | None = None) -> None:
        """Publish through this connection a message originated and signed by another key."""
        msg = rpc_pb2.Message(data=data, topicIDs=[topic or self.topics[0]], from_id=ID.from_pubkey(kp.public_key).to_bytes(),
                              seqno=next(_seq).to_bytes(8, "big"))
        msg.signature = kp.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
        msg.key = kp.public_key.serialize()
        await self.ps.push_msg(self.ps.my_id, msg)

    def _own_message(self, data: bytes, topic: str | None, signed: bool) -> Any:
        msg = rpc_pb2.Message(data=data, topicIDs=[topic or self.topics[0]], from_id=self.host.get_id().to_bytes(),
                              seqno=next(_seq).to_bytes(8, "big"))
        msg.signature = (self.kp.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
                         if signed else bytes(64))
        msg.key = self.kp.public_key.serialize()
        return msg

    def send_to(self, peer: str, data: bytes, topic: str | None = None, signed: bool = True) -> bool:
        """Send `peer` one message of ours, straight onto the connection (not through a mesh that the
        peer's heartbeat may have pruned us from); `signed=False` makes its pubsub signature garbage.
        False when the connection is gone or its outbound queue is full (libp2p drops the RPC then)."""
        queue = self.ps.peer_queues.get(ID.from_base58(peer))
        return queue is not None and queue.push(rpc_pb2.RPC(publish=[self._own_message(data, topic, signed)]))

    def connected_to(self, peer: str) -> bool:
        """Whether pubsub still has a stream to `peer` (a ban closes it)."""
        return ID.from_base58(peer) in self.ps.peers

    def serve(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        self.host.set_stream_handler(protocol, handler)

    async def open_stream(self, peer: str, protocol: str) -> Any:
        return await self.host.new_stream(ID.from_base58(peer), [protocol])


@asynccontextmanager
async def honest_node(bootstrap: str, swarm: str, kp: Any = None) -> AsyncIterator[Any]:
    """A well-behaved node of our own code (in this process) that bootstraps from `bootstrap`."""
    from p2p_research.net import NetConfig, open_network

    cfg = NetConfig(key_pair=kp or generate_new_ed25519_identity(), swarm_id=swarm, bootstrap=[bootstrap])
    async with open_network(cfg, lambda oid: None) as net:
        with trio.fail_after(15):
            while not net.peers():
                await trio.sleep(0.1)
        yield net


async def listening_host(stack: AsyncExitStack, ip: str) -> tuple[Any, str]:
    """A bare py-libp2p host listening on `ip` until `stack` closes, and its address (127.x.y.z loopback
    addresses stand for hosts in distinct subnets: only 127.0.0.1 is exempt from the node's grouping)."""
    host = new_host(key_pair=generate_new_ed25519_identity())
    await stack.enter_async_context(host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/{ip}/tcp/0")]))
    stack.push_async_callback(host.close)
    return host, f"{host.get_addrs()[0]}"


def exchange_answering(peers: Callable[[], list[str]]) -> Callable[[Any], Awaitable[None]]:
    """A peer-exchange handler (net/peers.PEERS_PROTOCOL) that answers any request with `peers()` and says
    nothing of itself: an attacker choosing whom its victims meet."""
    from p2p_research.net.framing import frame, pack, read_frame, unpack_small

    async def exchange(stream: Any) -> None:
        unpack_small(await read_frame(stream, 64 * 1024))
        await stream.write(frame(pack({"peers": peers(), "about": {}})))
        await stream.close()
    return exchange


def objects_answering(served: dict[str, Any]) -> Callable[[Any], Awaitable[None]]:
    """An object-transfer handler (net/transfer.OBJECTS_PROTOCOL) that answers with the objects in `served`
    (oid -> GitObject, whatever they hold) and "missing" for the rest."""
    from p2p_research.net.framing import read_frame, unpack_small, write_all

    async def serve_objects(stream: Any) -> None:
        for oid in unpack_small(await read_frame(stream, 65536)):
            o = served.get(oid)
            if o is None:
                await stream.write(b"\x01")
            else:
                await write_all(stream, bytes([0, o.kind]) + len(o.data).to_bytes(4, "big") + o.data)
        await stream.close()
    return serve_objects


@asynccontextmanager
async def adversary(kp: Any = None, strict_signing: bool = True) -> AsyncIterator[Adversary]:
    """A hostile peer: a py-libp2p host and pubsub of its own. `strict_signing=False` lets it push
    messages whose signatures do not verify (its own pubsub would drop them before sending)."""
    kp = kp or generate_new_ed25519_identity()
    host = new_host(key_pair=kp)
    router = GossipSub(protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4,
                       degree_high=12, heartbeat_interval=1, spam_protection_enabled=False)  # fmt: skip
    ps = Pubsub(host, router, strict_signing=strict_signing)
    try:
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                async with background_trio_service(ps), background_trio_service(router):
                    await ps.wait_until_ready()
                    yield Adversary(host, ps, kp)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await host.close()
    except BaseException as exc:  # libp2p's own teardown race ("Nursery is closed"), as in net/host.py
        rest = strip_benign_teardown(exc)
        if rest is None:
            return
        if rest is exc:
            raise
        raise rest from None


# --- forged messages ---------------------------------------------------------------------------


def receipt(kp: Any, *, protocol_id: str, exp_id: str, parent: str, commit: str, tree: str, value: float | None,
            status: str = "kept", description: str = "", target_peer: str = "",
            claimed_value: float | None = None, seed: int = 0) -> Receipt:
    return Receipt(protocol_id=protocol_id, exp_id=exp_id, parent=parent, commit=commit, tree=tree, metric="val_bpb",
                   value=value, status=status, budget_tokens=None, budget_seconds=None, seed=seed, hardware="cpu",
                   software="p2p-research 0.1.0", peer=pid_of(kp), ts=time.time(), training_seconds=1.0, memory_gb=0.1,
                   description=description, target_peer=target_peer, claimed_value=claimed_value)  # fmt: skip


def result(kp: Any, r: Receipt, objects: list | None = None, total: int | None = None) -> Result:
    objs = list(objects or [])
    return Result(r, sign_receipt(r, kp.private_key), kp.public_key.serialize(), objects=objs,
                  objects_total=len(objs) if total is None else total)


def verification(kp: Any, of: Receipt, claimant: str, confirmed: bool = True) -> Verification:
    r = Receipt(**{**of.to_dict(), "peer": pid_of(kp), "status": "confirmed" if confirmed else "refuted",
                   "target_peer": claimant, "claimed_value": of.value, "ts": time.time(), "description": ""})
    return Verification(r, sign_receipt(r, kp.private_key), kp.public_key.serialize())


def claim(kp: Any, *, protocol_id: str, exp_id: str, parent: str, ts: float, lease_s: float = 600.0) -> Claim:
    return Claim(exp_id=exp_id, protocol_id=protocol_id, parent=parent, peer=pid_of(kp),
                 lease_until=time.time() + lease_s, description="mine", ts=ts)


def fresh_keys(n: int) -> list[Any]:
    return [generate_new_ed25519_identity() for _ in range(n)]


def random_hex40() -> str:
    return os.urandom(20).hex()
