"""Signed receipts: a result is signed with the node's libp2p key, independent of the gossip envelope.

The signature covers ``RECEIPT_DOMAIN + receipt.canonical_bytes()`` so it can be stored (ledger,
DHT) and re-checked by anyone later. libp2p is imported lazily: ``import libp2p`` costs ~1 s and
CLI paths that only read local state should not pay it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .messages import Receipt, Result, Verification, WireError

if TYPE_CHECKING:
    from libp2p.crypto.keys import PrivateKey

#: Domain separation: a receipt signature can never be replayed as another libp2p signature.
RECEIPT_DOMAIN = b"p2p-research/receipt/1:"


def sign_receipt(receipt: Receipt, private_key: PrivateKey) -> bytes:
    """Sign the receipt's canonical bytes with a libp2p private key (ed25519 in this project)."""
    return private_key.sign(RECEIPT_DOMAIN + receipt.canonical_bytes())


def _public_key(public_key_bytes: bytes):  # -> libp2p PublicKey
    from libp2p.crypto.serialization import deserialize_public_key

    try:
        return deserialize_public_key(public_key_bytes)
    except Exception as e:  # protobuf DecodeError, unsupported key type, bad point, ...
        raise WireError(f"bad public key ({type(e).__name__})") from None


def verify_receipt(receipt: Receipt, signature: bytes, public_key_bytes: bytes) -> bool:
    """True iff ``signature`` is a valid signature of ``receipt`` by ``public_key_bytes``."""
    try:
        key = _public_key(public_key_bytes)
        return bool(key.verify(RECEIPT_DOMAIN + receipt.canonical_bytes(), signature))
    except Exception:  # noqa: BLE001 - malformed key or signature: simply not valid (never cancellation: sync code)
        return False


def peer_id_of(public_key_bytes: bytes) -> str:
    """The base58 libp2p peer id that a serialized public key belongs to."""
    from libp2p.peer.id import ID

    return ID.from_pubkey(_public_key(public_key_bytes)).to_base58()


def check_result(result: Result | Verification) -> None:
    """Raise WireError unless the receipt is signed by its public key and names that key's peer."""
    if not verify_receipt(result.receipt, result.signature, result.public_key):
        raise WireError(f"{result.TYPE}: bad receipt signature")
    signer = peer_id_of(result.public_key)
    if signer != result.receipt.peer:
        raise WireError(f"{result.TYPE}: receipt.peer {result.receipt.peer:.60} is not the signer {signer}")
