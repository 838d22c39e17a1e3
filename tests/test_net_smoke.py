import time
import trio
from p2p_research.net import open_network
from net_helpers import cfg, claim, wait_mesh, recv

async def test_smoke():
    async with open_network(cfg(), lambda oid: None) as a:
        async with open_network(cfg(bootstrap=a.addrs()), lambda oid: None) as b:
            t = time.perf_counter()
            await wait_mesh(a, b)
            print("mesh", time.perf_counter() - t)
            await a.publish(claim(a.peer_id))
            inc = await recv(b)
            print(inc, a.stats, b.stats, b.peers())
