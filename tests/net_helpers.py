"""Shared builders for net tests (not a test module)."""

from __future__ import annotations

import time

import trio
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID

from p2p_research.net import NetConfig
from p2p_research.wire import BoardPost, Claim, GitObject, Receipt, Result, sign_receipt

SWARM = "5e11"


def cfg(bootstrap=(), **kw) -> NetConfig:
    return NetConfig(key_pair=generate_new_ed25519_identity(), swarm_id=SWARM, listen=["/ip4/127.0.0.1/tcp/0"],
                     bootstrap=list(bootstrap), **kw)  # fmt: skip


def pid_of(kp) -> str:
    return ID.from_pubkey(kp.public_key).to_base58()


def new_peer_id() -> str:
    """A fresh, valid peer id (of a key nobody keeps)."""
    return pid_of(generate_new_ed25519_identity())


def claim(peer: str, exp: str = "a" * 40) -> Claim:
    return Claim(exp_id=exp, protocol_id="b" * 16, parent="c" * 40, peer=peer, lease_until=time.time() + 60,
                 description="lr 0.01 -> 0.02", ts=time.time())  # fmt: skip


def post(peer: str, text: str = "# hello") -> BoardPost:
    return BoardPost(author=peer, name="tester", text=text, ts=time.time())


def receipt(peer: str, **kw) -> Receipt:
    base = dict(protocol_id="ab" * 16, exp_id="1" * 40, parent="2" * 40, commit="3" * 40, tree="4" * 40,
                metric="val_bpb", value=1.25, status="kept", budget_tokens=1000, budget_seconds=None, seed=1,
                hardware="cpu", software="test", peer=peer, ts=time.time(), training_seconds=2.0, memory_gb=0.5,
                description="test result")
    base.update(kw)
    return Receipt(**base)


def result(kp, objects=(), **kw) -> Result:
    r = receipt(pid_of(kp), **kw)
    objs = list(objects)
    return Result(receipt=r, signature=sign_receipt(r, kp.private_key), public_key=kp.public_key.serialize(),
                  objects=objs, objects_total=len(objs))


def blob(data: bytes) -> GitObject:
    return GitObject.from_raw(3, data)


async def wait_until(pred, timeout: float = 10.0, interval: float = 0.05) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(interval)


async def recv(net, timeout: float = 10.0):
    with trio.fail_after(timeout):
        return await net.incoming.receive()


async def wait_mesh(a, b, timeout: float = 10.0) -> None:
    """Wait until a and b see each other subscribed to both topics (publishing before that is lost)."""
    from libp2p.peer.id import ID as _ID

    for x, y in ((a, b), (b, a)):
        for topic in x.gossip.topic_types:
            await x.pubsub.wait_for_subscription(_ID.from_base58(y.peer_id), topic, timeout=timeout)
            await x.pubsub.wait_for_mesh(_ID.from_base58(y.peer_id), topic, timeout=timeout)
