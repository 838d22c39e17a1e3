"""The libp2p host: TCP + Noise only + Yamux, with safe startup/teardown and address parsing.

py-libp2p's default listener also accepts plaintext, secio and TLS dialers; a Noise-only
``sec_opt`` refuses them (docs/libp2p.md). Teardown needs ``await host.close()`` and a guard
against the known ``RuntimeError("Nursery is closed to new arrivals")`` raised by libp2p's own
background tasks when many hosts stop at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from . import libp2p_compat

log = logging.getLogger(__name__)


def make_host(key_pair: KeyPair, target_peers: int = 6) -> IHost:
    """A host that speaks only Noise (security) and Yamux (muxer) over TCP.

    py-libp2p's swarm has an auto-connector of its own that dials every known peer until it holds 50-100
    connections: on one machine that turns a sparse swarm into a full mesh whose idle upkeep grows with
    N. Our PeerManager already dials up to `target_peers`, so libp2p's is turned off (low watermark 0),
    and inbound growth is bounded by a generous high watermark.
    """
    libp2p_compat.apply()  # once per process, before the first host (see libp2p_compat/__init__.py)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    conn = ConnectionConfig(min_connections=0, low_watermark=0, high_watermark=max(32, 4 * target_peers))
    return new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX",
                    connection_config=conn)


def parse_listen_addr(addr: str) -> multiaddr.Multiaddr:
    """Parse a listen multiaddr like ``/ip4/127.0.0.1/tcp/0``; ValueError with a clear message."""
    try:
        ma = multiaddr.Multiaddr(addr)
        ma.value_for_protocol("tcp")
    except Exception as e:
        raise ValueError(f"invalid listen address {addr!r}: expected /ip4/<ip>/tcp/<port> ({e})") from None
    return ma


def parse_peer_addr(addr: str) -> PeerInfo:
    """Parse a bootstrap address ``/ip4/<ip>/tcp/<port>/p2p/<peer id>``; ValueError with a clear message."""
    if not isinstance(addr, str) or "/p2p/" not in addr:
        raise ValueError(f"invalid bootstrap address {addr!r}: expected /ip4/<ip>/tcp/<port>/p2p/<peer id>")
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        for a in info.addrs:
            a.value_for_protocol("tcp")
    except Exception as e:
        raise ValueError(
            f"invalid bootstrap address {addr!r}: expected /ip4/<ip>/tcp/<port>/p2p/<peer id> "
            f"({type(e).__name__}: {str(e)[:100]})"
        ) from None
    if not info.addrs or not str(info.addrs[0]):
        raise ValueError(f"invalid bootstrap address {addr!r}: no transport address before /p2p/")
    return info


def full_addrs(host: IHost) -> list[str]:
    """The host's addresses in bootstrap form (``.../p2p/<id>``), the string a user copies."""
    pid = host.get_id().to_base58()
    out = []
    for a in host.get_addrs():
        s = str(a)
        out.append(s if "/p2p/" in s else f"{s}/p2p/{pid}")
    return out


def is_relayed(conn: Any) -> bool:
    """Whether a connection runs through a circuit relay (its transport address has /p2p-circuit)."""
    try:
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:  # noqa: BLE001 - a connection being torn down
        return False


def peer_id_str(peer_id: ID) -> str:
    return peer_id.to_base58()


def _is_benign_teardown(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and "Nursery is closed" in str(e)


def strip_benign_teardown(exc: BaseException) -> BaseException | None:
    """Remove libp2p's known teardown RuntimeErrors from an exception (group); None if nothing remains.

    A group left with a single leaf is collapsed to that leaf: libp2p nests several nurseries,
    and a caller's own ``ValueError`` (or KeyboardInterrupt) should come out as itself rather
    than three ExceptionGroups deep.
    """
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(_is_benign_teardown)
        while isinstance(rest, BaseExceptionGroup) and len(rest.exceptions) == 1:
            rest = rest.exceptions[0]
        return rest
    return None if _is_benign_teardown(exc) else exc


@asynccontextmanager
async def running_host(host: IHost, listen: list[multiaddr.Multiaddr]) -> AsyncIterator[IHost]:
    """Run ``host`` listening on ``listen``; always ``host.close()`` and swallow only the benign teardown error.
    What libp2p's patched functions count while the host serves goes to its counters (libp2p_compat.serving)."""
    try:
        with libp2p_compat.serving(host):
            async with host.run(listen_addrs=listen):
                try:
                    yield host
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(10):
                        try:
                            await host.close()
                        except Exception as e:  # noqa: BLE001 - best effort: we are shutting down anyway
                            log.debug("host.close() failed: %r", e)
    except BaseException as exc:
        rest = strip_benign_teardown(exc)
        if rest is None:
            log.debug("ignored libp2p teardown error: %r", exc)
            return
        if rest is exc:
            raise
        raise rest from None


def peerstore_addrs(host: IHost, peer_id: ID) -> list[str]:
    """Known transport addresses of a peer in bootstrap form (from identify and dialing)."""
    try:
        addrs: list[Any] = list(host.get_peerstore().addrs(peer_id))
    except Exception:  # noqa: BLE001 - peerstore raises PeerStoreError for unknown peers
        return []
    pid = peer_id.to_base58()
    out = []
    for a in addrs:
        s = str(a)
        out.append(s if "/p2p/" in s else f"{s}/p2p/{pid}")
    return out
