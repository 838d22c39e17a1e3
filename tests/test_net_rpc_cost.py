"""The py-libp2p RPC cost patches (p2p_research/net/libp2p_compat/rpc_cost.py): same answers, less work,
and what they count goes to the host it happened for."""

from __future__ import annotations

import libp2p.pubsub.gossipsub as gossipsub_mod
import libp2p.pubsub.pubsub as pubsub_mod
import libp2p.pubsub.utils as pubsub_utils
import multiaddr
import pytest
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, create_signed_peer_record
from libp2p.pubsub.pb.rpc_pb2 import RPC
from net_helpers import cfg, post, recv, wait_mesh

from p2p_research.net import libp2p_compat, open_network
from p2p_research.net.libp2p_compat import rpc_cost

ADDR_A = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")
ADDR_B = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002")


@pytest.fixture(autouse=True)
def patched():
    active = rpc_cost.apply()
    if not all(active.values()):
        pytest.skip(f"patches not active here: {active}")


class Ident:
    def __init__(self) -> None:
        self.kp = generate_new_ed25519_identity()
        self.id = ID.from_pubkey(self.kp.public_key)

    def record(self, *addrs, key=None) -> bytes:
        """This peer's signed peer record (signed by `key`, its own by default)."""
        return create_signed_peer_record(self.id, list(addrs), key or self.kp.private_key).marshal_envelope()


class FakeHost:
    """What the two patched functions use of a host."""

    def __init__(self, ident: Ident | None = None) -> None:
        self.ident = ident or Ident()
        self.peerstore = PeerStore()
        self.addrs = [ADDR_A]
        self.listeners = {"tcp": type("L", (), {"listeners": [object()]})()}
        self.get_addrs_calls = 0

    def get_peerstore(self):
        return self.peerstore

    def get_id(self):
        return self.ident.id

    def get_private_key(self):
        return self.ident.kp.private_key

    def get_addrs(self):
        self.get_addrs_calls += 1
        return list(self.addrs)

    def get_network(self):
        return type("N", (), {"listeners": self.listeners})()


@pytest.fixture
def consumes(monkeypatch):
    """Counts the envelope parse+verify calls of libp2p's own maybe_consume_signed_record."""
    calls = []
    orig = pubsub_utils.consume_envelope

    def counting(data, domain):
        calls.append(bytes(data))
        return orig(data, domain)

    monkeypatch.setattr(pubsub_utils, "consume_envelope", counting)
    return calls


def rpc_with(record: bytes) -> RPC:
    return RPC(senderRecord=record)


def test_every_importer_gets_the_patched_functions():
    for mod in (pubsub_utils, gossipsub_mod):
        assert mod.maybe_consume_signed_record is rpc_cost.maybe_consume_signed_record
    # pubsub's read loop calls the guard that bounds an RPC's messages (libp2p_compat/guards.py), which calls
    # the patched function of libp2p.pubsub.utils
    guard = pubsub_mod.maybe_consume_signed_record
    assert guard is rpc_cost.maybe_consume_signed_record or getattr(guard, "_p2p_guard", "") == "publish_per_rpc"
    for mod in (pubsub_mod, gossipsub_mod):
        assert mod.env_to_send_in_RPC is rpc_cost.env_to_send_in_RPC
    assert gossipsub_mod.GossipSub._emit_idontwant_for_message is rpc_cost._emit_idontwant_for_message
    assert rpc_cost.apply() == rpc_cost.applied()  # idempotent


def test_identical_record_bytes_are_consumed_once(consumes):
    host, peer = FakeHost(), Ident()
    rec = peer.record(ADDR_A)
    consume = gossipsub_mod.maybe_consume_signed_record  # the reference GossipSub.handle_rpc calls
    assert consume(rpc_with(rec), host, peer.id)
    assert consume(rpc_with(rec), host, peer.id)
    assert pubsub_mod.maybe_consume_signed_record(rpc_with(rec), host, peer.id)
    assert len(consumes) == 1
    assert host.peerstore.addrs(peer.id) == [ADDR_A]
    assert consume(RPC(), host, peer.id)  # no record: accepted, nothing consumed
    assert len(consumes) == 1


def test_different_bytes_are_verified_and_stored(consumes):
    host, peer = FakeHost(), Ident()
    assert rpc_cost.maybe_consume_signed_record(rpc_with(peer.record(ADDR_A)), host, peer.id)
    newer = peer.record(ADDR_B)
    assert rpc_cost.maybe_consume_signed_record(rpc_with(newer), host, peer.id)
    assert len(consumes) == 2
    assert host.peerstore.addrs(peer.id) == [ADDR_B]
    assert rpc_cost.maybe_consume_signed_record(rpc_with(newer), host, peer.id)
    assert len(consumes) == 2


def test_record_of_another_peer_is_rejected_as_before(consumes):
    host, a, b = FakeHost(), Ident(), Ident()
    rec_a = a.record(ADDR_A)
    assert rpc_cost.maybe_consume_signed_record(rpc_with(rec_a), host, a.id)  # cached for a
    for _ in range(2):  # a's (cached, valid) record arriving from b: rejected every time, like libp2p
        assert rpc_cost._orig_consume(rpc_with(rec_a), host, b.id) is False
        assert rpc_cost.maybe_consume_signed_record(rpc_with(rec_a), host, b.id) is False
    assert len(consumes) == 5  # 1 + 2 x (original + patched): none of the rejections hit the cache
    assert host.peerstore.addrs(a.id) == [ADDR_A]
    with pytest.raises(Exception):
        host.peerstore.addrs(b.id)  # nothing stored for b


def test_forged_or_garbled_records_are_rejected_and_not_cached(consumes):
    host, peer, mallory = FakeHost(), Ident(), Ident()
    good = peer.record(ADDR_A)
    assert rpc_cost.maybe_consume_signed_record(rpc_with(good), host, peer.id)
    forged = peer.record(ADDR_B, key=mallory.kp.private_key)  # peer's id, mallory's (valid) signature
    garbled = bytearray(peer.record(ADDR_B))
    garbled[-1] ^= 0xFF  # signature no longer matches
    for bad in (forged, bytes(garbled), b"\x0a\x03xyz"):
        for _ in range(2):
            assert rpc_cost.maybe_consume_signed_record(rpc_with(bad), host, peer.id) is False
    assert len(consumes) == 1 + 3 * 2  # each bad one verified (and rejected) every time
    assert host.peerstore.addrs(peer.id) == [ADDR_A]  # the good record is still the stored one
    assert rpc_cost.maybe_consume_signed_record(rpc_with(good), host, peer.id)
    assert len(consumes) == 7  # and still cached


def test_cache_entry_expires_and_follows_the_peerstore(consumes, monkeypatch):
    host, peer = FakeHost(), Ident()
    rec = peer.record(ADDR_A)
    assert rpc_cost.maybe_consume_signed_record(rpc_with(rec), host, peer.id)
    host.peerstore.peer_record_map.pop(peer.id)  # the peerstore dropped the record: consume again
    assert rpc_cost.maybe_consume_signed_record(rpc_with(rec), host, peer.id)
    assert len(consumes) == 2
    monkeypatch.setattr(rpc_cost, "RECORD_RECHECK_S", -1.0)  # new entries are expired at once
    host = FakeHost()
    for _ in range(3):
        assert rpc_cost.maybe_consume_signed_record(rpc_with(rec), host, peer.id)
    assert len(consumes) == 5


def test_cache_is_per_peerstore_and_bounded(consumes, monkeypatch):
    monkeypatch.setattr(rpc_cost, "RECORD_CACHE_PEERS", 3)
    h1, h2 = FakeHost(), FakeHost()
    peers = [Ident() for _ in range(4)]
    recs = [p.record(ADDR_A) for p in peers]
    for p, r in zip(peers, recs, strict=True):
        assert rpc_cost.maybe_consume_signed_record(rpc_with(r), h1, p.id)
    assert len(rpc_cost._seen_records[h1.peerstore]) == 3
    assert rpc_cost.maybe_consume_signed_record(rpc_with(recs[0]), h1, peers[0].id)  # evicted: again
    assert rpc_cost.maybe_consume_signed_record(rpc_with(recs[3]), h2, peers[3].id)  # other host: again
    assert len(consumes) == 6


def test_local_record_reused_until_listeners_change_or_ttl(monkeypatch):
    host = FakeHost()
    env = gossipsub_mod.env_to_send_in_RPC
    first, created = env(host)
    assert created
    calls = host.get_addrs_calls
    for _ in range(5):
        assert env(host) == (first, False)
    assert host.get_addrs_calls == calls  # no get_addrs() per RPC
    # a new listening socket: refreshed at once, with the new addresses
    host.addrs = [ADDR_A, ADDR_B]
    host.listeners["tcp"].listeners = [object(), object()]
    second, created = env(host)
    assert created and second != first
    assert host.peerstore.get_local_record().record().addrs == [ADDR_A, ADDR_B]
    # an address change the listeners do not show (observed address): refreshed after the TTL
    host.addrs = [ADDR_B]
    assert env(host) == (second, False)
    monkeypatch.setattr(rpc_cost, "LOCAL_RECORD_TTL_S", -1.0)
    third, created = env(host)
    assert created and host.peerstore.get_local_record().record().addrs == [ADDR_B]
    # unchanged addresses after the TTL: libp2p's own check finds the cached record is current
    assert env(host) == (third, False)


def test_local_record_replaced_elsewhere_is_picked_up():
    host = FakeHost()
    first, _ = rpc_cost.env_to_send_in_RPC(host)
    host.addrs = [ADDR_B]
    new = create_signed_peer_record(host.get_id(), host.addrs, host.get_private_key())
    host.peerstore.set_local_record(new)  # e.g. issued by a caller that does not go through the cache
    data, _ = rpc_cost.env_to_send_in_RPC(host)
    assert data == new.marshal_envelope() != first


async def test_two_hosts_exchange_gossip_with_the_patches(monkeypatch):
    async with (
        open_network(cfg(), lambda oid: None) as a,
        open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b,
    ):
        await wait_mesh(a, b)
        emitted = []
        orig_emit = b.gossip.router.emit_idontwant

        async def counting_emit(msg_ids, to_peer):
            emitted.append(len(msg_ids))
            await orig_emit(msg_ids, to_peer)

        monkeypatch.setattr(b.gossip.router, "emit_idontwant", counting_emit)
        ca, cb = libp2p_compat.for_host(a.host), libp2p_compat.for_host(b.host)
        before = cb.as_dict()
        small = post(a.peer_id, "# small")
        await a.publish(small)
        assert (await recv(b)).message == small
        assert emitted == []  # under the 1 KiB threshold: no IDONTWANT
        big = post(a.peer_id, "# big\n" + "x" * 2000)
        await a.publish(big)
        assert (await recv(b)).message == big
        assert emitted == [1]  # a big message still gets its IDONTWANT (to a, b's only mesh peer)
        await b.publish(post(b.peer_id, "# reply"))
        assert (await recv(a)).message.text == "# reply"
        assert cb.record_skipped > before["record_skipped"]  # b re-verified a's record less often
        assert cb.local_record_reused > before["local_record_reused"]
        assert cb.idontwant_skipped > before["idontwant_skipped"]
        assert ca is not cb and ca.local_record_reused > 0  # each host counts its own
        assert libp2p_compat.counters.UNATTRIBUTED.record_skipped == 0  # nothing went unattributed


def test_outbound_queue_is_larger_and_drops_are_counted():
    from libp2p.peer.id import ID
    from libp2p.pubsub import pubsub as ps_mod
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.rpc_queue import RpcQueue

    assert rpc_cost.apply()["outbound_queue"]
    q = RpcQueue()
    pushed = 0
    while q.push(rpc_pb2.RPC()):
        pushed += 1
    assert pushed == rpc_cost.OUTBOUND_QUEUE
    host, other = object.__new__(type("H", (), {})), object.__new__(type("H", (), {}))
    rpc = rpc_pb2.RPC()
    rpc.publish.add(data=b"x")
    with libp2p_compat.serving(host):  # a drop counts for the host whose task it happens in
        ps_mod.drop_rpc(ID(b"\x00\x01"), rpc)  # what pubsub calls on a full queue
        assert not q.push(rpc_pb2.RPC())
    counted = libp2p_compat.for_host(host)
    assert (counted.dropped_rpcs, counted.dropped_messages, counted.drops_queue_full) == (1, 1, 1)
    assert libp2p_compat.for_host(other).dropped_rpcs == 0


def test_the_libp2p_version_gate_is_the_pin_of_pyproject_and_the_installed_version():
    """One gate (net/libp2p_compat/pin.py) for every patch and guard, equal to pyproject.toml's pin: a bump of
    the pin without the gate (or the other way round) leaves the patches off, silently."""
    import re
    from pathlib import Path

    from p2p_research.net.libp2p_compat import guards
    from p2p_research.net.libp2p_compat import pin as libp2p_pin

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pinned = re.search(r'"libp2p==([^"]+)"', pyproject).group(1)
    assert libp2p_pin.EXPECTED_LIBP2P == pinned == libp2p_pin.libp2p_version()
    assert libp2p_pin.is_expected_libp2p()
    assert rpc_cost.EXPECTED_LIBP2P is guards.EXPECTED_LIBP2P is libp2p_pin.EXPECTED_LIBP2P


def test_the_registry_names_every_patch_that_is_applied():
    """PATCHES says what each change replaces and why; apply() installs exactly those."""
    names = [p.name for p in libp2p_compat.PATCHES]
    assert sorted(names) == sorted(libp2p_compat.apply()) and len(set(names)) == len(names)
    assert all(libp2p_compat.applied().values())
    assert all(p.replaces and p.why and p.test.startswith("tests/") for p in libp2p_compat.PATCHES)
