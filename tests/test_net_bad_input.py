"""Bad input from a real peer: a raw libp2p host + raw Pubsub publishes garbage on the swarm topics."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import msgpack
import multiaddr
import trio
from adversary import adversary
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12
from net_helpers import cfg, claim, pid_of, post, recv, result

from p2p_research.net import open_network, topic_names
from p2p_research.wire import Presence, Result, sign_receipt


@asynccontextmanager
async def raw_peer(kp):
    """(host, pubsub) of a raw libp2p peer: the adversary host of tests/adversary.py."""
    async with adversary(kp) as adv:
        yield adv.host, adv.ps


async def _join(ps, host, net):
    exp, board = topic_names("5e11")
    await ps.subscribe(exp)
    await ps.subscribe(board)
    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(net.addrs()[0])))
    nid = ID.from_base58(net.peer_id)
    for t in (exp, board):
        await ps.wait_for_subscription(nid, t, timeout=10)
        await ps.wait_for_mesh(nid, t, timeout=10)
    return exp, board


def _enc(d) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


async def test_rejects_each_kind_of_bad_input_and_keeps_running():
    kp = generate_new_ed25519_identity()
    me = pid_of(kp)
    other = generate_new_ed25519_identity()
    async with open_network(cfg(), lambda oid: None) as net, raw_peer(kp) as (host, ps):
        exp, board = await _join(ps, host, net)
        good_claim = claim(me)
        forged = result(kp)
        forged = Result(forged.receipt, sign_receipt(forged.receipt, other.private_key), forged.public_key)
        impostor = result(other)  # validly signed by `other`, fine on its own: receipt.peer == signer
        cases = [
            (exp, b"\xc1\xc1garbage", "malformed"),
            (exp, _enc({**msgpack.unpackb(good_claim.to_wire()), "v": 3}), "malformed"),
            (exp, _enc({"v": 2, "t": "teapot"}), "malformed"),
            (exp, _enc({"v": 2, "t": "board", "author": me, "name": "x", "text": "y" * 600_000, "ts": 1.0}),
             "malformed"),  # oversized (600 KB > 512 KiB cap)
            (exp, forged.to_wire(), "bad_signature"),  # to_wire checks structure; the receiver checks the signature
            (exp, claim(pid_of(other)).to_wire(), "peer_mismatch"),
            (exp, Presence(pid_of(other), "b" * 16, time.time()).to_wire(), "peer_mismatch"),  # a member in another's name
            (board, post(pid_of(other)).to_wire(), "peer_mismatch"),
            (board, good_claim.to_wire(), "wrong_topic"),
        ]
        for topic, data, _ in cases:
            await ps.publish(topic, data)
            await trio.sleep(0.005)
        expected: dict[str, int] = {}
        for _, _, reason in cases:
            expected[reason] = expected.get(reason, 0) + 1
        with trio.fail_after(10):
            while dict(net.stats["rejected"]) != expected:
                await trio.sleep(0.05)
        # still running, and valid messages (including someone else's validly signed result) pass
        await ps.publish(exp, good_claim.to_wire())
        await ps.publish(exp, impostor.to_wire())
        await ps.publish(exp, Presence(me, "b" * 16, time.time()).to_wire())
        got = [await recv(net), await recv(net), await recv(net)]
        assert {type(g.message).__name__ for g in got} == {"Claim", "Result", "Presence"}
        assert all(g.from_peer == me for g in got)
        assert dict(net.stats["rejected"]) == expected
        assert net.stats["received"] == 3


async def test_per_peer_rate_limit():
    kp = generate_new_ed25519_identity()
    me = pid_of(kp)
    async with open_network(cfg(rate_limit_per_s=1.0, rate_burst=5), lambda oid: None) as net, \
            raw_peer(kp) as (host, ps):  # fmt: skip
        exp, _ = await _join(ps, host, net)
        t0 = time.monotonic()
        for i in range(20):
            await ps.publish(exp, claim(me, exp=f"{i:040x}").to_wire())
            await trio.sleep(0.005)  # raw libp2p drops a tight burst in its 32-RPC outbound queue
        with trio.fail_after(10):
            while net.stats["received"] + net.stats["rejected"]["rate_limited"] < 20:
                await trio.sleep(0.05)
        elapsed = time.monotonic() - t0
        assert net.stats["received"] <= 5 + int(elapsed) + 1
        assert net.stats["rejected"]["rate_limited"] >= 20 - (5 + int(elapsed) + 1)
        assert set(net.stats["rejected"]) == {"rate_limited"}


async def test_a_malformed_pubsub_rpc_only_costs_the_sender_its_stream():
    """A truncated protobuf RPC raised DecodeError out of libp2p's handler and took the host down."""
    from libp2p.utils.varint import encode_uvarint

    kp = generate_new_ed25519_identity()
    async with open_network(cfg(), NO_OBJECTS_SRC) as net, raw_peer(kp) as (host, ps):
        await _join(ps, host, net)
        stream = await host.new_stream(ID.from_base58(net.peer_id), [PROTOCOL_ID_V12])
        garbage = b"\x0a\xff\x01\x02"  # field 1, length 255, then 2 bytes: truncated
        await stream.write(encode_uvarint(len(garbage)) + garbage)
        with trio.fail_after(10):
            while net.stats["rejected"]["malformed_rpc"] < 1:
                await trio.sleep(0.05)
        # the node is still up and hears a well-behaved peer
        other = generate_new_ed25519_identity()
        async with raw_peer(other) as (host2, ps2):
            exp, _ = await _join(ps2, host2, net)
            await ps2.publish(exp, claim(pid_of(other)).to_wire())
            msg = await recv(net, 15)
            assert msg.from_peer == pid_of(other)


def NO_OBJECTS_SRC(oid):
    return None


async def test_a_bundle_with_one_forged_message_is_rejected_whole():
    """Each message inside a bundle is checked as if it came alone: one claim in another peer's name
    rejects the bundle (nothing of it is delivered); a nested bundle does not even decode."""
    from p2p_research.wire import Bundle

    kp = generate_new_ed25519_identity()
    me = pid_of(kp)
    other = generate_new_ed25519_identity()
    async with open_network(cfg(), lambda oid: None) as net, raw_peer(kp) as (host, ps):
        exp, _ = await _join(ps, host, net)
        forged = Bundle((result(kp), claim(pid_of(other))))
        nested = _enc({"v": 2, "t": "bundle", "messages": [Bundle((claim(me),)).to_wire()]})
        await ps.publish(exp, forged.to_wire())
        await ps.publish(exp, nested)
        with trio.fail_after(10):
            while sum(net.stats["rejected"].values()) < 2:
                await trio.sleep(0.05)
        assert dict(net.stats["rejected"]) == {"peer_mismatch": 1, "malformed": 1}
        assert net.stats["received"] == 0
        await ps.publish(exp, Bundle((result(kp), claim(me, exp="b" * 40))).to_wire())
        got = [await recv(net), await recv(net)]
        assert [type(g.message).__name__ for g in got] == ["Result", "Claim"]
