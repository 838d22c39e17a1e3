"""Wire messages of the swarm: msgpack schemas with strict validation and size limits.

Every gossip message is a msgpack map ``{"v": 2, "t": "<type>", ...}``. Peers are untrusted, so
:func:`decode` checks *everything* (types, hex ids, string caps, finite non-negative numbers, inline
object and delta sizes) and raises :class:`WireError` with a one-line, loggable reason for any violation --
never another exception type. This module is pure (no I/O, no libp2p import): signature checks
live in :mod:`p2p_research.wire.receipts`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from p2p_research.errors import P2PResearchError
from p2p_research.store.status import RESULT

WIRE_VERSION = 2
#: Version 1 carried a result's description and a verification's target and claimed value outside the
#: signed receipt, so whoever relayed a result first could rewrite them. Its messages are refused with
#: this reason (one line, logged with the peer), never half-understood.
OBSOLETE_VERSIONS = {1: "wire version 1 (unsigned descriptions) is no longer accepted: the peer must upgrade"}

# --- caps -------------------------------------------------------------------------------------
MAX_MESSAGE_BYTES = 512 * 1024  # one gossip message (libp2p drops RPCs over 1 MiB silently)
MAX_INLINE_TOTAL = 384 * 1024  # sum of inline git object sizes plus delta data in one Result
MAX_INLINE_OBJECT = 256 * 1024  # one inline git object
MAX_INLINE_OBJECTS = 256  # number of inline git objects plus deltas
MAX_DESCRIPTION = 500  # characters
MAX_BOARD_TEXT = 16 * 1024  # bytes of UTF-8 Markdown
MAX_NAME = 64  # display name, characters
MAX_HARDWARE = 200
MAX_SOFTWARE = 100
MAX_PEER_ID = 128
MAX_METRIC = 32
MAX_PUBLIC_KEY = 1024  # serialized libp2p public key (ed25519 is 36 bytes; RSA would be larger)
MAX_SIGNATURE = 1024

_HEX40 = re.compile(r"[0-9a-f]{40}")
_PROTOCOL_HEX = re.compile(r"[0-9a-f]{16,64}")
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")
_METRIC = re.compile(r"[a-z][a-z0-9_]*")

RESULT_STATUSES = frozenset(s.value for s in RESULT)
VERIFICATION_STATUSES = frozenset({"confirmed", "refuted"})

GIT_KINDS: dict[int, str] = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}


class WireError(P2PResearchError, ValueError):
    """A message from the wire is invalid; ``reason`` is a short one-line explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- field checkers (each raises WireError, never anything else) --------------------------------


def _get(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise WireError(f"{where}: missing field {key!r}")
    return d[key]


def _str(d: dict[str, Any], key: str, where: str, max_len: int, *, utf8_bytes: bool = False) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str):
        raise WireError(f"{where}.{key}: expected str, got {type(v).__name__}")
    n = len(v.encode("utf-8", "surrogatepass")) if utf8_bytes else len(v)
    if n > max_len:
        raise WireError(f"{where}.{key}: too long ({n} > {max_len})")
    return v


def _hex40(d: dict[str, Any], key: str, where: str) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or not _HEX40.fullmatch(v):
        raise WireError(f"{where}.{key}: expected 40 lowercase hex chars")
    return v


def _protocol_id(d: dict[str, Any], key: str, where: str) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or not _PROTOCOL_HEX.fullmatch(v):
        raise WireError(f"{where}.{key}: expected 16..64 lowercase hex chars")
    return v


def _peer(d: dict[str, Any], key: str, where: str) -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or len(v) > MAX_PEER_ID or not _BASE58.fullmatch(v):
        raise WireError(f"{where}.{key}: expected a base58 peer id")
    return v


def _optional_peer(d: dict[str, Any], key: str, where: str) -> str:
    """A base58 peer id or "" (not applicable)."""
    v = _get(d, key, where)
    return v if v == "" else _peer(d, key, where)


def _float(
    d: dict[str, Any], key: str, where: str, *, optional: bool = False, nonneg: bool = True
) -> float | None:
    v = _get(d, key, where)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise WireError(f"{where}.{key}: expected a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise WireError(f"{where}.{key}: number out of range") from None
    if not math.isfinite(f):
        raise WireError(f"{where}.{key}: not finite")
    if nonneg and f < 0:
        raise WireError(f"{where}.{key}: negative")
    return f


def _req_float(d: dict[str, Any], key: str, where: str) -> float:
    f = _float(d, key, where)
    assert f is not None
    return f


def _int(d: dict[str, Any], key: str, where: str, *, optional: bool = False, nonneg: bool = True) -> int | None:
    v = _get(d, key, where)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise WireError(f"{where}.{key}: expected an int, got {type(v).__name__}")
    if nonneg and v < 0:
        raise WireError(f"{where}.{key}: negative")
    return v


def _bytes(d: dict[str, Any], key: str, where: str, max_len: int) -> bytes:
    v = _get(d, key, where)
    if not isinstance(v, bytes):
        raise WireError(f"{where}.{key}: expected bytes, got {type(v).__name__}")
    if len(v) > max_len:
        raise WireError(f"{where}.{key}: too long ({len(v)} > {max_len})")
    return v


def _map(v: Any, where: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise WireError(f"{where}: expected a map, got {type(v).__name__}")
    extra = [k for k in v if k not in keys]
    if extra:
        raise WireError(f"{where}: unknown field(s) {sorted(map(str, extra))[:5]}")
    return v


def _finite_nonneg(name: str, v: float | None, *, optional: bool = False) -> None:
    """Construction-time check so a local bug cannot produce a message others will reject."""
    if v is None and optional:
        return
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise WireError(f"{name}: expected a finite non-negative number, got {v!r}")


# --- git objects --------------------------------------------------------------------------------


def git_object_id(kind: int, data: bytes) -> str:
    """Git's object id: sha1 of ``b"<typename> <len>\\0" + data``."""
    try:
        name = GIT_KINDS[kind]
    except KeyError:
        raise WireError(f"unknown git object kind {kind!r}") from None
    h = hashlib.sha1(f"{name} {len(data)}\0".encode())
    h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class GitObject:
    """One raw git object (kind 1 commit, 2 tree, 3 blob, 4 tag) named by its id."""

    oid: str
    kind: int
    data: bytes

    _KEYS: ClassVar[frozenset[str]] = frozenset({"oid", "kind", "data"})

    def verify(self) -> None:
        """Raise WireError unless ``oid`` is the git id of (kind, data): peers may lie."""
        actual = git_object_id(self.kind, self.data)
        if actual != self.oid:
            raise WireError(f"git object {self.oid}: content hashes to {actual}")

    @classmethod
    def from_raw(cls, kind: int, data: bytes) -> GitObject:
        return cls(git_object_id(kind, data), kind, bytes(data))

    def to_dict(self) -> dict[str, Any]:
        return {"oid": self.oid, "kind": self.kind, "data": self.data}

    @classmethod
    def from_dict(cls, v: Any, where: str = "object") -> GitObject:
        d = _map(v, where, cls._KEYS)
        oid = _hex40(d, "oid", where)
        kind = _int(d, "kind", where)
        if kind not in GIT_KINDS:
            raise WireError(f"{where}.kind: unknown git object kind {kind}")
        data = _bytes(d, "data", where, MAX_INLINE_OBJECT)
        return cls(oid, kind, data)


_CHUNK = 256  # bytes compared per step by the prefix/suffix scans (slice comparison runs in C)


def _common_prefix_len(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``; O(limit)."""
    n = 0
    while n + _CHUNK <= limit and a[n : n + _CHUNK] == b[n : n + _CHUNK]:
        n += _CHUNK
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _common_suffix_len(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common suffix of ``a`` and ``b``, at most ``limit``; O(limit)."""
    la, lb, n = len(a), len(b), 0
    while n + _CHUNK <= limit and a[la - n - _CHUNK : la - n] == b[lb - n - _CHUNK : lb - n]:
        n += _CHUNK
    while n < limit and a[la - n - 1] == b[lb - n - 1]:
        n += 1
    return n


@dataclass(frozen=True)
class DeltaObject:
    """A blob sent as an edit of a blob the receiver already has (git's thin-pack idea, kept simple).

    The blob ``oid`` is ``base_data[:prefix] + data + base_data[len(base_data) - suffix:]`` where
    ``base`` is the id of the blob at the same path in the parent commit's tree: an experiment that
    changes one constant of a 10 KB file ships a few bytes instead of the file. The result must hash
    to ``oid`` (:meth:`apply` checks), so a forged delta is detected like a forged object. Decoding
    cannot verify it (the base is not in the message); the receiver does when it applies it.
    """

    oid: str
    base: str
    prefix: int
    suffix: int
    data: bytes

    _KEYS: ClassVar[frozenset[str]] = frozenset({"oid", "base", "prefix", "suffix", "data"})

    @classmethod
    def from_blobs(cls, base_oid: str, base_data: bytes, target: bytes) -> DeltaObject:
        """The delta that turns blob ``base_data`` into ``target``: longest common prefix, then the
        longest common suffix of the rest (never overlapping the prefix in either blob); O(n)."""
        limit = min(len(base_data), len(target))
        prefix = _common_prefix_len(base_data, target, limit)
        suffix = _common_suffix_len(base_data, target, limit - prefix)
        middle = bytes(target[prefix : len(target) - suffix])
        return cls(git_object_id(3, target), base_oid, prefix, suffix, middle)

    def apply(self, base_data: bytes) -> GitObject:
        """Rebuild the blob from its base's content; WireError unless it hashes to ``oid``."""
        if self.prefix + self.suffix > len(base_data):
            raise WireError(
                f"delta {self.oid}: prefix {self.prefix} + suffix {self.suffix} > base size {len(base_data)}"
            )
        data = base_data[: self.prefix] + self.data + base_data[len(base_data) - self.suffix :]
        obj = GitObject(self.oid, 3, bytes(data))
        obj.verify()
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {
            "oid": self.oid, "base": self.base, "prefix": self.prefix, "suffix": self.suffix, "data": self.data,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, v: Any, where: str = "delta") -> DeltaObject:
        d = _map(v, where, cls._KEYS)
        oid = _hex40(d, "oid", where)
        base = _hex40(d, "base", where)
        if base == oid:
            raise WireError(f"{where}: base is the object itself")
        prefix = _int(d, "prefix", where)
        suffix = _int(d, "suffix", where)
        assert prefix is not None and suffix is not None
        for key, n in (("prefix", prefix), ("suffix", suffix)):
            if n > MAX_INLINE_OBJECT:
                raise WireError(f"{where}.{key}: too large ({n} > {MAX_INLINE_OBJECT})")
        data = _bytes(d, "data", where, MAX_INLINE_OBJECT)
        size = prefix + len(data) + suffix
        if size > MAX_INLINE_OBJECT:
            raise WireError(f"{where}: rebuilt blob too large ({size} > {MAX_INLINE_OBJECT})")
        return cls(oid, base, prefix, suffix, data)


# --- receipts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What a node measured, independent of the gossip envelope; signed (see receipts.py).

    Its canonical form (:meth:`canonical_bytes`) is a msgpack map with sorted keys and floats as
    float64, so the same receipt always hashes and verifies identically on every node.
    """

    protocol_id: str
    exp_id: str
    parent: str
    commit: str
    tree: str
    metric: str
    value: float | None
    status: str
    budget_tokens: int | None
    budget_seconds: float | None
    seed: int
    hardware: str
    software: str
    peer: str
    ts: float
    training_seconds: float
    memory_gb: float
    # Everything a peer says about a run is signed, shown text included (wire version 2): the
    # description of the change, and for a verification whose result it re-ran and what that claimed.
    description: str = ""
    target_peer: str = ""               # verification receipts: the claimant; "" otherwise
    claimed_value: float | None = None  # verification receipts: the value the claimant announced

    _KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "protocol_id", "exp_id", "parent", "commit", "tree", "metric", "value", "status",
            "budget_tokens", "budget_seconds", "seed", "hardware", "software", "peer", "ts",
            "training_seconds", "memory_gb", "description", "target_peer", "claimed_value",
        }
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "protocol_id": self.protocol_id,
            "exp_id": self.exp_id,
            "parent": self.parent,
            "commit": self.commit,
            "tree": self.tree,
            "metric": self.metric,
            "value": None if self.value is None else float(self.value),
            "status": self.status,
            "budget_tokens": self.budget_tokens,
            "budget_seconds": None if self.budget_seconds is None else float(self.budget_seconds),
            "seed": self.seed,
            "hardware": self.hardware,
            "software": self.software,
            "peer": self.peer,
            "ts": float(self.ts),
            "training_seconds": float(self.training_seconds),
            "memory_gb": float(self.memory_gb),
            "description": self.description,
            "target_peer": self.target_peer,
            "claimed_value": None if self.claimed_value is None else float(self.claimed_value),
        }
        return {k: d[k] for k in sorted(d)}

    def canonical_bytes(self) -> bytes:
        """Deterministic encoding that signatures cover (sorted keys, float64)."""
        try:
            return msgpack.packb(self.to_dict(), use_bin_type=True, use_single_float=False)
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"receipt: cannot encode ({type(e).__name__}: {str(e)[:80]})") from None

    @classmethod
    def from_dict(cls, v: Any, where: str = "receipt") -> Receipt:
        d = _map(v, where, cls._KEYS)
        status = _str(d, "status", where, 16)
        metric = _str(d, "metric", where, MAX_METRIC)
        if not _METRIC.fullmatch(metric):
            raise WireError(f"{where}.metric: not an identifier")
        seed = _int(d, "seed", where, nonneg=False)
        assert seed is not None
        if not -(2**63) <= seed < 2**64:
            raise WireError(f"{where}.seed: out of range")
        return cls(
            protocol_id=_protocol_id(d, "protocol_id", where),
            exp_id=_hex40(d, "exp_id", where),
            parent=_hex40(d, "parent", where),
            commit=_hex40(d, "commit", where),
            tree=_hex40(d, "tree", where),
            metric=metric,
            value=_float(d, "value", where, optional=True),
            status=status,
            budget_tokens=_int(d, "budget_tokens", where, optional=True),
            budget_seconds=_float(d, "budget_seconds", where, optional=True),
            seed=seed,
            hardware=_str(d, "hardware", where, MAX_HARDWARE),
            software=_str(d, "software", where, MAX_SOFTWARE),
            peer=_peer(d, "peer", where),
            ts=_req_float(d, "ts", where),
            training_seconds=_req_float(d, "training_seconds", where),
            memory_gb=_req_float(d, "memory_gb", where),
            description=_str(d, "description", where, MAX_DESCRIPTION),
            target_peer=_optional_peer(d, "target_peer", where),
            claimed_value=_float(d, "claimed_value", where, optional=True),
        )

    def validate(self, where: str = "receipt") -> None:
        """Re-check a locally built receipt through the same rules a receiver applies."""
        again = Receipt.from_dict(self.to_dict(), where)
        if again != self:
            raise WireError(f"{where}: does not survive its own round trip")


def decode_receipt(data: bytes) -> Receipt:
    """Decode a receipt's canonical bytes (e.g. from a DHT record or the ledger)."""
    return Receipt.from_dict(_unpack(data, MAX_MESSAGE_BYTES))


# --- messages ------------------------------------------------------------------------------------


class _MessageBase:
    TYPE: ClassVar[str]

    def body(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_wire(self) -> bytes:
        """Encode and re-validate: a message we would reject ourselves is never sent."""
        try:
            d = {"v": WIRE_VERSION, "t": self.TYPE, **self.body()}
            data = msgpack.packb(d, use_bin_type=True, use_single_float=False)
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"{self.TYPE}: cannot encode ({type(e).__name__}: {str(e)[:80]})") from None
        if len(data) > MAX_MESSAGE_BYTES:
            raise WireError(f"{self.TYPE}: encoded size {len(data)} > {MAX_MESSAGE_BYTES}")
        decode(data)  # raises WireError with the reason if we built something invalid
        return data


@dataclass(frozen=True)
class Claim(_MessageBase):
    """"I am running experiment ``exp_id`` until ``lease_until``" (a lease, not a lock)."""

    TYPE: ClassVar[str] = "claim"
    exp_id: str
    protocol_id: str
    parent: str
    peer: str
    lease_until: float
    description: str
    ts: float
    semantic_id: str = ""  # the code key (research/semantic.py); omitted when empty, so older nodes read it

    def body(self) -> dict[str, Any]:
        out = {
            "exp_id": self.exp_id,
            "protocol_id": self.protocol_id,
            "parent": self.parent,
            "peer": self.peer,
            "lease_until": float(self.lease_until),
            "description": self.description,
            "ts": float(self.ts),
        }
        if self.semantic_id:
            out["semantic_id"] = self.semantic_id
        return out

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Claim:
        w = "claim"
        return cls(
            exp_id=_hex40(d, "exp_id", w),
            protocol_id=_protocol_id(d, "protocol_id", w),
            parent=_hex40(d, "parent", w),
            peer=_peer(d, "peer", w),
            lease_until=_req_float(d, "lease_until", w),
            description=_str(d, "description", w, MAX_DESCRIPTION),
            ts=_req_float(d, "ts", w),
            semantic_id=_hex40(d, "semantic_id", w) if "semantic_id" in d else "",
        )


def _objects_from(v: Any, where: str) -> list[GitObject]:
    if not isinstance(v, list):
        raise WireError(f"{where}: expected a list, got {type(v).__name__}")
    if len(v) > MAX_INLINE_OBJECTS:
        raise WireError(f"{where}: {len(v)} objects > {MAX_INLINE_OBJECTS}")
    objs = [GitObject.from_dict(o, f"{where}[{i}]") for i, o in enumerate(v)]
    for o in objs:
        o.verify()  # cheap (sha1 over <= 384 KiB) and makes every decoded Result's objects trustworthy
    total = sum(len(o.data) for o in objs)
    if total > MAX_INLINE_TOTAL:
        raise WireError(f"{where}: inline objects total {total} bytes > {MAX_INLINE_TOTAL}")
    return objs


def _deltas_from(v: Any, where: str) -> list[DeltaObject]:
    if not isinstance(v, list):
        raise WireError(f"{where}: expected a list, got {type(v).__name__}")
    if len(v) > MAX_INLINE_OBJECTS:
        raise WireError(f"{where}: {len(v)} deltas > {MAX_INLINE_OBJECTS}")
    return [DeltaObject.from_dict(x, f"{where}[{i}]") for i, x in enumerate(v)]


@dataclass(frozen=True)
class Result(_MessageBase):
    """A signed receipt of a finished experiment plus (when small) the new git objects of its commit.

    The objects travel as ``objects`` (whole, verified at decode) and ``deltas`` (blobs as edits of
    the parent commit's blob at the same path, verified when the receiver applies them); whatever a
    receiver still lacks it fetches from the announcer. ``objects_total`` counts all of the commit's
    new objects: whole + delta-encoded + left to fetch. ``deltas`` is left off the wire when empty,
    so such a message reads exactly as before deltas existed.
    """

    TYPE: ClassVar[str] = "result"
    receipt: Receipt
    signature: bytes
    public_key: bytes
    objects: list[GitObject] = field(default_factory=list)
    objects_total: int = 0
    deltas: list[DeltaObject] = field(default_factory=list)

    @property
    def description(self) -> str:
        """The change's description, as its measurer signed it (inside the receipt)."""
        return self.receipt.description

    def body(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "receipt": self.receipt.to_dict(),
            "signature": self.signature,
            "public_key": self.public_key,
            "objects": [o.to_dict() for o in self.objects],
            "objects_total": self.objects_total,
        }
        if self.deltas:
            d["deltas"] = [x.to_dict() for x in self.deltas]
        return d

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Result:
        w = "result"
        receipt = Receipt.from_dict(_get(d, "receipt", w), "result.receipt")
        if receipt.status not in RESULT_STATUSES:
            raise WireError(f"result.receipt.status: {receipt.status!r} not one of {sorted(RESULT_STATUSES)}")
        if receipt.status == "crash" and receipt.value is not None:
            raise WireError("result.receipt.value: a crash has no value")
        if receipt.status != "crash" and receipt.value is None:
            raise WireError("result.receipt.value: missing for a non-crash result")
        if receipt.target_peer or receipt.claimed_value is not None:
            raise WireError("result.receipt: target_peer/claimed_value belong to verifications")
        objects = _objects_from(_get(d, "objects", w), "result.objects")
        deltas = _deltas_from(d["deltas"], "result.deltas") if "deltas" in d else []
        inline = len(objects) + len(deltas)
        if inline > MAX_INLINE_OBJECTS:
            raise WireError(f"result: {inline} inline objects and deltas > {MAX_INLINE_OBJECTS}")
        size = sum(len(o.data) for o in objects) + sum(len(x.data) for x in deltas)
        if size > MAX_INLINE_TOTAL:
            raise WireError(f"result: inline objects and deltas total {size} bytes > {MAX_INLINE_TOTAL}")
        total = _int(d, "objects_total", w)
        assert total is not None
        if total < inline:
            raise WireError(f"result.objects_total: {total} < {inline} inline objects and deltas")
        return cls(
            receipt=receipt,
            signature=_bytes(d, "signature", w, MAX_SIGNATURE),
            public_key=_bytes(d, "public_key", w, MAX_PUBLIC_KEY),
            objects=objects,
            objects_total=total,
            deltas=deltas,
        )


@dataclass(frozen=True)
class Verification(_MessageBase):
    """A signed receipt of a local re-run of ``target_peer``'s result: confirmed or refuted."""

    TYPE: ClassVar[str] = "verification"
    receipt: Receipt
    signature: bytes
    public_key: bytes

    @property
    def target_peer(self) -> str:
        """Whose result was re-run (signed, inside the receipt)."""
        return self.receipt.target_peer

    @property
    def claimed_value(self) -> float | None:
        """What the claimant announced (signed, inside the receipt)."""
        return self.receipt.claimed_value

    def body(self) -> dict[str, Any]:
        return {"receipt": self.receipt.to_dict(), "signature": self.signature, "public_key": self.public_key}

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Verification:
        w = "verification"
        receipt = Receipt.from_dict(_get(d, "receipt", w), "verification.receipt")
        if receipt.status not in VERIFICATION_STATUSES:
            raise WireError(
                f"verification.receipt.status: {receipt.status!r} not one of {sorted(VERIFICATION_STATUSES)}"
            )
        if not receipt.target_peer:
            raise WireError("verification.receipt.target_peer: missing")
        return cls(
            receipt=receipt,
            signature=_bytes(d, "signature", w, MAX_SIGNATURE),
            public_key=_bytes(d, "public_key", w, MAX_PUBLIC_KEY),
        )


@dataclass(frozen=True)
class BoardPost(_MessageBase):
    """A Markdown note between agents on the board topic."""

    TYPE: ClassVar[str] = "board"
    author: str
    name: str
    text: str
    ts: float

    def body(self) -> dict[str, Any]:
        return {"author": self.author, "name": self.name, "text": self.text, "ts": float(self.ts)}

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> BoardPost:
        w = "board"
        return cls(
            author=_peer(d, "author", w),
            name=_str(d, "name", w, MAX_NAME),
            text=_str(d, "text", w, MAX_BOARD_TEXT, utf8_bytes=True),
            ts=_req_float(d, "ts", w),
        )


@dataclass(frozen=True)
class Presence(_MessageBase):
    """"I am researching under ``protocol_id``": a node that floods only kept results (network.announce =
    kept) sends this every few minutes, so every node still knows the swarm's members, the pool that
    ownership and verification replicas are assigned over (research/ownership.py). A few dozen bytes
    per node per five minutes, where a claim per experiment was the bulk of each node's inbound load."""

    TYPE: ClassVar[str] = "presence"
    peer: str
    protocol_id: str
    ts: float

    def body(self) -> dict[str, Any]:
        return {"peer": self.peer, "protocol_id": self.protocol_id, "ts": float(self.ts)}

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Presence:
        w = "presence"
        return cls(peer=_peer(d, "peer", w), protocol_id=_protocol_id(d, "protocol_id", w), ts=_req_float(d, "ts", w))


MAX_BUNDLE = 16  # messages in one bundle
BUNDLE_TYPES = frozenset({"claim", "result", "verification"})


@dataclass(frozen=True)
class Bundle(_MessageBase):
    """Several experiment-topic messages of one sender in one gossip message.

    Why: on a CPU-bound swarm the cost of gossip is per message (each one is signed, framed, encrypted,
    forwarded to every mesh neighbour and checked by each receiver), not per byte. A node that finishes
    an experiment announces its result and claims its next experiment moments later: sent together,
    the swarm handles one message instead of two. Each inner message is a complete wire message
    (bytes), decoded and validated exactly like one sent alone; bundles do not nest.
    """

    TYPE: ClassVar[str] = "bundle"
    messages: tuple[Claim | Result | Verification, ...]

    def body(self) -> dict[str, Any]:
        return {"messages": [m.to_wire() for m in self.messages]}

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Bundle:
        raw = _get(d, "messages", "bundle")
        if not isinstance(raw, list):
            raise WireError(f"bundle.messages: expected a list, got {type(raw).__name__}")
        if not 1 <= len(raw) <= MAX_BUNDLE:
            raise WireError(f"bundle.messages: {len(raw)} messages, expected 1..{MAX_BUNDLE}")
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, bytes):
                raise WireError(f"bundle.messages[{i}]: expected bytes, got {type(item).__name__}")
            try:
                m = decode(item)
            except WireError as e:
                raise WireError(f"bundle.messages[{i}]: {e.reason}") from None
            if m.TYPE not in BUNDLE_TYPES:
                raise WireError(f"bundle.messages[{i}]: a {m.TYPE} cannot be bundled")
            out.append(m)
        return cls(tuple(out))


Message = Claim | Result | Verification | BoardPost | Bundle | Presence

_TYPES: dict[str, type[Any]] = {c.TYPE: c for c in (Claim, Result, Verification, BoardPost, Bundle, Presence)}
_FIELDS: dict[str, frozenset[str]] = {
    "claim": frozenset({"exp_id", "protocol_id", "parent", "peer", "lease_until", "description", "ts", "semantic_id"}),
    "result": frozenset({"receipt", "signature", "public_key", "objects", "objects_total", "deltas"}),
    "verification": frozenset({"receipt", "signature", "public_key"}),
    "board": frozenset({"author", "name", "text", "ts"}),
    "bundle": frozenset({"messages"}),
    "presence": frozenset({"peer", "protocol_id", "ts"}),
}


def _unpack(data: Any, cap: int) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > cap:
        raise WireError(f"message too large ({len(data)} > {cap} bytes)")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=cap,
            max_str_len=MAX_BOARD_TEXT,
            max_array_len=1024,
            max_map_len=64,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises ValueError, ExtraData, FormatError, StackError, ...
        raise WireError(f"not valid msgpack ({type(e).__name__}: {str(e)[:80]})") from None


def decode(data: bytes) -> Message:
    """Decode and fully validate one wire message; raise WireError(reason) on anything wrong."""
    obj = _unpack(data, MAX_MESSAGE_BYTES)
    if not isinstance(obj, dict):
        raise WireError(f"not a map (got {type(obj).__name__})")
    v = obj.get("v")
    if not isinstance(v, bool) and isinstance(v, int) and v in OBSOLETE_VERSIONS:
        raise WireError(OBSOLETE_VERSIONS[v])
    if isinstance(v, bool) or v != WIRE_VERSION:
        raise WireError(f"unknown version {v!r:.40}")
    t = obj.get("t")
    if not isinstance(t, str) or t not in _TYPES:
        raise WireError(f"unknown type {t!r:.40}")
    body = {k: val for k, val in obj.items() if k not in ("v", "t")}
    _map(body, t, _FIELDS[t])
    try:
        return _TYPES[t].from_body(body)
    except WireError:
        raise
    except Exception as e:  # defensive: a checker bug must still surface as a WireError
        raise WireError(f"{t}: invalid ({type(e).__name__}: {str(e)[:80]})") from None


def message_type(msg: Message) -> str:
    """The wire type tag ("claim", "result", "verification", "board", "bundle") of a message."""
    return msg.TYPE
