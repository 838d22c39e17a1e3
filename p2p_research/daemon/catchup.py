"""Catch-up for late joiners and restarts: a peer sends every signed result it knows, as Result messages.

Receipts are signed by the node that measured them, independent of the gossip envelope, so any peer can
relay them and the receiver checks each one exactly as if it had come over gossip. Objects are not
inlined: the receiver fetches what it needs (the best lineage first) through the object protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p_research.net.framing import FrameError, frame, read_frame, write_all
from p2p_research.net.gossip import Incoming
from p2p_research.store.ledger import Ledger
from p2p_research.wire import Result, WireError, check_result, decode, decode_receipt

log = logging.getLogger("p2p_research.catchup")

CATCHUP_PROTOCOL = TProtocol("/p2p-research/catchup/1.0.0")
MAX_FRAME = 64 * 1024
MAX_RESULTS = 5000
TIMEOUT_S = 30.0


def results_from_ledger(ledger: Ledger, protocol_id: str) -> list[bytes]:
    out = []
    for receipt, sig, pub, desc in ledger.signed_runs(protocol_id, MAX_RESULTS):
        try:
            msg = Result(receipt=decode_receipt(receipt), signature=sig, public_key=pub, objects=[], objects_total=0,
                         description=desc[:500])
            out.append(msg.to_wire())
        except WireError as e:
            log.debug("skipping an unsendable receipt: %s", e)
    return out


class CatchUp:
    def __init__(self, host, ledger: Ledger, protocol_id: str,
                 deliver: Callable[[Incoming], Awaitable[None]]) -> None:
        self.host = host
        self.ledger = ledger
        self.protocol_id = protocol_id
        self.deliver = deliver
        self.done_with: set[str] = set()
        self.received = 0
        self.completed = 0  # catch-ups that ran to the end (even with nothing to send)

    async def handle(self, stream) -> None:
        try:
            with trio.fail_after(TIMEOUT_S):
                for data in results_from_ledger(self.ledger, self.protocol_id):
                    await write_all(stream, frame(data))
                await write_all(stream, frame(b""))
        except Exception as e:  # noqa: BLE001 - the requester may vanish mid-stream
            log.debug("catch-up serving failed: %s", e)
        finally:
            try:
                await stream.close()
            except Exception:  # noqa: BLE001
                pass

    async def fetch_from(self, peer_id: str) -> int:
        """Ask one peer for everything it knows; returns how many valid results were delivered."""
        self.done_with.add(peer_id)
        n = 0
        try:
            with trio.fail_after(TIMEOUT_S):
                stream = await self.host.new_stream(ID.from_base58(peer_id), [CATCHUP_PROTOCOL])
                try:
                    for _ in range(MAX_RESULTS + 1):
                        data = await read_frame(stream, MAX_FRAME)
                        if not data:
                            break
                        try:
                            msg = decode(data)
                            if not isinstance(msg, Result):
                                raise WireError("not a result")
                            check_result(msg)
                        except WireError as e:
                            log.warning("catch-up from %s: rejected an entry: %s", peer_id[:16], e.reason)
                            continue
                        await self.deliver(Incoming(msg, peer_id, time.time()))
                        n += 1
                    self.completed += 1
                finally:
                    await stream.close()
        except (FrameError, trio.TooSlowError, Exception) as e:  # noqa: BLE001 - best effort; gossip continues
            log.warning("catch-up from %s failed after %d results: %s", peer_id[:16], n, e)
        self.received += n
        if n:
            log.info("caught up from %s: %d results", peer_id[:16], n)
        return n

    async def run(self, connected: Callable[[], list[str]], max_peers: int = 3) -> None:
        """Catch up from the first few peers as they connect (idempotent: duplicates are ignored)."""
        while len(self.done_with) < max_peers:
            for pid in connected():
                if pid not in self.done_with and len(self.done_with) < max_peers:
                    await self.fetch_from(pid)
            await trio.sleep(1.0)
