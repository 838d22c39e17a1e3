"""Wire layer: round trips, every malformed case -> WireError, receipt signatures."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID

from p2p_research.wire import (
    BoardPost,
    Claim,
    GitObject,
    Receipt,
    Result,
    Verification,
    WireError,
    check_result,
    decode,
    decode_receipt,
    git_object_id,
    peer_id_of,
    sign_receipt,
    verify_receipt,
)
from p2p_research.wire import messages as m

KP = generate_new_ed25519_identity()
PEER = ID.from_pubkey(KP.public_key).to_base58()
OTHER_KP = generate_new_ed25519_identity()
OTHER_PEER = ID.from_pubkey(OTHER_KP.public_key).to_base58()

hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)
proto = st.text("0123456789abcdef", min_size=16, max_size=64)
nonneg = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
peer_ids = st.sampled_from([PEER, OTHER_PEER])
short_text = st.text(max_size=60)


def receipts(statuses=("kept", "discarded", "baseline", "crash")):
    @st.composite
    def build(draw):
        status = draw(st.sampled_from(statuses))
        verification = status in ("confirmed", "refuted")
        value = None if status == "crash" else draw(nonneg)
        if status in ("confirmed", "refuted"):
            value = draw(st.none() | nonneg)
        return Receipt(
            protocol_id=draw(proto), exp_id=draw(hex40), parent=draw(hex40), commit=draw(hex40),
            tree=draw(hex40), metric="val_bpb", value=value, status=status,
            budget_tokens=draw(st.none() | st.integers(0, 2**40)),
            budget_seconds=draw(st.none() | nonneg), seed=draw(st.integers(-(2**63), 2**63 - 1)),
            hardware=draw(st.text(max_size=200)), software=draw(st.text(max_size=100)),
            peer=PEER, ts=draw(nonneg), training_seconds=draw(nonneg), memory_gb=draw(nonneg),
            description=draw(st.text(max_size=500)), target_peer=OTHER_PEER if verification else "",
            claimed_value=draw(st.none() | nonneg) if verification else None,
        )  # fmt: skip

    return build()


git_objects = st.builds(
    GitObject.from_raw, st.sampled_from([1, 2, 3, 4]), st.binary(max_size=2000)
)
claims = st.builds(
    Claim, exp_id=hex40, protocol_id=proto, parent=hex40, peer=peer_ids, lease_until=nonneg,
    description=st.text(max_size=500), ts=nonneg,
)  # fmt: skip
boards = st.builds(BoardPost, author=peer_ids, name=st.text(max_size=64), text=st.text(max_size=4000), ts=nonneg)


@st.composite
def results(draw):
    r = draw(receipts())
    objs = draw(st.lists(git_objects, max_size=5))
    return Result(
        receipt=r, signature=sign_receipt(r, KP.private_key), public_key=KP.public_key.serialize(),
        objects=objs, objects_total=len(objs) + draw(st.integers(0, 10)),
    )  # fmt: skip


@st.composite
def verifications(draw):
    r = draw(receipts(("confirmed", "refuted")))
    return Verification(
        receipt=r, signature=sign_receipt(r, KP.private_key), public_key=KP.public_key.serialize(),
    )  # fmt: skip


bundles = st.lists(st.one_of(claims, results(), verifications()), min_size=1, max_size=4).map(
    lambda ms: m.Bundle(tuple(ms)))
any_message = st.one_of(claims, boards, results(), verifications(), bundles)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(any_message)
def test_round_trip(msg):
    data = msg.to_wire()
    assert decode(data) == msg
    assert len(data) <= m.MAX_MESSAGE_BYTES


@SETTINGS
@given(results())
def test_result_signature_and_objects_verify(res):
    back = decode(res.to_wire())
    check_result(back)
    for o in back.objects:
        o.verify()


@SETTINGS
@given(receipts())
def test_receipt_canonical_is_deterministic(r):
    b = r.canonical_bytes()
    assert decode_receipt(b) == r
    assert decode_receipt(b).canonical_bytes() == b
    keys = list(msgpack.unpackb(b, raw=False).keys())
    assert keys == sorted(keys)


def test_float_fields_are_float64_in_canonical_form():
    r = _receipt(ts=1.1)
    raw = r.canonical_bytes()
    assert b"\xcb" in raw  # float64 marker; never float32


@SETTINGS
@given(st.binary(max_size=3000))
def test_fuzz_binary_only_wire_error(data):
    try:
        decode(data)
    except WireError:
        pass


def _mutations(obj, depth=0):
    """Yield structurally mutated copies of a decoded message (wrong types, bad values, extra keys)."""
    bad_values = [None, -1, -1.5, math.nan, math.inf, "", "Z" * 70, b"\x00", [], {}, True, 2**70, "g" * 40]
    if isinstance(obj, dict):
        for k in list(obj):
            for bv in bad_values:
                c = dict(obj)
                c[k] = bv
                yield c
            c = dict(obj)
            del c[k]
            yield c
            for sub in _mutations(obj[k], depth + 1):
                c = dict(obj)
                c[k] = sub
                yield c
        c = dict(obj)
        c["extra"] = 1
        yield c
    elif isinstance(obj, list) and obj and depth < 4:
        for sub in _mutations(obj[0], depth + 1):
            yield [sub] + obj[1:]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_mutated_messages_never_raise_other_errors(msg):
    base = msgpack.unpackb(msg.to_wire(), raw=False)
    for mutated in _mutations(base):
        try:
            data = msgpack.packb(mutated, use_bin_type=True)
        except (OverflowError, TypeError, ValueError):
            continue
        try:
            out = decode(data)
        except WireError:
            continue
        # accepted mutations must still be well-formed messages that re-encode
        assert decode(out.to_wire()) == out


@SETTINGS
@given(any_message, st.integers(0, 10_000), st.integers(0, 255))
def test_byte_flips_never_raise_other_errors(msg, pos, byte):
    data = bytearray(msg.to_wire())
    data[pos % len(data)] = byte
    try:
        decode(bytes(data))
    except WireError:
        pass


# --- explicit malformed cases -------------------------------------------------------------------


def _receipt(**kw) -> Receipt:
    base = dict(
        protocol_id="ab" * 16, exp_id="1" * 40, parent="2" * 40, commit="3" * 40, tree="4" * 40,
        metric="val_bpb", value=1.25, status="kept", budget_tokens=1000, budget_seconds=None, seed=1,
        hardware="cpu", software="p2p-research 0.1", peer=PEER, ts=1.0, training_seconds=2.0, memory_gb=0.5,
    )  # fmt: skip
    base.update(kw)
    return Receipt(**base)


def _claim_dict(**kw):
    d = {"v": 2, "t": "claim", "exp_id": "a" * 40, "protocol_id": "b" * 16, "parent": "c" * 40,
         "peer": PEER, "lease_until": 10.0, "description": "x", "ts": 1.0}  # fmt: skip
    d.update(kw)
    return d


def _enc(d) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xc1", "not valid msgpack"),
        (b"", "not valid msgpack"),
        (_enc([1, 2]), "not a map"),
        (_enc(_claim_dict(v=3)), "unknown version"),
        (_enc(_claim_dict(v=1)), "no longer accepted"),
        (_enc(_claim_dict(v=True)), "unknown version"),
        (_enc(_claim_dict(t="nope")), "unknown type"),
        (_enc({k: v for k, v in _claim_dict().items() if k != "ts"}), "missing field 'ts'"),
        (_enc(_claim_dict(ts="1.0")), "expected a number"),
        (_enc(_claim_dict(ts=-1.0)), "negative"),
        (_enc(_claim_dict(ts=math.nan)), "not finite"),
        (_enc(_claim_dict(lease_until=math.inf)), "not finite"),
        (_enc(_claim_dict(exp_id="A" * 40)), "40 lowercase hex"),
        (_enc(_claim_dict(exp_id="a" * 39)), "40 lowercase hex"),
        (_enc(_claim_dict(protocol_id="ab")), "16..64"),
        (_enc(_claim_dict(peer="0OIl")), "peer id"),
        (_enc(_claim_dict(description="x" * 501)), "too long"),
        (_enc(_claim_dict(extra=1)), "unknown field"),
        (_enc({1: 2}), "not valid msgpack"),  # strict_map_key
        (b"\x92" + b"\x00" * 10, "not valid msgpack"),  # extra data
        (b"\x81\xa1v" + b"\xc6\x00\x10\x00\x00", "not valid msgpack"),  # truncated 1 MiB bin
        (_enc({"v": 2, "t": "board", "author": PEER, "name": "n", "text": "x" * 20000, "ts": 1.0}), "msgpack"),
    ],
    ids=lambda v: "data" if isinstance(v, bytes) else v,  # the bytes hold a fresh peer id: ids by reason
)
def test_malformed(data, reason):
    with pytest.raises(WireError) as ei:
        decode(data)
    assert reason in ei.value.reason


def test_oversized_message_rejected_before_parsing():
    with pytest.raises(WireError, match="too large"):
        decode(b"\x00" * (m.MAX_MESSAGE_BYTES + 1))


def _result_dict(objects, total=None, receipt=None):
    r = receipt or _receipt()
    return {"v": 2, "t": "result", "receipt": r.to_dict(), "signature": sign_receipt(r, KP.private_key),
            "public_key": KP.public_key.serialize(), "objects": [o.to_dict() for o in objects],
            "objects_total": len(objects) if total is None else total}  # fmt: skip


def test_inline_object_caps():
    big = GitObject.from_raw(3, b"x" * (m.MAX_INLINE_OBJECT + 1))
    with pytest.raises(WireError, match="too long"):
        decode(_enc(_result_dict([big])))
    two = [GitObject.from_raw(3, bytes([i]) * (200 * 1024)) for i in range(2)]  # 400 KiB > 384 KiB
    with pytest.raises(WireError, match="total"):
        decode(_enc(_result_dict(two)))
    many = [GitObject.from_raw(3, str(i).encode()) for i in range(257)]
    with pytest.raises(WireError, match="objects"):
        decode(_enc(_result_dict(many)))
    with pytest.raises(WireError, match="objects_total"):
        decode(_enc(_result_dict(many[:3], total=1)))
    ok = decode(_enc(_result_dict(many[:256])))
    assert len(ok.objects) == 256


def test_inline_object_with_wrong_id_rejected():
    o = GitObject.from_raw(3, b"hello")
    bad = GitObject(o.oid, 3, b"hellO")
    with pytest.raises(WireError, match="hashes to"):
        decode(_enc(_result_dict([bad])))
    with pytest.raises(WireError):
        bad.verify()


def test_git_object_id_matches_git():
    # `printf hello | git hash-object --stdin`
    assert git_object_id(3, b"hello") == "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"
    assert git_object_id(3, b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_object_id(2, b"") == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # the empty tree
    with pytest.raises(WireError):
        git_object_id(9, b"")


def test_status_rules():
    with pytest.raises(WireError, match="status"):
        decode(_enc(_result_dict([], receipt=_receipt(status="confirmed"))))
    with pytest.raises(WireError, match="crash"):
        decode(_enc(_result_dict([], receipt=_receipt(status="crash", value=1.0))))
    with pytest.raises(WireError, match="missing"):
        decode(_enc(_result_dict([], receipt=_receipt(status="kept", value=None))))
    r = _receipt(status="kept")
    v = Verification(receipt=r, signature=b"", public_key=b"")
    with pytest.raises(WireError, match="status"):
        v.to_wire()


def test_to_wire_refuses_invalid_local_message():
    with pytest.raises(WireError):
        Claim("x", "b" * 16, "c" * 40, PEER, 1.0, "", 1.0).to_wire()
    with pytest.raises(WireError):
        BoardPost(PEER, "n", "é" * 9000, 1.0).to_wire()  # 18000 UTF-8 bytes > 16 KiB


# --- signatures ------------------------------------------------------------------------------------


def test_sign_verify_and_peer_id():
    r = _receipt()
    sig = sign_receipt(r, KP.private_key)
    pk = KP.public_key.serialize()
    assert verify_receipt(r, sig, pk)
    assert peer_id_of(pk) == PEER
    assert not verify_receipt(_receipt(value=1.24), sig, pk)  # altered value
    assert not verify_receipt(r, sig, OTHER_KP.public_key.serialize())  # other key
    assert not verify_receipt(r, sig[:-1] + bytes([sig[-1] ^ 1]), pk)  # flipped bit
    assert not verify_receipt(r, b"", pk)
    assert not verify_receipt(r, sig, b"garbage")


def test_check_result_rejects_forgeries():
    r = _receipt()
    good = Result(r, sign_receipt(r, KP.private_key), KP.public_key.serialize())
    check_result(decode(good.to_wire()))
    # altered after signing
    altered = Result(_receipt(value=0.5), good.signature, good.public_key)
    with pytest.raises(WireError, match="signature"):
        check_result(decode(altered.to_wire()))
    # signed by someone else, claiming to be PEER (receipt.peer = PEER, key = OTHER)
    forged = Result(r, sign_receipt(r, OTHER_KP.private_key), OTHER_KP.public_key.serialize())
    with pytest.raises(WireError, match="not the signer"):
        check_result(forged)
    # garbage key
    with pytest.raises(WireError):
        check_result(Result(r, good.signature, b"\x08\x01\x12\x01x"))


def test_bundle_rules():
    claim = msgpack.unpackb(_enc(_claim_dict()))
    inner = _enc(claim)
    ok = decode(_enc({"v": 2, "t": "bundle", "messages": [inner, inner]}))
    assert isinstance(ok, m.Bundle) and len(ok.messages) == 2
    board = _enc({"v": 2, "t": "board", "author": PEER, "name": "n", "text": "t", "ts": 1.0})
    cases = {
        "expected 1..16": [],
        "a board cannot be bundled": [board],
        "a bundle cannot be bundled": [_enc({"v": 2, "t": "bundle", "messages": [inner]})],
        "bundle.messages[1]: claim.exp_id": [inner, _enc(_claim_dict(exp_id="zz"))],
        "expected bytes": ["not bytes"],
    }
    for reason, msgs in cases.items():
        with pytest.raises(WireError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            decode(_enc({"v": 2, "t": "bundle", "messages": msgs}))
    with pytest.raises(WireError, match="expected 1..16"):
        decode(_enc({"v": 2, "t": "bundle", "messages": [inner] * 17}))


def test_what_a_peer_says_about_its_run_is_signed_and_a_relay_cannot_rewrite_it():
    """Wire v2: the description (and a verification's target and claimed value) is in the receipt."""
    import dataclasses

    r = _receipt(description="LEARNING_RATE 0.002 -> 0.003")
    good = Result(r, sign_receipt(r, KP.private_key), KP.public_key.serialize())
    check_result(decode(good.to_wire()))
    assert decode(good.to_wire()).description == "LEARNING_RATE 0.002 -> 0.003"
    rewritten = Result(dataclasses.replace(r, description="buy my token"), good.signature, good.public_key)
    with pytest.raises(WireError, match="signature"):
        check_result(decode(rewritten.to_wire()))
    v = _receipt(status="confirmed", target_peer=OTHER_PEER, claimed_value=1.25)
    ver = Verification(v, sign_receipt(v, KP.private_key), KP.public_key.serialize())
    check_result(decode(ver.to_wire()))
    for change in ({"claimed_value": 0.1}, {"target_peer": PEER}):
        forged = Verification(dataclasses.replace(v, **change), ver.signature, ver.public_key)
        with pytest.raises(WireError, match="signature"):
            check_result(decode(forged.to_wire()))
    with pytest.raises(WireError, match="target_peer"):
        Verification(_receipt(status="confirmed"), b"", b"").to_wire()  # a verification names whose claim
    old = msgpack.unpackb(good.to_wire())
    old.update(v=1, description="unsigned")
    with pytest.raises(WireError, match="no longer accepted"):
        decode(_enc(old))


def test_presence_round_trips_and_rejects_junk():
    import msgpack

    from p2p_research.wire import Presence, WireError, decode

    p = Presence("12D3KooWA8EXV3KjBxEU5EnsPfneLx84vMWAtTBQBeyooN82KSuS", "ab" * 16, 1700000000.0)
    assert decode(p.to_wire()) == p
    d = msgpack.unpackb(p.to_wire())
    for bad in ({k: v for k, v in d.items() if k != "ts"}, {**d, "extra": 1}, {**d, "peer": "not a peer id"},
                {**d, "protocol_id": 7}):
        try:
            decode(msgpack.packb(bad, use_bin_type=True))
        except WireError:
            continue
        raise AssertionError(f"accepted {bad}")
