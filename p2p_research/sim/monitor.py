"""The live display: a few daemons' control sockets polled per second (round robin), shown with rich.

A background thread does the polling so that a slow daemon never delays churn or the stop; a terminal
gets a rich Live panel refreshed about once a second, anything else a log line every 15 s.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from p2p_research.sim import probe

POLL_PER_TICK = 4


class Poller:
    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.cache: dict[str, dict[str, Any]] = {}
        #: each node's baseline val_bpb when it changed, [seconds since the start, value] (the dashboard's curves)
        self.history: dict[str, list[list[float]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sim-poller", daemon=True)
        self._next = 0

    def start(self) -> Poller:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        while not self.stop.is_set():
            nodes = [n for n in self.sim.nodes if n.up()]
            for _ in range(min(POLL_PER_TICK, len(nodes))):
                n = nodes[self._next % len(nodes)]
                self._next += 1
                try:
                    st = n.control("status", timeout=2.0)
                    sw = probe.swarm_stats(st)
                    self.cache[n.name] = {"at": time.time(), "local": st["experiments"]["local"],
                                          "val": st["baseline"]["val_bpb"], "peers": st["peers_connected"],
                                          "verified": sw.get("verified_confirmed", 0) + sw.get("verified_refuted", 0)}
                    self._record(n.name, st["baseline"]["val_bpb"])
                except Exception:  # noqa: BLE001 - a slow or changed daemon must not stop the display
                    continue
            self.stop.wait(1.0)

    def _record(self, name: str, val: float | None) -> None:
        if val is None:
            return
        h = self.history.setdefault(name, [])
        if not h or h[-1][1] != val:
            h.append([round(time.time() - self.sim.t_start, 2), val])
            del h[:-2000]

    def snapshot(self) -> dict[str, Any]:
        sim = self.sim
        swarm = [n for n in sim.nodes if n.role == "swarm"]
        honest = {n.name for n in swarm if not n.liar}
        c = dict(self.cache)
        vals = [v["val"] for k, v in c.items() if k in honest and v["val"] is not None]
        peers = [v["peers"] for k, v in c.items() if k in honest or k in {n.name for n in swarm}]
        solo = c.get("solo", {})
        return {
            "elapsed": time.time() - sim.t_start, "duration": sim.opts.duration_s,
            "up": sum(n.up() for n in swarm), "nodes": len(swarm),
            "experiments": sum(v["local"] for k, v in c.items() if k != "solo"),
            "best": min(vals) if vals else None, "solo_best": solo.get("val"), "solo_exps": solo.get("local"),
            "peers_avg": sum(peers) / len(peers) if peers else 0, "peers_min": min(peers) if peers else 0,
            "verified": sum(v["verified"] for k, v in c.items() if k != "solo"),
            "kills": sum(e["kind"] == "kill" for e in sim.events), "crashes": sum(n.crashed for n in sim.nodes),
        }


def _v(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"


class Display:
    def __init__(self, sim: Any, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.poller = Poller(sim)
        self.live: Live | None = None
        self.last_line = 0.0

    def __enter__(self) -> Display:
        self.poller.start()
        if self.console.is_terminal:
            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.poller.close()
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)

    def log(self, text: str) -> None:
        text = f"[{time.strftime('%H:%M:%S')}] {text}"
        if self.live is not None:
            self.live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def render(self) -> Table:
        s = self.poller.snapshot()
        t = Table(title="p2p-research simulate", show_header=False, box=None)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("elapsed", f"{s['elapsed']:.0f} / {s['duration']:.0f} s")
        t.add_row("nodes up", f"{s['up']} / {s['nodes']}" + (f"  (churn kills {s['kills']})" if s["kills"] else "")
                  + (f"  [red]crashed {s['crashes']}[/red]" if s["crashes"] else ""))
        t.add_row("experiments", f"{s['experiments']} (local runs so far, polled)   verifications {s['verified']}")
        t.add_row("swarm best", f"{_v(s['best'])}   solo best {_v(s['solo_best'])} ({s['solo_exps'] or 0} runs)")
        t.add_row("peers", f"avg {s['peers_avg']:.1f}, min {s['peers_min']}")
        return t

    def tick(self, sim: Any) -> None:
        if self.live is not None:
            self.live.update(self.render())
        elif time.time() - self.last_line >= 15:
            self.last_line = time.time()
            s = self.poller.snapshot()
            self.console.print(f"[{s['elapsed']:.0f}/{s['duration']:.0f} s] up {s['up']}/{s['nodes']}, "
                               f"experiments {s['experiments']}, swarm best {_v(s['best'])}, solo {_v(s['solo_best'])}, "
                               f"peers avg {s['peers_avg']:.1f}, kills {s['kills']}, crashes {s['crashes']}",
                               highlight=False)
