"""Experiment records (wire/records.py) and the experiment DHT (net/dht.py) on real loopback hosts."""

from __future__ import annotations

import dataclasses
import time
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p import generate_new_ed25519_identity
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.records.record import make_signed_put_record
from net_helpers import cfg, pid_of, receipt, wait_until

from p2p_research.net import open_network
from p2p_research.net.dht import ExpValidator
from p2p_research.wire import (
    ExpRecord,
    WireError,
    decode_record,
    encode_record,
    make_claim_record,
    make_result_record,
    record_key,
    select_record,
    sign_receipt,
)
from p2p_research.wire.records import MAX_RECORD_BYTES, exp_id_of_key, select_best


def NO_OBJECTS(oid):
    """An object source that has nothing."""
    return None


KEYS = [generate_new_ed25519_identity() for _ in range(3)]
EXP = "e" * 40


# --- builders ------------------------------------------------------------------------------------


def claim_rec(kp, exp=EXP, lease=None, ts=None, commit="c" * 40) -> ExpRecord:
    now = time.time()
    return make_claim_record(
        exp, commit, now + 60 if lease is None else lease, kp, ts=now if ts is None else ts
    )


def result_rec(kp, exp=EXP, **kw) -> ExpRecord:
    r = receipt(pid_of(kp), exp_id=exp, **kw)
    return make_result_record(r, sign_receipt(r, kp.private_key), kp)


def resign(r: ExpRecord, kp, **changes) -> ExpRecord:
    """A record with fields changed and a *valid* record signature by ``kp`` (forgeries of content)."""
    r2 = dataclasses.replace(r, **changes)
    return dataclasses.replace(r2, signature=kp.private_key.sign(r2.signing_bytes()))


def kp_of(net) -> KeyPair:
    return KeyPair(net.host.get_private_key(), net.host.get_public_key())


# --- records: unit + hypothesis --------------------------------------------------------------------

hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)
times = st.floats(min_value=1e9, max_value=2e9, allow_nan=False)


@st.composite
def claims(draw):
    kp = draw(st.sampled_from(KEYS))
    ts = draw(times)
    lease = ts + draw(st.floats(min_value=1.0, max_value=6 * 24 * 3600.0))
    return make_claim_record(draw(st.sampled_from([EXP, "f" * 40])), draw(hex40), lease, kp, ts=ts)


@st.composite
def results(draw):
    kp = draw(st.sampled_from(KEYS))
    status = draw(st.sampled_from(["kept", "discarded", "crash", "baseline"]))
    value = None if status == "crash" else draw(st.floats(min_value=0, max_value=10, allow_nan=False))
    return result_rec(kp, exp=draw(st.sampled_from([EXP, "f" * 40])), status=status, value=value,
                      ts=draw(times), commit=draw(hex40))  # fmt: skip


records = st.one_of(claims(), results())
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(records)
def test_record_round_trip(r):
    data = encode_record(r)
    assert len(data) <= MAX_RECORD_BYTES
    assert decode_record(data) == r
    assert decode_record(data, r.exp_id) == r
    assert encode_record(decode_record(data)) == data  # canonical
    with pytest.raises(WireError, match="stored under"):
        decode_record(data, "0" * 40)
    if r.is_result:
        rc = r.receipt_obj()
        assert (rc.exp_id, rc.peer, rc.commit, rc.status, rc.ts) == (
            r.exp_id,
            r.peer,
            r.commit,
            r.status,
            r.ts,
        )


@FAST
@given(records, st.data())
def test_any_flipped_byte_is_rejected_or_harmless(r, data):
    raw = bytearray(encode_record(r))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        got = decode_record(bytes(raw))
    except WireError:
        return
    assert got == r  # only an encoding-neutral change may survive


@FAST
@given(st.binary(max_size=300))
def test_garbage_is_a_wire_error(b):
    with pytest.raises(WireError):
        decode_record(b)


@FAST
@given(records, records, records)
def test_select_deterministic_and_commutative(a, b, c):
    assert (a, b)[select_record(a, b)] == (b, a)[select_record(b, a)]
    best = [a, b, c][select_best([a, b, c])]
    for perm in ([b, c, a], [c, a, b], [c, b, a]):
        assert perm[select_best(perm)] == best
    # pairwise consistency: the best of three also wins each pair it is in
    for x in (a, b, c):
        assert (best, x)[select_record(best, x)] == best
    if a.is_result and not b.is_result:
        assert select_record(a, b) == 0
    # the libp2p validator agrees, and re-storing an identical value is accepted
    v = ExpValidator()
    if a.exp_id == b.exp_id:
        vals = [encode_record(a), encode_record(b)]
        assert decode_record(vals[v.select(record_key(a.exp_id), vals)]) == (a, b)[select_record(a, b)]
    assert v.select(record_key(a.exp_id), [encode_record(a)] * 2) == 1


def test_select_rules():
    k0, k1 = KEYS[0], KEYS[1]
    old = claim_rec(k0, lease=time.time() + 60)
    new = claim_rec(k1, lease=time.time() + 120)
    assert select_record(old, new) == 1 and select_record(new, old) == 0
    early = result_rec(k1, ts=1000.0)
    late = result_rec(k0, ts=2000.0)
    assert select_record(late, early) == 1 and select_record(early, late) == 0
    assert select_record(new, late) == 1  # any result beats any claim
    t = time.time()
    tie = [claim_rec(k, lease=t + 60, ts=t) for k in (k0, k1)]
    lower = min(tie, key=lambda r: r.peer)
    assert tie[select_record(*tie)] == lower == tie[::-1][select_record(*tie[::-1])]


def test_forgeries_rejected():
    a, b = KEYS[0], KEYS[1]
    c = claim_rec(a)
    bad_sig = dataclasses.replace(c, signature=c.signature[:-1] + bytes([c.signature[-1] ^ 1]))
    with pytest.raises(WireError, match="signature"):
        decode_record(encode_record(bad_sig))
    # claims to be a's record but signed by b
    with pytest.raises(WireError, match="not the signer"):
        decode_record(encode_record(resign(c, b, public_key=b.public_key.serialize())))
    # a's key, signed correctly, but a peer id that is not a's
    with pytest.raises(WireError, match="not the signer"):
        decode_record(encode_record(resign(c, a, peer=pid_of(b))))
    # a valid record under another experiment's key
    with pytest.raises(WireError, match="stored under"):
        decode_record(encode_record(c), "0" * 40)
    r = result_rec(a, value=1.5)
    # record fields altered (re-signed): they no longer match the receipt
    for change in ({"value": 0.5}, {"status": "baseline"}, {"commit": "9" * 40}, {"ts": r.ts - 1}):
        with pytest.raises(WireError, match="receipt says"):
            decode_record(encode_record(resign(r, a, **change)))
    # receipt altered (re-signed record, but the receipt signature no longer verifies)
    rc = dataclasses.replace(r.receipt_obj(), value=0.5)
    with pytest.raises(WireError, match="receipt signature"):
        decode_record(encode_record(resign(r, a, receipt=rc.canonical_bytes(), value=0.5)))
    # a receipt by b, wrapped in a record by a
    rb = receipt(pid_of(b), exp_id=EXP)
    with pytest.raises(WireError):
        decode_record(
            encode_record(
                resign(r, a, receipt=rb.canonical_bytes(), receipt_signature=sign_receipt(rb, b.private_key))
            )
        )
    # claim with a receipt / result with a lease / oversize
    with pytest.raises(WireError):
        decode_record(encode_record(resign(c, a, value=1.0)))
    with pytest.raises(WireError):
        decode_record(encode_record(resign(r, a, lease_until=5.0)))
    with pytest.raises(WireError, match="too large|too long"):
        decode_record(encode_record(c) + b"\x00" * MAX_RECORD_BYTES)


def test_keys():
    assert record_key("a" * 40) == "/exp/" + "a" * 40
    assert exp_id_of_key("/exp/" + "a" * 40) == "a" * 40
    for bad in (
        "/exp/" + "a" * 64,
        "/exp/" + "A" * 40,
        "/exp/abc",
        "exp/" + "a" * 40,
        "/pk/" + "a" * 40,
        "",
        "/exp/" + "a" * 39 + "g",
    ):
        with pytest.raises(ValueError, match="expected /exp/<40 lowercase hex"):
            exp_id_of_key(bad)
    with pytest.raises(ValueError):
        record_key("a" * 64)


# --- the DHT on real hosts -------------------------------------------------------------------------


@asynccontextmanager
async def chain(n: int, **kw):
    """n nodes, node i bootstrapped from node i-1 only (target_peers=1: no peer-exchange mesh)."""
    async with AsyncExitStack() as stack:
        nets = []
        for _i in range(n):
            boot = nets[-1].addrs() if nets else []
            nets.append(
                await stack.enter_async_context(
                    open_network(cfg(bootstrap=boot, target_peers=1, **kw), NO_OBJECTS)
                )
            )
        await wait_for_tables(nets)
        yield nets


async def wait_for_tables(nets, timeout: float = 15.0) -> None:
    await wait_until(lambda: all(x.dht.routing_table_size() >= 1 for x in nets), timeout=timeout)


def holders(nets, exp=EXP):
    return [x.dht.get_local(exp) for x in nets]


async def test_claim_put_on_a_is_found_from_c_via_b():
    async with chain(2) as (a, b):
        rec = claim_rec(kp_of(a))
        t = time.perf_counter()
        acks = await a.dht.put(rec)
        put_s = time.perf_counter() - t
        assert acks == 1  # b accepted
        assert holders([a, b]) == [rec, rec]
        async with open_network(cfg(bootstrap=b.addrs(), target_peers=1), NO_OBJECTS) as c:
            await wait_for_tables([c])
            assert ID.from_base58(b.peer_id) in c.host.get_connected_peers()
            assert c.dht.get_local(EXP) is None
            t = time.perf_counter()
            got = await c.dht.get(EXP)
            get_s = time.perf_counter() - t
            assert got == rec
            assert c.dht.get_local(EXP) == rec  # cached locally after a network get
            raw, where = await c.dht.get_raw(record_key(EXP))
            assert raw == encode_record(rec) and "local store" in where
            print(f"put {put_s:.2f}s get {get_s:.2f}s")


async def test_newer_lease_then_result_replace_older_everywhere():
    async with chain(4) as nets:
        a, b, c, d = nets
        old = claim_rec(kp_of(a), lease=time.time() + 60)
        assert await a.dht.put(old) >= 2
        newer = claim_rec(kp_of(c), lease=time.time() + 600)
        assert await c.dht.put(newer) >= 2
        for x in nets:
            assert await x.dht.get(EXP) == newer
        # the older lease cannot come back: a holds the newer one now, peers refuse the older
        assert await a.dht.put(old) == 0
        assert await d.dht.get(EXP) == newer
        # a result replaces any claim, wherever it is fetched
        res = result_rec(kp_of(b), value=1.1)
        assert await b.dht.put(res) >= 2
        for x in nets:
            assert await x.dht.get(EXP) == res
        assert holders(nets) == [res] * 4
        # a claim put after the result changes nothing
        assert await d.dht.put(claim_rec(kp_of(d), lease=time.time() + 900)) == 0
        for x in nets:
            assert await x.dht.get(EXP) == res
        # between two results the first finisher wins
        first = result_rec(kp_of(a), value=1.3, ts=res.ts - 10)
        assert await a.dht.put(first) >= 1
        assert await d.dht.get(EXP) == first
        later = result_rec(kp_of(c), value=0.9, ts=res.ts + 10)
        assert await c.dht.put(later) == 0  # c already holds the earlier result
        assert all(x.dht.stats["invalid_remote"] == 0 for x in nets)


async def test_forged_records_never_land_nor_return():
    async with chain(3) as nets:
        a, b, c = nets
        kb = record_key(EXP).encode()
        honest = result_rec(kp_of(a), value=1.0)
        bad_sig = dataclasses.replace(honest, signature=bytes(64))
        wrong_key = claim_rec(kp_of(a), exp="0" * 40)  # valid, but for another key
        altered = resign(honest, kp_of(a), value=0.1)  # record says 0.1, its receipt 1.0
        other = result_rec(generate_new_ed25519_identity(), value=0.2)
        stolen = resign(other, kp_of(a), peer=a.peer_id, public_key=kp_of(a).public_key.serialize())
        forged = [encode_record(x) for x in (bad_sig, wrong_key, altered, stolen)]
        forged.append(b"\x81\xa1v\x01")  # not a record at all
        vs = a.dht.kad.value_store
        for bad in (bad_sig, altered, stolen):
            with pytest.raises(WireError):  # our own put refuses it
                await a.dht.put(bad)
        for raw in forged:  # sent raw over the wire, every peer's validator refuses it
            pb = make_signed_put_record(kb, raw, a.host.get_private_key())
            for peer in (b, c):
                assert not await vs._store_at_peer(ID.from_base58(peer.peer_id), kb, raw, record=pb)
        assert holders([b, c]) == [None, None]
        # a malicious node serves a forged record from its store: nobody's get returns it
        b.dht.kad.value_store.put(kb, forged[2])
        assert await c.dht.get(EXP, timeout=3) is None
        assert c.dht.stats["invalid_remote"] >= 1
        raw, where = await c.dht.get_raw(record_key(EXP), timeout=3)
        assert raw is None and "not found" in where
        # the honest record wins once it exists, even where a forgery sits in the store
        assert await a.dht.put(honest) >= 1
        assert await c.dht.get(EXP) == honest


async def test_bad_keys_and_unknown_ids():
    async with chain(2) as (a, b):
        for bad in ("/exp/" + "a" * 64, "/exp/XYZ", "/pk/" + "a" * 40, "x" * 60):
            with pytest.raises(ValueError, match="invalid DHT key"):
                await a.dht.get_raw(bad)
        with pytest.raises(ValueError, match="invalid experiment id"):
            await a.dht.get("a" * 64)
        with pytest.raises(ValueError):
            await a.dht.get("../../etc")
        t = time.perf_counter()
        assert await b.dht.get("9" * 40, timeout=4) is None
        assert time.perf_counter() - t < 5
        assert a.dht.local_count() == 0


async def test_dht_can_be_turned_off():
    async with open_network(cfg(dht=False), NO_OBJECTS) as a:
        assert a.dht is None


async def test_one_subnet_holds_at_most_three_places_in_the_routing_table():
    """Eclipse by routing table: peers of one /24 take at most 3 places in the whole table (2 per
    k-bucket, py-libp2p's own rule; 3 over the table, go-libp2p's, off by default in py-libp2p). Only
    globally routable addresses are grouped, so the peers here carry such addresses (never dialed)."""
    import multiaddr
    from libp2p.peer.peerinfo import PeerInfo

    async with open_network(cfg(), NO_OBJECTS) as net:
        table = net.dht.kad.routing_table

        def peer(ip: str) -> PeerInfo:
            return PeerInfo(ID.from_pubkey(generate_new_ed25519_identity().public_key),
                            [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/4001")])

        assert table.max_peers_per_subnet_table == 3
        added = [await table.add_peer(peer(f"8.8.8.{i}"), skip_server_mode_check=True) for i in range(1, 30)]
        assert 2 <= sum(added) <= 3  # 2 in a bucket; the few peers here fill one bucket
        others = [await table.add_peer(peer(f"8.8.{i}.1"), skip_server_mode_check=True) for i in range(10, 20)]
        assert all(others)
        local = [await table.add_peer(peer(f"127.0.0.{i}"), skip_server_mode_check=True) for i in range(2, 12)]
        assert all(local)  # loopback and private addresses are not grouped (a local simulation)
