"""One Network per OS process, for the multi-process net tests. Loopback only, bounded lifetime.

usage: python net_node_proc.py OUTDIR IDX N_EXPECTED DURATION [BOOTSTRAP_ADDR ...]
Writes OUTDIR/addr.IDX, waits for OUTDIR/go, publishes one BoardPost, and writes OUTDIR/res.IDX
(JSON: received authors, connected peers) once it has heard N_EXPECTED posts or DURATION passed.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio
from libp2p import generate_new_ed25519_identity

from p2p_research.net import NetConfig, open_network
from p2p_research.wire import BoardPost


async def main(outdir: str, idx: int, n_expected: int, duration: float, boots: list[str]) -> None:
    cfg = NetConfig(key_pair=generate_new_ed25519_identity(), swarm_id="5e11", bootstrap=boots, target_peers=6)
    authors: set[str] = set()
    with trio.move_on_after(duration):
        async with open_network(cfg, lambda oid: None) as net:
            tmp = f"{outdir}/addr.{idx}.tmp"
            with open(tmp, "w") as f:
                f.write(net.addrs()[0])
            os.rename(tmp, f"{outdir}/addr.{idx}")

            async def receive() -> None:
                async for inc in net.incoming:
                    authors.add(inc.from_peer)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                while not os.path.exists(f"{outdir}/go"):
                    await trio.sleep(0.1)
                await trio.sleep(2)  # let peer exchange and meshes settle
                await net.publish(BoardPost(net.peer_id, f"node{idx}", f"hello from {idx}", time.time()))
                while len(authors) < n_expected:
                    await trio.sleep(0.1)
                await trio.sleep(1)  # keep relaying for the others a little
                res = {"peer": net.peer_id, "authors": sorted(authors),
                       "peers": [p.peer_id for p in net.peers()], "stats": {k: v for k, v in net.stats.items()
                                                                            if k != "rejected"}}
                with open(f"{outdir}/res.{idx}", "w") as f:
                    json.dump(res, f)
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    a = sys.argv
    trio.run(main, a[1], int(a[2]), int(a[3]), float(a[4]), a[5:])
