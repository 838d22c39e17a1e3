"""Node identity: one ed25519 libp2p key per node home, stable across restarts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from p2p_research.errors import P2PResearchError


class IdentityError(P2PResearchError, RuntimeError):
    """The identity key file exists but cannot be used (corrupt, wrong type, unreadable)."""


def load_or_create_identity(path: str | os.PathLike[str]) -> KeyPair:
    """Load the node's key from ``path``, creating it (mode 0600, atomically) when absent.

    A corrupt file is an error, never silently replaced: replacing it would change the node's
    peer id and orphan its signed receipts.
    """
    p = Path(path)
    if p.exists():
        try:
            raw = p.read_bytes()
            priv = deserialize_private_key(raw)
        except Exception as e:
            raise IdentityError(f"identity key file {p} is corrupt or unreadable ({type(e).__name__}: {e})") from e
        if priv.get_type().name != "Ed25519":
            raise IdentityError(f"identity key file {p} holds a {priv.get_type().name} key, expected Ed25519")
        return KeyPair(priv, priv.get_public_key())
    kp = create_new_key_pair()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, kp.private_key.serialize())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return kp


def peer_id_of_keypair(kp: KeyPair) -> str:
    """Base58 peer id of a key pair."""
    return ID.from_pubkey(kp.public_key).to_base58()


_ADJECTIVES = (
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "lucky",
    "merry", "nimble", "proud", "quick", "quiet", "rapid", "shy", "silly", "sly", "smart", "snowy",
    "sunny", "swift", "tidy", "tiny", "vivid", "warm", "wild", "wise", "witty", "zesty",
)  # fmt: skip
_ANIMALS = (
    "otter", "badger", "beaver", "bison", "camel", "crane", "dingo", "eagle", "falcon", "ferret", "gecko",
    "heron", "ibis", "jackal", "koala", "lemur", "lynx", "marten", "moose", "newt", "ocelot", "orca",
    "panda", "puffin", "quail", "raven", "seal", "sloth", "tapir", "viper", "walrus", "yak",
)  # fmt: skip


def short_name(peer_id: str) -> str:
    """A deterministic human-readable name for a peer id, e.g. ``"brave-otter-3f2a"``.

    Derived from a hash so that names spread evenly even though peer ids share a common prefix.
    The hex suffix keeps collisions rare among tens of nodes (32*32*65536 combinations).
    """
    h = hashlib.sha256(peer_id.encode()).digest()
    return f"{_ADJECTIVES[h[0] % len(_ADJECTIVES)]}-{_ANIMALS[h[1] % len(_ANIMALS)]}-{h[2:4].hex()}"
