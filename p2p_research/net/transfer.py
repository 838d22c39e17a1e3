"""Git object transfer over our own stream protocol ``/p2p-research/objects/1.0.0``.

Request: one frame (4-byte big-endian length + msgpack list of <= 1024 oids).
Response, per requested oid in order: ``0x00 kind:u8 len:u32 data`` (found), ``0x01`` (not found),
``0x02`` (over the per-object or per-response cap). The fetcher verifies every object against its
id before returning it: the server may lie.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p_research.errors import P2PResearchError

from ..wire import GitObject, git_object_id
from ..wire.messages import GIT_KINDS
from .framing import FrameError, frame, pack, read_exact, read_frame, reset_quietly, unpack_small, write_all
from .streams import StreamLimits, remote_peer

log = logging.getLogger(__name__)

OBJECTS_PROTOCOL = TProtocol("/p2p-research/objects/1.0.0")
MAX_OIDS = 1024
MAX_OBJECT = 16 * 1024 * 1024
MAX_RESPONSE = 64 * 1024 * 1024
REQUEST_TIMEOUT = 10.0
FETCH_TIMEOUT = 60.0
#: served behind the stream guard: 2 requests per peer and 16 in all at once, each stream at most
#: the request's read plus the response's write window; a stream over the limits is reset at once, so
#: idle streams of one peer cannot make honest fetches wait
OBJECTS_LIMITS = StreamLimits(per_peer=2, total=16, deadline_s=REQUEST_TIMEOUT + FETCH_TIMEOUT)

FOUND, NOT_FOUND, TOO_LARGE = 0, 1, 2
_HEX40 = re.compile(r"[0-9a-f]{40}")

ObjectSource = Callable[[str], tuple[int, bytes] | None | Awaitable[tuple[int, bytes] | None]]


class TransferError(P2PResearchError):
    """Fetching objects failed: peer unreachable, protocol violation, timeout, or a lying peer."""


def _check_oids(oids: Any) -> list[str]:
    if not isinstance(oids, list) or len(oids) > MAX_OIDS:
        raise FrameError(f"expected a list of at most {MAX_OIDS} oids")
    for o in oids:
        if not isinstance(o, str) or not _HEX40.fullmatch(o):
            raise FrameError("oids must be 40 lowercase hex chars")
    if len(set(oids)) != len(oids):
        raise FrameError("the request names an object more than once")
    return oids


class ObjectServer:
    """Serves objects from ``object_source(oid) -> (kind, data) | None`` (sync or async)."""

    def __init__(self, object_source: ObjectSource) -> None:
        self.object_source = object_source
        self.served = 0

    async def _lookup(self, oid: str) -> tuple[int, bytes] | None:
        try:
            r = self.object_source(oid)
            if inspect.isawaitable(r):
                r = await r
        except Exception as e:  # noqa: BLE001 - a broken source must not kill the handler; report not-found
            log.warning("object_source(%s) failed: %r", oid, e)
            return None
        if r is None:
            return None
        kind, data = r
        return int(kind), bytes(data)

    async def handle(self, stream: INetStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                oids = _check_oids(unpack_small(await read_frame(stream, 64 * 1024)))
            sent = 0
            with trio.fail_after(FETCH_TIMEOUT):
                for oid in oids:
                    found = await self._lookup(oid)
                    if found is None:
                        await stream.write(bytes([NOT_FOUND]))
                        continue
                    kind, data = found
                    if kind not in GIT_KINDS or len(data) > MAX_OBJECT or sent + len(data) > MAX_RESPONSE:
                        await stream.write(bytes([TOO_LARGE]))
                        continue
                    await write_all(stream, bytes([FOUND, kind]) + len(data).to_bytes(4, "big") + data)
                    sent += len(data)
                    self.served += 1
            await stream.close()
        except (FrameError, trio.TooSlowError) as e:
            log.info("objects request from %s refused: %s", remote_peer(stream), e)
            await reset_quietly(stream, grace=2.0)
        except Exception as e:  # noqa: BLE001 - stream errors from a vanished peer
            log.info("objects request from %s failed: %r", remote_peer(stream), e)
            await reset_quietly(stream, grace=2.0)


async def fetch_objects(
    host: IHost, peer_id: ID, oids: list[str], *, timeout: float = FETCH_TIMEOUT
) -> list[GitObject]:
    """Fetch objects by id from a connected peer; every returned object is verified against its id.

    Objects the peer does not have (or will not send, over the caps) are omitted from the result.
    Raises TransferError on timeout, protocol violation, or an object whose content is not its id.
    """
    oids = list(dict.fromkeys(oids))  # dedup, keep order
    try:
        _check_oids(oids)
    except FrameError as e:
        raise ValueError(str(e)) from None
    if not oids:
        return []
    out: list[GitObject] = []
    stream = None
    ok = False
    try:
        with trio.fail_after(timeout):
            stream = await host.new_stream(peer_id, [OBJECTS_PROTOCOL])
            await stream.write(frame(pack(oids)))
            total = 0
            for oid in oids:
                status = (await read_exact(stream, 1))[0]
                if status in (NOT_FOUND, TOO_LARGE):
                    continue
                if status != FOUND:
                    raise TransferError(f"peer {peer_id}: bad status byte {status}")
                hdr = await read_exact(stream, 5)
                kind, n = hdr[0], int.from_bytes(hdr[1:], "big")
                if kind not in GIT_KINDS:
                    raise TransferError(f"peer {peer_id}: unknown object kind {kind} for {oid}")
                if n > MAX_OBJECT or total + n > MAX_RESPONSE:
                    raise TransferError(f"peer {peer_id}: object {oid} of {n} bytes exceeds the caps")
                data = await read_exact(stream, n)
                total += n
                actual = git_object_id(kind, data)
                if actual != oid:
                    raise TransferError(f"peer {peer_id} sent wrong content for {oid} (hashes to {actual})")
                out.append(GitObject(oid, kind, data))
        ok = True
        with trio.move_on_after(2):
            try:
                await stream.close()
            except Exception:  # noqa: BLE001 - the objects are already verified and in hand
                pass
        return out
    except trio.TooSlowError:
        raise TransferError(f"fetching {len(oids)} objects from {peer_id} timed out after {timeout}s") from None
    except TransferError:
        raise
    except FrameError as e:
        raise TransferError(f"peer {peer_id}: {e}") from None
    except Exception as e:
        raise TransferError(f"fetching objects from {peer_id} failed: {type(e).__name__}: {e}") from e
    finally:
        if stream is not None and not ok:
            await reset_quietly(stream, grace=2.0)
