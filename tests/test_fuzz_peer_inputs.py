"""Hypothesis fuzzing of every decoder and handler that takes a peer's bytes, fed from a real libp2p peer.

Each test runs one victim (``open_network``) and one attacker (a raw py-libp2p host dialing it over
loopback TCP) for a whole batch of fuzzed inputs: hypothesis cannot drive trio tests, so a sync test
draws the batch and calls ``trio.run``. Inputs are structure-aware mutations of valid wire messages
(unpacked to dicts: keys dropped or added, wrong types, huge ints, NaN, nested bundles, deltas past
their base, inline git objects that hash right but do not parse, optionally re-signed so the mutation
reaches the checks behind the signature), byte-level mutations (flip, insert, delete, truncate) of
valid encodings, and raw random bytes.

Every input is predicted by an oracle (the protocol as documented, written out here or, for the
message schemas, the pure decoders of ``p2p_research.wire``) and each test checks the victim did
exactly that over the network: counted each gossip rejection, ended each bad stream without an answer
(in time: a victim that leaves a stream hanging fails), answered each good request exactly, stored no
invalid DHT record, delivered only verified objects and results. After the batch the victim still
serves a well-formed request from the same peer, its task group is alive, and faults contained at the
stream guard's boundary stay rare (a handler that raises on a whole class of input fails the test).

More fuzzing: ``P2P_FUZZ_EXAMPLES=200 pytest tests/test_fuzz_peer_inputs.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import multiaddr
import trio
from adversary import adversary
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.crypto.keys import KeyPair
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import decode_uvarint, encode_uvarint
from net_helpers import blob, cfg, claim, pid_of, post, receipt, recv, result, wait_until

from p2p_research.daemon.catchup import (
    KEY_BYTES,
    MAX_FRAME,
    MAX_HAVE,
    MAX_REQUEST,
    SINCE_LIMITS,
    SINCE_PROTOCOL,
    CatchUp,
    receipt_key,
    results_from_ledger,
)
from p2p_research.net import open_network, topic_names
from p2p_research.net.dht import KAD_PROTOCOL, ExpValidator
from p2p_research.net.framing import FrameError, frame, read_frame, reset_quietly, unpack_small, write_all
from p2p_research.net.gossip import Gossip
from p2p_research.net.transfer import (
    MAX_OBJECT,
    MAX_OIDS,
    MAX_RESPONSE,
    OBJECTS_PROTOCOL,
    TransferError,
    fetch_objects,
)
from p2p_research.store.ledger import Ledger, Run
from p2p_research.wire import (
    BoardPost,
    Bundle,
    Claim,
    DeltaObject,
    GitObject,
    Receipt,
    Result,
    Verification,
    WireError,
    check_result,
    decode,
    decode_record,
    encode_record,
    git_object_id,
    make_claim_record,
    make_result_record,
    record_key,
    sign_receipt,
)
from p2p_research.wire.messages import GIT_KINDS
from p2p_research.wire.receipts import RECEIPT_DOMAIN
from p2p_research.wire.records import MAX_LEASE_SECONDS, RECORD_DOMAIN, exp_id_of_key

#: the attacker's identity in every example (messages in its name are valid from its connection)
KP = generate_new_ed25519_identity()
ME = pid_of(KP)
OTHER = generate_new_ed25519_identity()
SIGNERS = {kp.public_key.serialize(): kp for kp in (KP, OTHER)}
PROTOCOL = "ab" * 16  # net_helpers.receipt's protocol id

#: one example = one victim and one attacker for a whole batch (~0.5 s); P2P_FUZZ_EXAMPLES=200 fuzzes longer
FUZZ = settings(max_examples=int(os.environ.get("P2P_FUZZ_EXAMPLES", "8")), deadline=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


def one_of_list(items: list) -> st.SearchStrategy:
    """sampled_from without the strategy's repr spelling out every (large) item."""
    items = list(items)
    return st.integers(0, len(items) - 1).map(items.__getitem__)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


# --- generic mutators ------------------------------------------------------------------------------

WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1]),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308]),
    st.text(max_size=24),
    st.sampled_from(["", "a" * 40, "A" * 40, "g" * 40, "a" * 39, "kept", "crash", "confirmed", "x" * 700]),
    st.binary(max_size=48),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
)


@st.composite
def byte_mutation(draw, data: bytes) -> bytes:
    """Flip, overwrite, insert, delete, truncate or duplicate bytes of a valid encoding."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            b += draw(st.binary(min_size=1, max_size=8))
            continue
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        i = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":  # msgpack type bytes: nil, never-used, map/array/bin headers
            b[i] = draw(st.sampled_from([0x00, 0xFF, 0xC0, 0xC1, 0xC4, 0xCF, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0x80]))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del b[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del b[i:]
        else:
            j = draw(st.integers(i, min(len(b), i + 32)))
            b[j:j] = b[i:j]
    return bytes(b)


HEX40 = st.text("0123456789abcdef", min_size=40, max_size=40)
#: same-type values a sloppy or lying peer would send: they decode and reach the checks behind decoding
#: (signatures, peer ids, status/value rules, lease bounds) instead of failing at the first type check
PLAUSIBLE_STR = st.one_of(
    HEX40,
    st.sampled_from(["kept", "discarded", "crash", "baseline", "confirmed", "refuted", "claim", "result",
                     "val_bpb", "", ME, pid_of(OTHER)]),
    st.text(max_size=30),
)  # fmt: skip


def plausible(obj: Any) -> st.SearchStrategy:
    if isinstance(obj, bool):
        return st.booleans()
    if isinstance(obj, int):
        return st.one_of(st.integers(0, 2**32), st.integers(-5, 5))
    if isinstance(obj, float):
        return st.one_of(st.floats(0, 2e9), st.sampled_from([0.0, obj + 1, obj - 1, obj * 2, time.time()]))
    if isinstance(obj, str):
        return PLAUSIBLE_STR
    if isinstance(obj, bytes):  # signatures, keys, object data: same length, other content
        return st.binary(min_size=len(obj), max_size=len(obj))
    if obj is None:
        return st.one_of(st.none(), st.floats(0, 10), PLAUSIBLE_STR)
    return WEIRD


@st.composite
def mutated(draw, obj: Any, depth: int = 0) -> Any:
    """One structure-aware mutation somewhere inside an unpacked msgpack value."""
    if isinstance(obj, dict) and obj and depth < 5:
        d = dict(obj)
        key = draw(st.sampled_from(sorted(d, key=repr)))
        op = draw(st.sampled_from(["drop", "add", "replace", *["dig"] * 6]))
        if op == "drop":
            del d[key]
        elif op == "add":
            d[draw(st.one_of(st.text(max_size=8), st.integers(0, 9)))] = draw(WEIRD)
        elif op == "replace":
            d[key] = draw(WEIRD)
        else:
            d[key] = draw(mutated(d[key], depth + 1))
        return d
    if isinstance(obj, list) and depth < 5:
        lst = list(obj)
        op = draw(st.sampled_from(["dig", "dig", "append", "dup", "clear"] if lst else ["append", "dup"]))
        if op == "dig":
            i = draw(st.integers(0, len(lst) - 1))
            lst[i] = draw(mutated(lst[i], depth + 1))
        elif op == "append":
            lst.append(draw(WEIRD))
        elif op == "dup":  # duplicates, and past the count caps
            lst.extend((lst or [draw(WEIRD)])[:1] * draw(st.sampled_from([1, 2, 16, 300])))
        else:
            lst = []
        return lst
    if isinstance(obj, bytes) and obj:
        try:
            inner = msgpack.unpackb(obj, raw=False)
        except Exception:  # noqa: BLE001 - not a nested message
            inner = None
        if isinstance(inner, dict) and draw(st.booleans()):  # a bundled message: mutate it as a message
            return _pack(draw(mutated(inner, depth + 1)))
        return draw(st.one_of(byte_mutation(obj), plausible(obj), WEIRD))
    tweaks: list[Any] = []
    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj) and abs(obj) < 2**62:
        tweaks = [obj + 1, -obj, obj * 1e6, float(obj), int(obj)]
    elif isinstance(obj, str) and obj:
        tweaks = [obj.upper(), obj[:-1], obj + obj[-1], obj * 20]
    options = [plausible(obj)] * 3 + [WEIRD] + ([st.sampled_from(tweaks)] if tweaks else [])
    return draw(st.one_of(*options))


def _signer(d: dict) -> Any:
    pub = d.get("public_key")
    return SIGNERS.get(pub) if isinstance(pub, bytes) else None


def _resign(d: Any) -> Any:
    """Re-sign a (mutated) Result/Verification dict's receipt so the mutation reaches the checks behind
    the signature; anything that no longer decodes is returned as is."""
    if not isinstance(d, dict) or not isinstance(d.get("receipt"), dict):
        return d
    kp = _signer(d)
    if kp is None:
        return d
    try:
        canonical = Receipt.from_dict(d["receipt"]).canonical_bytes()
    except WireError:
        return d
    return {**d, "signature": kp.private_key.sign(RECEIPT_DOMAIN + canonical)}


@st.composite
def structured(draw, pool: list[bytes], resign: Callable[[Any], Any] = _resign) -> bytes:
    d = msgpack.unpackb(draw(one_of_list(pool)), raw=False)
    for _ in range(draw(st.integers(1, 2))):
        d = draw(mutated(d))
    if draw(st.booleans()):
        d = resign(d)
    try:
        return _pack(d)
    except (TypeError, ValueError, OverflowError):
        return _pack({"v": 2, "t": "claim"})


def fuzz_bytes(pool: list[bytes], specials: list[bytes] = (), resign: Callable[[Any], Any] = _resign):
    """Valid encodings (1/8), hand-made specials (1/8), structured mutations (3/8), byte-level mutations
    (2/8) and raw random bytes (1/8)."""
    branches = [
        one_of_list(pool),
        one_of_list(specials) if specials else one_of_list(pool),
        structured(pool, resign),
        structured(pool, resign),
        structured(pool, resign),
        one_of_list(pool).flatmap(byte_mutation),
        one_of_list(pool).flatmap(byte_mutation),
        st.binary(max_size=120),
    ]
    return st.integers(0, len(branches) - 1).flatmap(branches.__getitem__)


# --- a real attacker peer -----------------------------------------------------------------------------


@asynccontextmanager
async def duel(object_source=None, *, pubsub: bool = False, **net_kw):
    """A victim (open_network, rate limits out of the way so they never mask decoding) and an attacker
    host connected to it (with a raw GossipSub when `pubsub`). Yields (net, host, ps)."""
    source = object_source or (lambda oid: None)
    config = cfg(rate_limit_per_s=1e6, rate_burst=10**6, batch_wait_s=0, **net_kw)
    async with open_network(config, source) as net:
        if pubsub:  # the adversary host of tests/adversary.py
            async with adversary(KP) as adv:
                await _connect(adv.host, net)
                yield net, adv.host, adv.ps
                assert_alive(net)
            return
        host = new_host(key_pair=KP)
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                await _connect(host, net)
                yield net, host, None
                assert_alive(net)
            finally:
                await host.close()


async def _connect(host, net) -> None:
    with trio.fail_after(10):
        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(net.addrs()[0])))


def assert_alive(net) -> None:
    """The network's task group runs (nothing cancelled it) and its services are still there."""
    assert not net.nursery.cancel_scope.cancel_called
    assert net.nursery.child_tasks, "the network's services are gone"


def assert_contained(net) -> None:
    """Faults contained at a boundary (net.faults) are survivable and allowed, but rare: more than one
    in a batch means a handler raises on a whole class of input. The task group must be alive."""
    assert_alive(net)
    for place in net.faults.counts:
        event(f"contained fault: {place}")
    assert sum(net.faults.counts.values()) <= 1, dict(net.faults.counts)


async def read_all(stream, timeout: float = 8.0) -> tuple[bytes, bool]:
    """Everything the victim writes until it ends the stream: (data, whether the read saw a reset; yamux
    mostly reports a reset as EOF, so the tests judge by the data). A victim that
    neither answers nor ends the stream in `timeout` fails the test (a hang)."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                return bytes(buf), False
            except (StreamError, trio.BrokenResourceError, trio.ClosedResourceError):
                return bytes(buf), True
            if not chunk:
                return bytes(buf), False
            buf += chunk


async def send_request(host, net, protocol: str, data: bytes) -> tuple[bytes, bool]:
    """Open a stream to the victim once its previous one of ours is gone (the guard's per-peer slots),
    write `data`, close our side and read what comes back until the victim ends the stream."""
    await wait_until(lambda: net.streams.busy(protocol, ME) == 0)
    with trio.fail_after(10):
        stream = await host.new_stream(ID.from_base58(net.peer_id), [protocol])
    try:
        try:
            if data:
                await write_all(stream, data)
            await stream.close_write()
        except (StreamError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the victim may refuse (reset) a request before all of it is written: read what it said
        return await read_all(stream)
    finally:
        await reset_quietly(stream)


def _dedup(items: list) -> list:
    return list(dict.fromkeys(items))


# --- 1. gossip --------------------------------------------------------------------------------------


def _gossip_pool() -> tuple[list[bytes], list[bytes]]:
    now = time.time()
    garbage_commit = GitObject.from_raw(1, b"garbage")  # hashes right, is no commit
    garbage_tree = GitObject.from_raw(2, b"100644 no-nul-no-sha")
    past_base = DeltaObject(git_object_id(3, b"hello"), "f" * 40, 100_000, 100_000, b"")  # prefix+suffix > base
    r_objs = result(KP, objects=[blob(b"x = 1\n"), garbage_commit, garbage_tree])
    r_delta = Result(r_objs.receipt, r_objs.signature, r_objs.public_key, objects=[], objects_total=3,
                     deltas=[past_base])  # fmt: skip
    vr = receipt(ME, status="confirmed", target_peer=pid_of(OTHER), claimed_value=1.5, ts=now)
    verification = Verification(vr, sign_receipt(vr, KP.private_key), KP.public_key.serialize())
    pool = [
        claim(ME).to_wire(),
        result(KP).to_wire(),
        result(KP, status="crash", value=None).to_wire(),
        r_objs.to_wire(),
        r_delta.to_wire(),
        verification.to_wire(),
        Bundle((result(KP), claim(ME, exp="b" * 40))).to_wire(),
        post(ME).to_wire(),
        result(OTHER).to_wire(),  # someone else's validly signed result: fine from any connection
        claim(pid_of(OTHER)).to_wire(),  # peer_mismatch
    ]
    c = msgpack.unpackb(pool[0], raw=False)
    r = msgpack.unpackb(pool[1], raw=False)
    huge_total = _pack({**r, "objects_total": 2**64 - 1})
    specials = [
        _pack({"v": 2, "t": "bundle", "messages": [pool[6]]}),  # nested bundle
        _pack({"v": 2, "t": "bundle", "messages": [pool[0]] * 17}),  # over MAX_BUNDLE
        _pack({"v": 2, "t": "bundle", "messages": [pool[7]]}),  # a board post cannot be bundled
        _pack({"v": 2, "t": "bundle", "messages": []}),
        _pack({**c, "v": 1}),  # obsolete version
        _pack({**c, "v": True}),
        _pack({**c, "lease_until": float("nan")}),
        _pack({**r, "receipt": {**r["receipt"], "value": float("inf")}}),
        _pack({**r, "objects": [{"oid": "0" * 40, "kind": 1, "data": b"garbage"}], "objects_total": 1}),
        _pack({**r, "objects": [{"oid": garbage_commit.oid, "kind": 9, "data": b"garbage"}], "objects_total": 1}),
        _pack({**r, "deltas": [{**past_base.to_dict(), "prefix": 2**64 - 1}], "objects_total": 1}),
        _pack({**r, "deltas": [{**past_base.to_dict(), "base": past_base.oid}], "objects_total": 1}),
        huge_total,
        _pack([1, 2, 3]),
        b"",
    ]
    return pool, specials


GOSSIP_POOL, GOSSIP_SPECIALS = _gossip_pool()
gossip_items = st.tuples(st.sampled_from(["exp", "exp", "exp", "board"]), fuzz_bytes(GOSSIP_POOL, GOSSIP_SPECIALS))


def _inner(m) -> tuple:
    return m.messages if isinstance(m, Bundle) else (m,)


def gossip_oracle(topic: str, data: bytes) -> int:
    """0 if the victim must reject the message, else how many messages it delivers (a bundle's count)."""
    try:
        m = decode(data)
    except WireError:
        return 0
    allowed = (Claim, Result, Verification, Bundle) if topic == "exp" else (BoardPost,)
    inner = _inner(m)
    if not isinstance(m, allowed) or any(Gossip._check_from(one, ME) is not None for one in inner):
        return 0
    return len(inner)


async def gossip_batch(items: list[tuple[str, bytes]]) -> None:
    async with duel(pubsub=True) as (net, host, ps):
        exp, board = topic_names("5e11")
        nid = ID.from_base58(net.peer_id)
        for t in (exp, board):
            await ps.subscribe(t)
        for t in (exp, board):
            await ps.wait_for_subscription(nid, t, timeout=10)
            await ps.wait_for_mesh(nid, t, timeout=10)
        expected = [gossip_oracle(topic, data) for topic, data in items]
        for topic, data in items:
            await ps.publish(exp if topic == "exp" else board, data)
            await trio.sleep(0.005)  # raw libp2p drops a tight burst in its 32-RPC outbound queue
        want_received, want_rejected = sum(expected), expected.count(0)
        await wait_until(
            lambda: net.stats["received"] + sum(net.stats["rejected"].values()) >= want_received + want_rejected,
            timeout=15,
        )
        rejected = dict(net.stats["rejected"])
        # never validator_error (the decoders raise WireError and nothing else), never a rate limit
        assert set(rejected) <= {"malformed", "obsolete_version", "wrong_topic", "peer_mismatch", "bad_signature"}
        assert sum(rejected.values()) == want_rejected, (rejected, expected)
        for reason in rejected:
            event(f"gossip rejected: {reason}")  # --hypothesis-show-statistics shows what was reached
        event(f"gossip accepted: {len(expected) - want_rejected > 0}")
        assert net.stats["received"] == want_received and net.stats["duplicate"] == 0
        # exactly the accepted messages were delivered (a bundle as its messages), from the attacker
        got = [await recv(net, 5) for _ in range(want_received)]
        assert all(inc.from_peer == ME for inc in got)
        want = [m for (_, data), n in zip(items, expected, strict=True) if n for m in _inner(decode(data))]
        assert sorted(repr(inc.message) for inc in got) == sorted(map(repr, want))
        # still responsive: a fresh valid claim from the same connection gets through
        fresh = claim(ME, exp=hashlib.sha1(repr(items).encode()).hexdigest())
        await ps.publish(exp, fresh.to_wire())
        inc = await recv(net, 10)
        assert inc.message == fresh and inc.from_peer == ME
        assert net.stats["bans"] == 0
        assert_contained(net)


@FUZZ
@given(st.lists(gossip_items, min_size=5, max_size=30).map(_dedup))
def test_fuzzed_gossip_is_counted_and_the_node_keeps_listening(items):
    trio.run(gossip_batch, items)


# --- 2. objects protocol: the server -----------------------------------------------------------------

SERVED = [blob(b"print('hi')\n"), GitObject.from_raw(1, b"garbage"), GitObject.from_raw(2, b""), blob(b"")]
SOURCE = {o.oid: (o.kind, o.data) for o in SERVED}
UNKNOWN = ["0" * 40, "f" * 40, hashlib.sha1(b"x").hexdigest()]
oid_lists = st.lists(st.sampled_from(list(SOURCE) + UNKNOWN), unique=True, max_size=7)
OBJ_REQUEST_POOL = [frame(_pack(list(SOURCE))), frame(_pack(UNKNOWN[:1] + list(SOURCE)[:2])), frame(_pack([]))]


@st.composite
def objects_requests(draw) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # a well-formed request
        return frame(_pack(draw(oid_lists)))
    if kind == 1:  # a mutated oid list, framed right
        obj = draw(st.one_of(oid_lists.flatmap(mutated), st.sampled_from([
            ["0" * 40] * 2, [s.upper() for s in SOURCE], ["a" * 40] * (MAX_OIDS + 1), {"oids": list(SOURCE)},
            "a" * 40, [b"a" * 40], [None], [["a" * 40]], [f"{i:040x}" for i in range(MAX_OIDS)],
        ])))  # fmt: skip
        try:
            return frame(_pack(obj))
        except (TypeError, ValueError, OverflowError):
            return frame(b"\xc1")
    if kind == 2:  # the length prefix lies
        body = _pack(draw(oid_lists))
        n = draw(st.sampled_from([0, 1, len(body) - 1, len(body) + 1, 64 * 1024, 64 * 1024 + 1, 2**32 - 1]))
        return n.to_bytes(4, "big") + body
    if kind == 3:
        return draw(one_of_list(OBJ_REQUEST_POOL).flatmap(byte_mutation))
    return draw(st.binary(max_size=80))


def objects_server_oracle(req: bytes) -> bytes | None:
    """The victim's response to a request (the transfer protocol as documented); None: it refuses."""
    if len(req) < 4:
        return None
    n = int.from_bytes(req[:4], "big")
    if n > 64 * 1024 or len(req) - 4 < n:
        return None
    try:
        oids = unpack_small(req[4 : 4 + n])
    except FrameError:
        return None
    if not isinstance(oids, list) or len(oids) > MAX_OIDS or len(set(map(repr, oids))) != len(oids):
        return None
    if not all(isinstance(o, str) and len(o) == 40 and all(c in "0123456789abcdef" for c in o) for o in oids):
        return None
    out = b""
    for oid in oids:
        if oid in SOURCE:
            kind, data = SOURCE[oid]
            out += bytes([0, kind]) + len(data).to_bytes(4, "big") + data
        else:
            out += b"\x01"
    return out


async def objects_server_batch(requests: list[bytes]) -> None:
    async with duel(SOURCE.get, dht=False) as (net, host, _):
        for req in requests:
            want = objects_server_oracle(req)
            event(f"objects request: {'refused' if want is None else 'answered'}")
            got, _ = await send_request(host, net, OBJECTS_PROTOCOL, req)
            if want is None:
                assert got == b"", f"a refused request gets no answer: {req[:60]!r} -> {got[:60]!r}"
            else:
                assert got == want, f"{req[:60]!r}: {got[:80]!r} != {want[:80]!r}"
        objs = await fetch_objects(host, ID.from_base58(net.peer_id), [SERVED[0].oid, UNKNOWN[0]], timeout=5)
        assert objs == [SERVED[0]]
        assert_contained(net)


@FUZZ
@given(st.lists(objects_requests(), min_size=5, max_size=25))
def test_objects_server_refuses_fuzzed_requests_and_keeps_serving(requests):
    trio.run(objects_server_batch, requests)


# --- 3. objects protocol: the client ------------------------------------------------------------------


@st.composite
def objects_responses(draw) -> tuple[list[str], bytes]:
    """(oids the victim asks for, what the lying server answers)."""
    oids = draw(oid_lists.filter(bool))
    if draw(st.integers(0, 12)) == 0:  # an invalid request never reaches the network: ValueError
        return draw(st.sampled_from([["A" * 40], ["a" * 39], ["a" * 40, 5]])), b""
    kind = draw(st.integers(0, 3))
    if kind == 0 or kind == 1:
        out = b""
        honest = draw(st.booleans())  # every part well-formed (the victim must return what it got)
        for oid in oids:
            lies = [] if honest else ["wrong_data", "bad_kind", "bad_status", "huge", "short"]
            part = draw(st.sampled_from(["good", "good", "missing", "too_large", *lies]))
            kind_, data = SOURCE.get(oid, (3, b"not it"))
            if part == "good" and oid not in SOURCE:
                out += b"\x01"
            elif part == "good":
                out += bytes([0, kind_]) + len(data).to_bytes(4, "big") + data
            elif part == "missing":
                out += b"\x01"
            elif part == "too_large":
                out += b"\x02"
            elif part == "wrong_data":
                out += bytes([0, kind_]) + (len(data) + 1).to_bytes(4, "big") + data + b"!"
            elif part == "bad_kind":
                out += bytes([0, draw(st.sampled_from([0, 5, 255]))]) + len(data).to_bytes(4, "big") + data
            elif part == "bad_status":
                out += bytes([draw(st.integers(3, 255))])
            elif part == "huge":
                out += bytes([0, 3]) + draw(st.sampled_from([MAX_OBJECT + 1, MAX_RESPONSE, 2**32 - 1])).to_bytes(4, "big")
            else:
                out += bytes([0, kind_]) + (len(data) + 100).to_bytes(4, "big") + data
        if kind == 1:
            out = draw(byte_mutation(out))
        return oids, out + draw(st.sampled_from([b"", b"", b"\x00trailing"]))
    if kind == 2:
        return oids, draw(st.binary(max_size=64))
    return oids, b"\x00" * draw(st.integers(0, 12))


def objects_client_oracle(oids: list[str], resp: bytes) -> list[GitObject] | type[Exception]:
    """What fetch_objects returns for a response, or the exception class it raises."""
    if not all(isinstance(o, str) and len(o) == 40 and all(c in "0123456789abcdef" for c in o) for o in oids):
        return ValueError
    pos, total, out = 0, 0, []
    for oid in oids:
        if pos >= len(resp):
            return TransferError
        status, pos = resp[pos], pos + 1
        if status in (1, 2):
            continue
        if status != 0 or len(resp) - pos < 5:
            return TransferError
        kind, n = resp[pos], int.from_bytes(resp[pos + 1 : pos + 5], "big")
        pos += 5
        if kind not in GIT_KINDS or n > MAX_OBJECT or total + n > MAX_RESPONSE or len(resp) - pos < n:
            return TransferError
        data, pos, total = resp[pos : pos + n], pos + n, total + n
        if git_object_id(kind, data) != oid:
            return TransferError
        out.append(GitObject(oid, kind, data))
    return out


async def objects_client_batch(cases: list[tuple[list[str], bytes]]) -> None:
    answer = [b""]

    async def lying_server(stream) -> None:
        try:
            await read_frame(stream, 64 * 1024)
            await write_all(stream, answer[0])
            await stream.close()
        except Exception:  # noqa: BLE001 - the victim gave up first
            await reset_quietly(stream)

    async with duel(dht=False) as (net, host, _):
        host.set_stream_handler(OBJECTS_PROTOCOL, lying_server)
        me = ID.from_base58(ME)
        for oids, resp in cases:
            answer[0] = resp
            want = objects_client_oracle(oids, resp)
            event(f"objects answer: {want.__name__ if isinstance(want, type) else f'{len(want)} objects'}")
            t0 = time.monotonic()
            try:
                got = await fetch_objects(net.host, me, oids, timeout=3)
            except (TransferError, ValueError) as e:
                got = type(e)
            assert time.monotonic() - t0 < 3 + 2 + 1  # its timeout, then at most reset_quietly's 2 s grace
            assert got == want, f"{oids} {resp[:60]!r}: {got} != {want}"
            if isinstance(got, list):
                for o in got:
                    o.verify()
        answer[0] = objects_server_oracle(frame(_pack([SERVED[0].oid])))  # an honest answer
        assert await fetch_objects(net.host, me, [SERVED[0].oid], timeout=3) == [SERVED[0]]
        assert_contained(net)


@FUZZ
@given(st.lists(objects_responses(), min_size=5, max_size=25))
def test_objects_client_returns_only_verified_objects_from_a_lying_server(cases):
    trio.run(objects_client_batch, cases)


async def test_objects_client_gives_up_on_a_dripping_server():
    """A server that never finishes its answer (one byte every 0.5 s) costs the fetch its timeout."""

    async def drip(stream) -> None:
        try:
            await read_frame(stream, 64 * 1024)
            await stream.write(bytes([0, 3]) + (256).to_bytes(4, "big"))  # found: a 256-byte blob follows
            for _ in range(40):
                await trio.sleep(0.5)
                await stream.write(b"\x00")
        except Exception:  # noqa: BLE001 - the victim reset the stream
            await reset_quietly(stream)

    async with duel(dht=False) as (net, host, _):
        host.set_stream_handler(OBJECTS_PROTOCOL, drip)
        t0 = time.monotonic()
        try:
            await fetch_objects(net.host, ID.from_base58(ME), [SERVED[0].oid], timeout=3)
            raise AssertionError("a server that never finishes cannot succeed")
        except TransferError as e:
            assert "timed out" in str(e)
        assert time.monotonic() - t0 < 3 + 2 + 1  # its timeout, then at most reset_quietly's 2 s grace


# --- 4. catch-up: the server (`since` requests) ---------------------------------------------------


def _store(ledger: Ledger, msg: Result) -> None:
    r = msg.receipt
    run = Run(exp_id=r.exp_id, commit_id=r.commit, protocol_id=r.protocol_id, kind="experiment", status=r.status,
              peer=r.peer, parent=r.parent, val_bpb=r.value, finished_at=r.ts, received_at=r.ts)  # fmt: skip
    assert ledger.add_peer_run(run, r.canonical_bytes(), msg.signature, msg.public_key)


NOW = time.time()
STORED = [result(KP, exp_id=f"{i:040x}", ts=NOW - 1000 * i) for i in range(3)] + [
    result(OTHER, exp_id="e" * 40, ts=NOW - 10)
]
STORED_KEYS = [receipt_key(m.receipt.canonical_bytes()) for m in STORED]
SINCE_POOL = [
    frame(_pack({"since": NOW - 1500})),
    frame(_pack({"since": 0, "have": STORED_KEYS[0] + STORED_KEYS[3]})),
    frame(_pack({"since": NOW - 100.5, "have": b""})),
]


@st.composite
def since_requests(draw) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # well-formed
        since = draw(st.one_of(st.floats(allow_nan=False), st.integers(-(2**63), 2**64 - 1),
                               st.sampled_from([NOW - 1500, NOW - 5, 0])))  # fmt: skip
        have = b"".join(draw(st.lists(st.sampled_from(STORED_KEYS + [b"\x00" * KEY_BYTES]), max_size=5)))
        req: dict[str, Any] = {"since": since}
        if draw(st.booleans()):
            req["have"] = have
        return frame(_pack(req))
    if kind in (1, 2):  # structure-aware
        req = {"since": NOW - 1500, "have": STORED_KEYS[1]}
        req = draw(st.one_of(mutated(req), st.sampled_from([
            {"since": float("nan")}, {"since": True}, {"since": "0"}, {"since": None}, {},
            {"since": 0, "have": b"\x00" * 7}, {"since": 0, "have": "x" * 8}, {"since": 0, "have": [b"\x00" * 8]},
            {"since": 0, "have": b"\x00" * (KEY_BYTES * (MAX_HAVE + 1))}, {"since": float("inf")},
            {"since": float("-inf")}, {"since": 0, "a": 1, "b": 2, "c": 3, "d": 4}, {1: 0}, [0],
            {"since": 0, "protocol": PROTOCOL}, {"since": 0, "protocol": "f" * 40}, {"since": 0, "protocol": 7},
            {"since": 0, "protocol": "p" * 65}, {"since": 0, "protocol": None}, {"since": 0, "protocol": b"x"},
        ])))  # fmt: skip
        try:
            return frame(_pack(req))
        except (TypeError, ValueError, OverflowError):
            return frame(b"\xc1")
    if kind == 3:  # the length prefix lies
        body = _pack({"since": 0})
        n = draw(st.sampled_from([0, len(body) - 1, len(body) + 1, MAX_REQUEST, MAX_REQUEST + 1, 2**32 - 1]))
        return n.to_bytes(4, "big") + body
    if kind == 4:
        return draw(one_of_list(SINCE_POOL).flatmap(byte_mutation))
    return draw(st.binary(max_size=60))


def since_oracle(req: bytes, ledger: Ledger) -> list[bytes] | None:
    """The frames the victim sends for a `since` request (catchup.py's protocol); None: it resets."""
    if len(req) < 4:
        return None
    n = int.from_bytes(req[:4], "big")
    if n > MAX_REQUEST or len(req) - 4 < n:
        return None
    try:
        obj = msgpack.unpackb(req[4 : 4 + n], raw=False, max_map_len=4, max_array_len=0, max_str_len=64,
                              max_bin_len=KEY_BYTES * MAX_HAVE, max_ext_len=0)  # fmt: skip
    except Exception:  # noqa: BLE001 - whatever msgpack refuses
        return None
    if not isinstance(obj, dict):
        return None
    since, have = obj.get("since"), obj.get("have", b"")
    if isinstance(since, bool) or not isinstance(since, (int, float)) or since != since:
        return None
    if not isinstance(have, bytes) or len(have) % KEY_BYTES or len(have) > KEY_BYTES * MAX_HAVE:
        return None
    skip = frozenset(have[i : i + KEY_BYTES] for i in range(0, len(have), KEY_BYTES))
    protocol = obj.get("protocol", PROTOCOL)  # a request may name the protocol it wants
    if protocol is not None and not isinstance(protocol, str):
        return None
    return [*results_from_ledger(ledger, protocol, float(since), skip), b""]


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


async def since_server_batch(requests: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "victim.sqlite")
        for m in STORED:
            _store(ledger, m)
        got_results: list[Result] = []

        async def deliver(inc) -> bool:
            got_results.append(inc.message)
            return True

        async with duel(dht=False) as (net, host, _):
            net.handle(SINCE_PROTOCOL, CatchUp(net.host, ledger, PROTOCOL, deliver).handle_since, SINCE_LIMITS)
            for req in requests:
                want = since_oracle(req, ledger)
                event(f"since request: {'refused' if want is None else f'{len(want) - 1} results'}")
                got, _ = await send_request(host, net, SINCE_PROTOCOL, req)
                if want is None:
                    assert got == b"", f"a bad request gets no answer: {req[:60]!r} -> {got[:60]!r}"
                else:
                    assert _frames(got) == want, f"{req[:60]!r}: {_frames(got)} != {want}"
            # a well-formed sync from the same peer is served in full
            client = CatchUp(host, Ledger(Path(tmp) / "attacker.sqlite"), PROTOCOL, deliver)
            await wait_until(lambda: net.streams.busy(SINCE_PROTOCOL, ME) == 0)
            assert await client.fetch_from(net.peer_id, since=0.0) == len(STORED)
            assert {m.receipt for m in got_results} == {m.receipt for m in STORED}
            assert_contained(net)
            client.ledger.db.close()
        ledger.db.close()


@FUZZ
@given(st.lists(since_requests(), min_size=5, max_size=25))
def test_catchup_server_refuses_fuzzed_since_requests_and_keeps_serving(requests):
    trio.run(since_server_batch, requests)


# --- 5. catch-up: the client --------------------------------------------------------------------------

CATCHUP_POOL = [m.to_wire() for m in STORED] + [
    result(KP, objects=[GitObject.from_raw(1, b"garbage")]).to_wire(),
    result(OTHER, status="crash", value=None).to_wire(),
]


@st.composite
def catchup_entries(draw) -> bytes:
    """One frame of a catch-up answer: valid results, mutated ones, other messages, junk."""
    kind = draw(st.integers(0, 5))
    if kind <= 1:
        data = draw(one_of_list(CATCHUP_POOL))
    elif kind == 2:
        data = draw(structured(CATCHUP_POOL))
    elif kind == 3:
        data = draw(one_of_list(CATCHUP_POOL).flatmap(byte_mutation))
    elif kind == 4:
        data = draw(st.sampled_from([claim(ME).to_wire(), claim(pid_of(OTHER)).to_wire(), post(ME).to_wire(),
                                     GOSSIP_POOL[5], GOSSIP_POOL[6]]))
    else:
        data = draw(st.binary(min_size=1, max_size=60))
    return frame(data) if data else frame(b"\xc0")


@st.composite
def catchup_answers(draw) -> bytes:
    out = b"".join(draw(st.lists(catchup_entries(), max_size=6)))
    end = draw(st.sampled_from(["terminated", "terminated", "eof", "oversized", "truncated", "mutated"]))
    if end == "terminated":
        return out + frame(b"") + draw(st.sampled_from([b"", frame(CATCHUP_POOL[0])]))
    if end == "oversized":
        return out + draw(st.sampled_from([MAX_FRAME + 1, 2**32 - 1])).to_bytes(4, "big") + b"\x00" * 16
    if end == "truncated" and out:
        return out[: draw(st.integers(0, len(out) - 1))]
    if end == "mutated" and out:
        return draw(byte_mutation(out + frame(b"")))
    return out


def catchup_client_oracle(answer: bytes) -> list[Result | Claim]:
    """What fetch_from delivers, in order (frames until the empty one, an oversized one or EOF): valid
    results, and claims of the server itself (a peer vouches for its own claims only)."""
    out: list[Result | Claim] = []
    pos = 0
    while len(answer) - pos >= 4:
        n = int.from_bytes(answer[pos : pos + 4], "big")
        pos += 4
        if n > MAX_FRAME or len(answer) - pos < n or n == 0:
            break
        data, pos = answer[pos : pos + n], pos + n
        try:
            m = decode(data)
            if isinstance(m, Claim):
                if m.peer == ME:
                    out.append(m)
                continue
            if not isinstance(m, Result):
                continue
            check_result(m)
        except WireError:
            continue
        out.append(m)
    return out


async def catchup_client_batch(answers: list[bytes]) -> None:
    current = [b""]

    async def lying_server(stream) -> None:
        try:
            await write_all(stream, current[0])
            await stream.close()
        except Exception:  # noqa: BLE001 - the victim gave up first
            await reset_quietly(stream)

    with tempfile.TemporaryDirectory() as tmp:
        delivered: list[Any] = []
        bad: list[str] = []

        async def deliver(inc) -> bool:
            # fetch_from catches everything: record, assert outside
            delivered.append(inc.message)
            try:
                assert inc.from_peer == ME
                if isinstance(inc.message, Claim):
                    assert inc.message.peer == ME  # the server's own claim, never another's
                else:
                    assert isinstance(inc.message, Result)
                    check_result(inc.message)
            except (AssertionError, WireError) as e:
                bad.append(repr(e))
            return True

        async with duel(dht=False) as (net, host, _):
            host.set_stream_handler(SINCE_PROTOCOL, lying_server)  # what the client asks (since 0: all)
            catchup = CatchUp(net.host, Ledger(Path(tmp) / "victim.sqlite"), PROTOCOL, deliver)
            for answer in answers:
                current[0] = answer
                delivered.clear()
                want = catchup_client_oracle(answer)
                event(f"catch-up answer: {len(want)} valid results")
                with trio.fail_after(10):
                    n = await catchup.fetch_from(ME)
                assert not bad, bad
                results = sum(isinstance(m, Result) for m in want)
                assert n == results and delivered == want, f"{answer[:80]!r}: {n} {delivered} != {want}"
            current[0] = b"".join(frame(m.to_wire()) for m in STORED) + frame(b"")
            assert await catchup.fetch_from(ME) == len(STORED)
            assert_contained(net)
            catchup.ledger.db.close()


@FUZZ
@given(st.lists(catchup_answers(), min_size=5, max_size=20))
def test_catchup_client_delivers_only_verified_results_from_a_lying_server(answers):
    trio.run(catchup_client_batch, answers)


# --- 6. the experiment DHT ---------------------------------------------------------------------------

EXPS = ["d" * 40, "9" * 40]


def _record_pool() -> list[tuple[str, bytes]]:
    now = time.time()
    out = []
    for exp in EXPS:
        for kp in (KP, OTHER):
            out.append((exp, encode_record(make_claim_record(exp, "c" * 40, now + 60, kp, ts=now))))
            out.append((exp, encode_record(make_claim_record(exp, "c" * 40, now + 600, kp, ts=now))))
        r = receipt(pid_of(OTHER), exp_id=exp)
        out.append((exp, encode_record(make_result_record(r, sign_receipt(r, OTHER.private_key), OTHER))))
    return out


RECORDS = _record_pool()
RECORD_VALUES = [v for _, v in RECORDS]


def _resign_record(d: Any) -> Any:
    """A mutated record with a valid record signature (forged content reaches the later checks)."""
    if not isinstance(d, dict):
        return d
    kp = _signer(d)
    if kp is None:
        return d
    try:
        unsigned = _pack({k: d[k] for k in sorted(d) if k != "signature"})
    except (TypeError, ValueError, OverflowError):
        return d
    return {**d, "signature": kp.private_key.sign(RECORD_DOMAIN + unsigned)}


KEYS = [record_key(e).encode() for e in EXPS]
BAD_KEYS = [b"", b"/exp/" + b"a" * 39, b"/exp/" + b"A" * 40, b"/exp/\xff" + b"a" * 39, b"/pk/" + b"a" * 40,
            b"exp/" + b"a" * 40, b"/exp/" + b"a" * 200, b"/exp/" + EXPS[0].encode() + b"/"]  # fmt: skip


@st.composite
def kad_requests(draw) -> bytes:
    """One KAD stream's bytes: PUT_VALUEs of fuzzed records under good and bad keys, byte-mutated PUTs,
    lying varint prefixes and raw junk."""
    kind = draw(st.integers(0, 7))
    if kind <= 4:
        key = draw(st.sampled_from(KEYS)) if draw(st.integers(0, 9)) else draw(st.sampled_from(BAD_KEYS))
        msg = KadMessage(type=KadMessage.MessageType.PUT_VALUE, key=key)
        msg.record.key = key
        msg.record.value = draw(fuzz_bytes(RECORD_VALUES, resign=_resign_record))
        if draw(st.integers(0, 9)) == 0:  # py-libp2p's own record signature, garbage: never stored
            msg.record.author = draw(st.binary(min_size=1, max_size=40))
            msg.record.signature = draw(st.binary(min_size=1, max_size=64))
        if draw(st.integers(0, 9)) == 0:  # record key differs from the message key
            msg.record.key = draw(st.sampled_from(KEYS + BAD_KEYS))
        return encode_uvarint(msg.ByteSize()) + msg.SerializeToString()
    if kind == 5:  # a valid PUT, byte-mutated on the wire
        msg = KadMessage(type=KadMessage.MessageType.PUT_VALUE, key=KEYS[0])
        msg.record.key, msg.record.value = KEYS[0], RECORD_VALUES[0]
        return draw(byte_mutation(encode_uvarint(msg.ByteSize()) + msg.SerializeToString()))
    if kind == 6:  # a lying varint prefix
        body = draw(st.binary(max_size=40))
        n = draw(st.sampled_from([len(body) + 1, MAX_DHT_MESSAGE_SIZE + 1, 2**63]))
        return encode_uvarint(n) + body
    body = draw(st.binary(max_size=80))
    return draw(st.sampled_from([encode_uvarint(len(body)) + body, body]))


def _first_kad_message(data: bytes) -> tuple[KadMessage | None, int]:
    """The first varint-prefixed KAD message in `data` as py-libp2p's server reads it, and its end."""
    prefix = b""
    for b in data[:10]:
        prefix += bytes([b])
        if not b & 0x80:
            break
    try:
        n = decode_uvarint(prefix)
    except Exception:  # noqa: BLE001 - ParseError: truncated or over 64 bits
        return None, 0
    end = len(prefix) + n
    if n > MAX_DHT_MESSAGE_SIZE or len(data) < end:
        return None, 0
    msg = KadMessage()
    try:
        msg.ParseFromString(data[len(prefix) : end])
    except Exception:  # noqa: BLE001 - protobuf DecodeError
        return None, 0
    return msg, end


def dht_put_oracle(data: bytes, store: dict[bytes, bytes]) -> str:
    """What the victim does with a stream's first message: "stored" (acknowledged; `store` updated like
    the victim's must be), "refused" (stream reset, nothing written) or "other" (not a PUT_VALUE)."""
    msg, _ = _first_kad_message(data)
    if msg is None:
        return "refused"
    if msg.type != KadMessage.MessageType.PUT_VALUE:
        return "other"
    if not msg.HasField("record") or msg.HasField("senderRecord"):  # no sender record can be valid here
        return "refused"
    key, value = msg.record.key, msg.record.value
    if msg.key != key or not key or not value or (msg.record.signature and msg.record.author):
        return "refused"
    try:
        key_str = key.decode("utf-8")
        ExpValidator().validate(key_str, value)  # the record's checks, and dated at most 5 min ahead
    except (UnicodeDecodeError, ValueError):  # WireError is a ValueError
        return "refused"
    old = store.get(key)
    if old is not None and ExpValidator().select(key_str, [old, value]) == 0:
        return "refused"
    store[key] = value
    return "stored"


def _kad_reply(data: bytes) -> KadMessage:
    msg, end = _first_kad_message(data)
    assert msg is not None and end, f"the victim's answer is no KAD message: {data[:60]!r}"
    return msg


def _kad(type_: int, key: bytes, value: bytes | None = None) -> bytes:
    msg = KadMessage(type=type_, key=key)
    if value is not None:
        msg.record.key, msg.record.value = key, value
    return encode_uvarint(msg.ByteSize()) + msg.SerializeToString()


async def dht_batch(requests: list[bytes]) -> None:
    async with duel() as (net, host, _):
        dht = net.dht
        store: dict[bytes, bytes] = {}
        for data in requests:
            want = dht_put_oracle(data, store)
            event(f"kad request: {want}")
            got, _ = await send_request(host, net, KAD_PROTOCOL, data)
            if want == "stored":
                reply = _kad_reply(got)
                assert reply.type == KadMessage.MessageType.PUT_VALUE and reply.record.value == store[reply.key]
            elif want == "refused":
                assert got == b"", f"a refused KAD request gets no answer: {data[:80]!r}"
        # only valid records are stored, exactly the ones the oracle accepted
        stored = {k: rec.value for k, (rec, _) in dht.kad.value_store.store.items() if k.startswith(b"/exp/")}
        assert stored == store
        assert dht.local_count() == len(store)
        for k, v in stored.items():
            exp_id = exp_id_of_key(k.decode())
            assert dht.get_local(exp_id) == decode_record(v, exp_id)
        # a well-behaved client's PUT and GETs are answered
        fresh = encode_record(make_claim_record("7" * 40, "c" * 40, time.time() + 60, KP))
        key = record_key("7" * 40).encode()
        got, _ = await send_request(host, net, KAD_PROTOCOL, _kad(KadMessage.MessageType.PUT_VALUE, key, fresh))
        assert _kad_reply(got).record.value == fresh
        for k, v in [*store.items(), (key, fresh)]:
            got, _ = await send_request(host, net, KAD_PROTOCOL, _kad(KadMessage.MessageType.GET_VALUE, k))
            reply = _kad_reply(got)
            assert reply.type == KadMessage.MessageType.GET_VALUE and reply.record.value == v
            assert decode_record(reply.record.value, exp_id_of_key(k.decode()))
        assert_contained(net)


@FUZZ
@given(st.lists(kad_requests(), min_size=5, max_size=25))
def test_dht_stores_no_invalid_record_from_fuzzed_kad_requests(requests):
    trio.run(dht_batch, requests)


async def test_a_dht_claim_dated_years_ahead_cannot_squat_an_experiment():
    """Found while fuzzing the KAD server: a signed claim record with ts ten years ahead and lease_until
    60 s later passes every check, so one PUT from any peer holds an experiment for a decade."""
    exp = "5" * 40
    async with duel() as (net, host, _):
        ahead = time.time() + 10 * 365 * 86400.0
        squat = make_claim_record(exp, "c" * 40, ahead + 60, KP, ts=ahead)  # lease - ts = 60 s: "valid"
        key = record_key(exp).encode()
        got, _ = await send_request(host, net, KAD_PROTOCOL, _kad(KadMessage.MessageType.PUT_VALUE, key,
                                                                  encode_record(squat)))  # fmt: skip
        # the victim's own, honest claim for the experiment
        own = KeyPair(net.host.get_private_key(), net.host.get_public_key())
        await net.dht.put(make_claim_record(exp, "c" * 40, time.time() + 600, own), lookup=False, timeout=1)
        rec = net.dht.get_local(exp)
        assert rec is not None
        assert rec.lease_until <= time.time() + MAX_LEASE_SECONDS + 3600, (
            f"{rec.peer[:16]} holds {exp[:8]} until {rec.lease_until - time.time():.0f} s from now"
        )
