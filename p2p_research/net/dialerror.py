"""Why a dial failed, in words (pure): libp2p wraps the cause in layers (SwarmDialAllFailedError ->
MultiError -> SecurityUpgradeFailure -> HandshakeFailure -> PeerIDMismatchesPubkey), and logs each
layer as an ERROR. One line names the cause: "connection refused", "timed out", or "peer id mismatch
(expected A, got B)".
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MISMATCH = re.compile(r"remote_peer=(\w+), remote_peer_id_from_pubkey=(\w+)")


def causes(e: BaseException, depth: int = 0, seen: set[int] | None = None) -> Iterator[BaseException]:
    seen = set() if seen is None else seen
    if depth > 12 or id(e) in seen:
        return
    seen.add(id(e))
    yield e
    for sub in [*(getattr(e, "errors", None) or []), *(getattr(e, "exceptions", None) or [])]:
        if isinstance(sub, BaseException):
            yield from causes(sub, depth + 1, seen)
    for nxt in (e.__cause__, e.__context__):
        if nxt is not None:
            yield from causes(nxt, depth + 1, seen)


def explain(e: BaseException) -> str:
    chain = list(causes(e))
    for c in chain:
        m = MISMATCH.search(str(c))
        if m:
            return f"peer id mismatch (expected {m.group(1)}, got {m.group(2)})"
    names = {type(c).__name__ for c in chain}
    text = " ".join(str(c) for c in chain).lower()
    if "ConnectionRefusedError" in names or "connection refused" in text:
        return "connection refused"
    if names & {"TooSlowError", "TimeoutError"} or "timed out" in text or "timeout" in text:
        return "timed out"
    if "PeerIDMismatchesPubkey" in names:
        return "peer id mismatch (the node at that address has another identity)"
    if "handshake failed" in text:
        return "the secure handshake failed (wrong peer id, or not a p2p-research node)"
    if "fail to open connection" in text or "failed to open tcp stream" in text:
        return "no connection (nothing listening there, or a firewall)"
    for c in chain:
        if isinstance(c, OSError) and c.strerror:
            return c.strerror.lower()
    return type(e).__name__
