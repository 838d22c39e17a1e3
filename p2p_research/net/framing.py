"""Length-prefixed framing on libp2p streams (exact reads, size caps) shared by our stream protocols."""

from __future__ import annotations

from typing import Any

import msgpack
import trio
from libp2p.network.stream.exceptions import StreamEOF

from p2p_research.errors import P2PResearchError

WRITE_CHUNK = 64 * 1024


class FrameError(P2PResearchError):
    """A stream protocol peer sent something malformed, oversized or truncated."""


async def read_exact(stream: Any, n: int) -> bytes:
    """Read exactly ``n`` bytes (libp2p's ``read(n)`` may return fewer); EOF -> FrameError."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise FrameError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def write_all(stream: Any, data: bytes) -> None:
    """Write in 64 KiB chunks so one huge write never sits in the muxer as a single frame."""
    view = memoryview(data)
    for off in range(0, len(view), WRITE_CHUNK):
        await stream.write(bytes(view[off : off + WRITE_CHUNK]))


async def read_frame(stream: Any, max_len: int) -> bytes:
    """Read a 4-byte big-endian length prefix and that many bytes (at most ``max_len``)."""
    n = int.from_bytes(await read_exact(stream, 4), "big")
    if n > max_len:
        raise FrameError(f"frame of {n} bytes exceeds cap {max_len}")
    return await read_exact(stream, n)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_small(data: bytes) -> Any:
    """Unpack a small control message (peer lists, oid lists) with tight msgpack limits."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=0, max_str_len=1024,
            max_array_len=1024, max_map_len=16, max_ext_len=0,
        )  # fmt: skip
    except Exception as e:
        raise FrameError(f"not valid msgpack ({type(e).__name__})") from None


async def close_quietly(resource: Any, grace: float = 2.0) -> None:
    """Close a stream or connection we are done with: bounded, never raising (the peer may be gone)."""
    with trio.move_on_after(grace):
        try:
            await resource.close()
        except Exception:  # noqa: BLE001 - closing what a peer may have broken already
            pass


async def reset_quietly(stream: Any, grace: float = 1.0) -> None:
    """Reset a stream on an error path: shielded from cancellation, bounded, never raising."""
    with trio.CancelScope(shield=True), trio.move_on_after(grace):
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
