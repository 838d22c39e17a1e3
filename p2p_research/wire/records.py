"""DHT records of experiments: the latest known state of one experiment, signed by the node that stored it.

Stored under the key ``/exp/<40 hex experiment id>`` (see :func:`record_key`). A record is a msgpack map::

    {"v": 1, "t": "exp-record", "exp_id", "state": "claim" | "result", "peer", "lease_until",
     "value", "status", "commit", "ts", "public_key", "receipt", "receipt_signature", "signature"}

* a **claim** record says "``peer`` runs this experiment until ``lease_until``" (``status`` "claim",
  ``value`` None, empty receipt fields);
* a **result** record carries the canonical bytes of the signed :class:`Receipt` plus its signature
  (``lease_until`` 0, ``value``/``status``/``commit``/``ts`` copied from the receipt).

``signature`` is the node's libp2p signature over ``RECORD_DOMAIN + canonical bytes of the map without
"signature"``. :func:`decode_record` checks everything and raises :class:`WireError` for anything wrong;
:func:`select_record` is the deterministic, commutative merge rule that every DHT node applies (a
result beats a claim; the first finisher among results; the newest lease among claims; ties broken
by the lower peer id, then by the lower encoding).

Pure apart from libp2p's crypto, imported lazily (as in :mod:`receipts`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgpack

from .messages import (
    MAX_PUBLIC_KEY,
    MAX_SIGNATURE,
    RESULT_STATUSES,
    WIRE_VERSION,
    Receipt,
    WireError,
    _bytes,
    _float,
    _get,
    _hex40,
    _peer,
    _req_float,
    _str,
    _unpack,
    decode_receipt,
)
from .receipts import _public_key, peer_id_of, verify_receipt

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

RECORD_TYPE = "exp-record"
#: Domain separation: a record signature can never be replayed as a receipt or gossip signature.
RECORD_DOMAIN = b"p2p-research/exp-record/1:"
MAX_RECORD_BYTES = 8 * 1024
MAX_RECEIPT_BYTES = 4 * 1024
#: A claim may not hold a lease longer than this past its own timestamp (a sanity cap on hogging).
MAX_LEASE_SECONDS = 7 * 24 * 3600.0
KEY_PREFIX = "/exp/"
STATES = ("claim", "result")

_KEY_RE = re.compile(r"/exp/([0-9a-f]{40})")
_FIELDS = frozenset(
    {
        "v", "t", "exp_id", "state", "peer", "lease_until", "value", "status", "commit", "ts",
        "public_key", "receipt", "receipt_signature", "signature",
    }
)  # fmt: skip


def record_key(exp_id: str) -> str:
    """The DHT key of an experiment: ``/exp/<40 lowercase hex>`` (45 bytes; keys over ~50 break lookups)."""
    if not isinstance(exp_id, str) or not re.fullmatch(r"[0-9a-f]{40}", exp_id):
        raise ValueError(f"invalid experiment id {exp_id!r}: expected 40 lowercase hex chars")
    return KEY_PREFIX + exp_id


def exp_id_of_key(key: str) -> str:
    """The experiment id in a key ``/exp/<40 lowercase hex>``; ValueError with a clear message otherwise."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        shown = key if isinstance(key, str) else type(key).__name__
        raise ValueError(
            f"invalid DHT key {shown!r:.120}: expected /exp/<40 lowercase hex experiment id> "
            f"({len(key.encode()) if isinstance(key, str) else '?'} bytes; keys are 45 bytes)"
        )
    return key[len(KEY_PREFIX) :]


@dataclass(frozen=True)
class ExpRecord:
    """One experiment's state as stored in the DHT. Build with :func:`make_claim_record` /
    :func:`make_result_record`; read with :func:`decode_record`."""

    exp_id: str
    state: str  # "claim" | "result"
    peer: str
    lease_until: float  # claims: end of the lease (unix s); results: 0
    value: float | None  # results: the metric (None for a crash); claims: None
    status: str  # "claim" or the result's status (kept/discarded/crash/baseline)
    commit: str
    ts: float
    public_key: bytes
    receipt: bytes  # results: the receipt's canonical bytes; claims: b""
    receipt_signature: bytes  # results: the receipt's signature; claims: b""
    signature: bytes = b""

    TYPE: ClassVar[str] = RECORD_TYPE

    @property
    def key(self) -> str:
        return KEY_PREFIX + self.exp_id

    @property
    def is_result(self) -> bool:
        return self.state == "result"

    def unsigned_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": WIRE_VERSION,
            "t": RECORD_TYPE,
            "exp_id": self.exp_id,
            "state": self.state,
            "peer": self.peer,
            "lease_until": float(self.lease_until),
            "value": None if self.value is None else float(self.value),
            "status": self.status,
            "commit": self.commit,
            "ts": float(self.ts),
            "public_key": bytes(self.public_key),
            "receipt": bytes(self.receipt),
            "receipt_signature": bytes(self.receipt_signature),
        }
        return {k: d[k] for k in sorted(d)}

    def signing_bytes(self) -> bytes:
        """What ``signature`` covers: the domain prefix + the canonical map without "signature"."""
        return RECORD_DOMAIN + _pack(self.unsigned_dict())

    def receipt_obj(self) -> Receipt | None:
        """The decoded receipt of a result record (None for a claim)."""
        return decode_receipt(self.receipt) if self.receipt else None


def _pack(d: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(d, use_bin_type=True, use_single_float=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"exp-record: cannot encode ({type(e).__name__}: {str(e)[:80]})") from None


def _sign(r: ExpRecord, key_pair: KeyPair) -> ExpRecord:
    sig = key_pair.private_key.sign(r.signing_bytes())
    signed = ExpRecord(**{**r.__dict__, "signature": sig})
    decode_record(encode_record(signed), r.exp_id)  # a record we would reject is never produced
    return signed


def make_claim_record(
    exp_id: str, commit: str, lease_until: float, key_pair: KeyPair, *, ts: float | None = None
) -> ExpRecord:
    """A signed claim: this node runs ``exp_id`` (commit ``commit``) until ``lease_until``."""
    now = time.time() if ts is None else float(ts)
    pub = key_pair.public_key.serialize()
    r = ExpRecord(
        exp_id=exp_id, state="claim", peer=peer_id_of(pub), lease_until=float(lease_until), value=None,
        status="claim", commit=commit, ts=now, public_key=pub, receipt=b"", receipt_signature=b"",
    )  # fmt: skip
    return _sign(r, key_pair)


def make_result_record(receipt: Receipt, receipt_signature: bytes, key_pair: KeyPair) -> ExpRecord:
    """A signed result record for a receipt this node signed (``receipt.peer`` must be this node)."""
    pub = key_pair.public_key.serialize()
    r = ExpRecord(
        exp_id=receipt.exp_id, state="result", peer=peer_id_of(pub), lease_until=0.0,
        value=None if receipt.value is None else float(receipt.value), status=receipt.status,
        commit=receipt.commit, ts=float(receipt.ts), public_key=pub, receipt=receipt.canonical_bytes(),
        receipt_signature=bytes(receipt_signature),
    )  # fmt: skip
    return _sign(r, key_pair)


def encode_record(r: ExpRecord) -> bytes:
    """The record's bytes as stored in the DHT (canonical: sorted keys, float64)."""
    d = r.unsigned_dict()
    d["signature"] = bytes(r.signature)
    data = _pack({k: d[k] for k in sorted(d)})
    if len(data) > MAX_RECORD_BYTES:
        raise WireError(f"exp-record: encoded size {len(data)} > {MAX_RECORD_BYTES}")
    return data


def decode_record(data: bytes, expected_exp_id: str | None = None) -> ExpRecord:
    """Decode and fully verify a record; raise WireError(reason) for anything wrong.

    Checks: size, msgpack shape, every field's type, both signatures, that ``peer`` is the public
    key's peer id, that a result's receipt matches the record (exp_id, peer, commit, value, status,
    ts), and (when given) that the record is for ``expected_exp_id``.
    """
    obj = _unpack(data, MAX_RECORD_BYTES)
    try:
        return _decode(obj, expected_exp_id)
    except WireError:
        raise
    except Exception as e:  # defensive: a checker bug must still surface as a WireError
        raise WireError(f"exp-record: invalid ({type(e).__name__}: {str(e)[:80]})") from None


def _decode(obj: Any, expected_exp_id: str | None) -> ExpRecord:
    w = "exp-record"
    if not isinstance(obj, dict):
        raise WireError(f"{w}: not a map (got {type(obj).__name__})")
    extra = [k for k in obj if k not in _FIELDS]
    if extra:
        raise WireError(f"{w}: unknown field(s) {sorted(map(str, extra))[:5]}")
    v = _get(obj, "v", w)
    if isinstance(v, bool) or v != WIRE_VERSION:
        raise WireError(f"{w}: unknown version {v!r:.40}")
    if _get(obj, "t", w) != RECORD_TYPE:
        raise WireError(f"{w}: wrong type {obj['t']!r:.40}")
    exp_id = _hex40(obj, "exp_id", w)
    if expected_exp_id is not None and exp_id != expected_exp_id:
        raise WireError(f"{w}: record is for experiment {exp_id}, stored under {expected_exp_id:.60}")
    state = _get(obj, "state", w)
    if state not in STATES:
        raise WireError(f"{w}.state: {state!r:.40} not one of {list(STATES)}")
    r = ExpRecord(
        exp_id=exp_id,
        state=state,
        peer=_peer(obj, "peer", w),
        lease_until=_req_float(obj, "lease_until", w),
        value=_float(obj, "value", w, optional=True),
        status=_str(obj, "status", w, 16),
        commit=_hex40(obj, "commit", w),
        ts=_req_float(obj, "ts", w),
        public_key=_bytes(obj, "public_key", w, MAX_PUBLIC_KEY),
        receipt=_bytes(obj, "receipt", w, MAX_RECEIPT_BYTES),
        receipt_signature=_bytes(obj, "receipt_signature", w, MAX_SIGNATURE),
        signature=_bytes(obj, "signature", w, MAX_SIGNATURE),
    )
    if state == "claim":
        if r.status != "claim":
            raise WireError(f"{w}.status: a claim has status 'claim', not {r.status!r:.20}")
        if r.value is not None or r.receipt or r.receipt_signature:
            raise WireError(f"{w}: a claim carries no value or receipt")
        if r.lease_until <= 0:
            raise WireError(f"{w}.lease_until: a claim needs a positive lease")
        if r.lease_until - r.ts > MAX_LEASE_SECONDS:
            raise WireError(f"{w}.lease_until: lease longer than {MAX_LEASE_SECONDS:.0f}s")
    else:
        if r.status not in RESULT_STATUSES:
            raise WireError(f"{w}.status: {r.status!r:.20} not one of {sorted(RESULT_STATUSES)}")
        if r.lease_until != 0:
            raise WireError(f"{w}.lease_until: a result has lease_until 0")
        if (r.status == "crash") != (r.value is None):
            raise WireError(f"{w}.value: a crash has no value, any other result has one")
    # signatures
    key = _public_key(r.public_key)  # WireError on a malformed key
    signer = peer_id_of(r.public_key)
    if signer != r.peer:
        raise WireError(f"{w}: peer {r.peer:.60} is not the signer {signer}")
    try:
        ok = bool(key.verify(r.signing_bytes(), r.signature))
    except Exception:  # noqa: BLE001 - a malformed key or signature is simply not valid (sync code: never cancellation)
        ok = False
    if not ok:
        raise WireError(f"{w}: bad record signature")
    if state == "result":
        receipt = decode_receipt(r.receipt)
        if receipt.canonical_bytes() != r.receipt:
            raise WireError(f"{w}.receipt: not in canonical form")
        if not verify_receipt(receipt, r.receipt_signature, r.public_key):
            raise WireError(f"{w}.receipt: bad receipt signature")
        value = None if receipt.value is None else float(receipt.value)
        for name, mine, theirs in (
            ("exp_id", r.exp_id, receipt.exp_id), ("peer", r.peer, receipt.peer),
            ("commit", r.commit, receipt.commit), ("value", r.value, value),
            ("status", r.status, receipt.status), ("ts", r.ts, receipt.ts),
        ):  # fmt: skip
            if mine != theirs:
                raise WireError(f"{w}.{name}: record says {mine!r:.60}, its receipt says {theirs!r:.60}")
    return r


# --- selection ------------------------------------------------------------------------------------


def _rank(r: ExpRecord) -> tuple[Any, ...]:
    """Smaller is better. Total order: any two distinct records compare unequal (last: the bytes)."""
    try:
        tail = encode_record(r)
    except WireError:
        tail = b"\xff" * (MAX_RECORD_BYTES + 1)
    if r.state == "result":
        return (0, r.ts, r.peer, tail)
    lease = r.lease_until if math.isfinite(r.lease_until) else 0.0
    return (1, -lease, r.peer, tail)


def select_record(a: ExpRecord, b: ExpRecord) -> int:
    """Index (0 or 1) of the more advanced record: deterministic and commutative.

    A result beats a claim; between results the earlier ``ts`` (first finisher) wins; between
    claims the later ``lease_until`` (newer lease) wins; ties go to the lower peer id, then to the
    lower encoding (so the choice never depends on argument order). Both records are assumed valid
    (see :func:`decode_record`).
    """
    return 0 if _rank(a) <= _rank(b) else 1


def select_best(records: list[ExpRecord]) -> int:
    """Index of the best record of a non-empty list under :func:`select_record`'s order."""
    if not records:
        raise ValueError("select_best: empty list")
    return min(range(len(records)), key=lambda i: _rank(records[i]))
