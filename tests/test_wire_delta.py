"""Delta-encoded blobs in Result messages: encoder, wire round trip, every malformed case -> WireError."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p import generate_new_ed25519_identity
from libp2p.peer.id import ID

from p2p_research.wire import (
    DeltaObject,
    GitObject,
    Receipt,
    Result,
    WireError,
    decode,
    git_object_id,
    sign_receipt,
)
from p2p_research.wire import messages as m

KP = generate_new_ed25519_identity()
PEER = ID.from_pubkey(KP.public_key).to_base58()
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _receipt(**kw) -> Receipt:
    base = dict(
        protocol_id="ab" * 16, exp_id="1" * 40, parent="2" * 40, commit="3" * 40, tree="4" * 40,
        metric="val_bpb", value=1.25, status="kept", budget_tokens=1000, budget_seconds=None, seed=1,
        hardware="cpu", software="p2p-research 0.1", peer=PEER, ts=1.0, training_seconds=2.0, memory_gb=0.5,
    )  # fmt: skip
    base.update(kw)
    return Receipt(**base)


def _result(objects=(), deltas=(), total=None) -> Result:
    r = _receipt()
    objs, ds = list(objects), list(deltas)
    return Result(r, sign_receipt(r, KP.private_key), KP.public_key.serialize(), objects=objs,
                  objects_total=len(objs) + len(ds) if total is None else total, deltas=ds)


def _result_dict(objects=(), deltas=None, total=None) -> dict:
    d = msgpack.unpackb(_result(objects).to_wire(), raw=False)
    if deltas is not None:
        d["deltas"] = deltas
    d["objects_total"] = (len(objects) + len(deltas or [])) if total is None else total
    return d


def _enc(d) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def _delta_dict(**kw) -> dict:
    base, target = b"A = 1\nB = 2\n", b"A = 1\nB = 3\n"
    d = DeltaObject.from_blobs(git_object_id(3, base), base, target).to_dict()
    d.update(kw)
    return d


# --- the encoder ------------------------------------------------------------------------------------


def _check_delta(base: bytes, target: bytes) -> DeltaObject:
    d = DeltaObject.from_blobs(git_object_id(3, base), base, target)
    assert d.oid == git_object_id(3, target)
    assert d.prefix + d.suffix <= min(len(base), len(target))
    assert len(d.data) == len(target) - d.prefix - d.suffix
    assert d.apply(base) == GitObject.from_raw(3, target)
    if base != target:  # a delta of a blob onto itself is refused on the wire (never sent)
        assert DeltaObject.from_dict(d.to_dict()) == d
    return d


@SETTINGS
@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_encode_then_apply_gives_the_target(base, target):
    _check_delta(base, target)


@SETTINGS
@given(st.binary(max_size=3000), st.integers(0, 3000), st.integers(0, 50), st.binary(max_size=50))
def test_a_local_edit_gives_a_small_delta(base, at, cut, insert):
    at = min(at, len(base))
    target = base[:at] + insert + base[at + cut :]
    d = _check_delta(base, target)
    assert len(d.data) <= len(insert)  # never more than the edited bytes, whatever repeats around them


def test_delta_examples():
    d = _check_delta(b"LR = 0.002\nX = 1\n", b"LR = 0.003\nX = 1\n")
    assert (d.prefix, d.suffix, d.data) == (9, 7, b"3")
    d = _check_delta(b"aaaa", b"aa")  # suffix never overlaps the prefix
    assert (d.prefix, d.suffix, d.data) == (2, 0, b"")
    d = _check_delta(b"", b"new file")
    assert (d.prefix, d.suffix, d.data) == (0, 0, b"new file")
    big = bytes(range(256)) * 40  # crosses the 256-byte chunks of the scans
    _check_delta(big, big[:5000] + b"!" + big[5001:])
    _check_delta(big, big + b"tail")
    _check_delta(big, b"head" + big)


def test_apply_refuses_a_wrong_base_or_forged_bytes():
    base, target = b"A = 1\nB = 2\n", b"A = 1\nB = 3\n"
    d = DeltaObject.from_blobs(git_object_id(3, base), base, target)
    forged = DeltaObject(d.oid, d.base, d.prefix, d.suffix, b"9")
    with pytest.raises(WireError, match="hashes to"):
        forged.apply(base)
    with pytest.raises(WireError, match="hashes to"):
        d.apply(b"A = 7\nB = 2\n")
    with pytest.raises(WireError, match="base size"):
        d.apply(b"short")


# --- the wire ---------------------------------------------------------------------------------------

deltas_st = st.builds(
    lambda b, t: DeltaObject.from_blobs(git_object_id(3, b), b, t), st.binary(max_size=300), st.binary(max_size=300)
).filter(lambda d: d.base != d.oid)
objects_st = st.builds(GitObject.from_raw, st.sampled_from([1, 2, 3]), st.binary(max_size=300))


@SETTINGS
@given(st.lists(objects_st, max_size=3), st.lists(deltas_st, max_size=3), st.integers(0, 5))
def test_result_with_deltas_round_trips(objs, ds, extra):
    msg = _result(objs, ds, len(objs) + len(ds) + extra)
    assert decode(msg.to_wire()) == msg


def test_no_deltas_key_when_there_are_none():
    """A Result without deltas is byte-for-byte what nodes from before deltas send and accept."""
    raw = msgpack.unpackb(_result([GitObject.from_raw(3, b"x")]).to_wire(), raw=False)
    assert "deltas" not in raw
    assert decode(_enc(raw)).deltas == []
    assert "deltas" in msgpack.unpackb(_result(deltas=[DeltaObject.from_dict(_delta_dict())]).to_wire(), raw=False)


@pytest.mark.parametrize(
    "delta, reason",
    [
        (_delta_dict(oid="A" * 40), "40 lowercase hex"),
        (_delta_dict(base="xyz"), "40 lowercase hex"),
        (_delta_dict(base=None), "40 lowercase hex"),
        (_delta_dict(base=_delta_dict()["oid"]), "base is the object itself"),
        (_delta_dict(prefix=-1), "negative"),
        (_delta_dict(suffix=-5), "negative"),
        (_delta_dict(prefix=m.MAX_INLINE_OBJECT + 1), "prefix: too large"),
        (_delta_dict(suffix=2**63), "suffix: too large"),
        (_delta_dict(prefix=m.MAX_INLINE_OBJECT // 2, suffix=m.MAX_INLINE_OBJECT // 2), "rebuilt blob too large"),
        (_delta_dict(prefix="1"), "expected an int"),
        (_delta_dict(prefix=True), "expected an int"),
        (_delta_dict(suffix=1.0), "expected an int"),
        (_delta_dict(data="text"), "expected bytes"),
        (_delta_dict(data=b"x" * (m.MAX_INLINE_OBJECT + 1)), "too long"),
        ({k: v for k, v in _delta_dict().items() if k != "suffix"}, "missing field 'suffix'"),
        (_delta_dict(kind=3), "unknown field"),
        ([1, 2], "expected a map"),
    ],
)
def test_malformed_delta(delta, reason):
    with pytest.raises(WireError) as ei:
        decode(_enc(_result_dict(deltas=[delta])))
    assert reason in ei.value.reason
    assert "\n" not in ei.value.reason


def test_delta_list_and_total_caps():
    one = _delta_dict()
    with pytest.raises(WireError, match="expected a list"):
        decode(_enc(_result_dict(deltas=one)))
    with pytest.raises(WireError, match="deltas > 256"):
        decode(_enc(_result_dict(deltas=[one] * 257)))
    objs = [GitObject.from_raw(3, str(i).encode()) for i in range(200)]
    with pytest.raises(WireError, match="inline objects and deltas > 256"):
        decode(_enc(_result_dict(objs, deltas=[one] * 57)))
    assert len(decode(_enc(_result_dict(objs, deltas=[one] * 56))).deltas) == 56
    # the byte cap counts delta data too: 200 KiB whole + 200 KiB of delta data > 384 KiB
    big = GitObject.from_raw(3, b"o" * (200 * 1024))
    fat = _delta_dict(prefix=0, suffix=0, data=b"d" * (200 * 1024))
    with pytest.raises(WireError, match="total"):
        decode(_enc(_result_dict([big], deltas=[fat])))
    # objects_total counts deltas: it may not be below whole + delta-encoded
    with pytest.raises(WireError, match="objects_total"):
        decode(_enc(_result_dict([GitObject.from_raw(3, b"x")], deltas=[one], total=1)))
    assert decode(_enc(_result_dict([GitObject.from_raw(3, b"x")], deltas=[one], total=2))).objects_total == 2
    with pytest.raises(WireError, match="objects_total"):
        _result([GitObject.from_raw(3, b"x")], [DeltaObject.from_dict(one)], total=1).to_wire()


def test_mutated_deltas_never_raise_other_errors():
    base = msgpack.unpackb(_result([GitObject.from_raw(3, b"x")], [DeltaObject.from_dict(_delta_dict())]).to_wire(),
                           raw=False)
    bad = [None, -1, -1.5, math.nan, "", "Z" * 70, b"\x00", [], {}, True, 2**70, "g" * 40, 2**64 - 1]
    mutants = []
    for k in list(base["deltas"][0]):
        for bv in bad:
            mutants.append({**base["deltas"][0], k: bv})
        mutants.append({kk: vv for kk, vv in base["deltas"][0].items() if kk != k})
    mutants.append({**base["deltas"][0], "extra": 1})
    for mut in [*mutants, *bad]:
        d = {**base, "deltas": [mut]}
        try:
            data = msgpack.packb(d, use_bin_type=True)
        except (OverflowError, TypeError, ValueError):
            continue
        try:
            out = decode(data)
        except WireError:
            continue
        assert decode(out.to_wire()) == out
