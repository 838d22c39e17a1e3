"""`simulate --dashboard`: the swarm's page, live while the simulation runs, and a copy in the report.

The simulation is a synchronous supervisor (threads, subprocesses), not a trio program, so the page is
served by hypercorn's trio worker on a trio loop of its own in one background thread; the state it shows
is the display poller's cache (a dict copied under the GIL), never the daemons directly.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import trio

from p2p_research.dashboard.app import make_sim_app, static_sim_page
from p2p_research.dashboard.serve import Bound, bind, serve
from p2p_research.sim.figures import swarm_best_over_time

log = logging.getLogger("p2p_research.sim")


def sim_state(poller: Any) -> dict[str, Any]:
    """What the page shows: the display's counters, each node's row and baseline curve (seconds since start)."""
    sim = poller.sim
    cache = dict(poller.cache)
    nodes = []
    for n in sim.nodes:
        c = cache.get(n.name, {})
        nodes.append({"name": n.name, "role": n.role, "liar": bool(getattr(n, "liar", False)), "up": n.up(),
                      "local": c.get("local"), "val": c.get("val"), "peers": c.get("peers"),
                      "verified": c.get("verified")})
    history = {name: list(points) for name, points in list(poller.history.items())}
    swarm_names = {n.name for n in sim.nodes if n.role == "swarm" and not getattr(n, "liar", False)}
    swarm = swarm_best_over_time([[tuple(p) for p in pts] for name, pts in history.items() if name in swarm_names])
    summary = poller.snapshot()
    return {"summary": summary, "nodes": nodes,
            "curves": {"nodes": {k: v for k, v in history.items() if k in swarm_names}, "swarm": swarm,
                       "solo": history.get("solo", []), "now": summary.get("elapsed", 0.0)}}


def final_state(m: dict[str, Any], series: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """The report's copy: curves from the ledgers (the report's own series), counters from the report."""
    summary = dict((live or {}).get("summary") or {})
    summary.update({"experiments": m.get("experiments_completed"), "duration": m.get("duration_s"),
                    "elapsed": m.get("duration_s"), "crashes": m.get("crashed_nodes", 0)})
    return {"summary": summary, "nodes": (live or {}).get("nodes", []),
            "curves": {"nodes": series.get("nodes", {}), "swarm": series.get("swarm", []),
                       "solo": series.get("solo", []), "now": m.get("duration_s", 0.0)}}


def write_static(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / "dashboard.html"
    path.write_text(static_sim_page(state))
    return path


class SimDashboard:
    """Serve the simulation page at `addr` in a background thread until :meth:`close`."""

    def __init__(self, poller: Any, addr: str, token_file: Path) -> None:
        self.poller = poller
        self.bound: Bound = bind(addr, token_file)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-dashboard", daemon=True)

    @property
    def url(self) -> str:
        return self.bound.url

    def start(self) -> SimDashboard:
        self._thread.start()
        self._started.wait(10)
        return self

    def _run(self) -> None:
        app = make_sim_app(lambda: sim_state(self.poller))

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve, app, self.bound)
                    self._started.set()

        try:
            trio.run(main)
        except Exception as e:  # noqa: BLE001 - the page must never stop the simulation
            log.warning("simulation dashboard stopped: %s", e, exc_info=True)
        finally:
            self._started.set()

    def close(self) -> None:
        if self._token is not None and self._scope is not None:
            try:
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
            except (trio.RunFinishedError, RuntimeError):
                pass
        self._thread.join(10)
