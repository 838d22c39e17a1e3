"""`p2p-research simulate`: N real node daemons on loopback, a live display, and a report with plots.

Modules: `options` (what to run), `probe` (reading /proc, sockets and control sockets of the daemons),
`launcher` (homes, processes, churn, clean stop), `monitor` (live display), `metrics` (figures from the
ledgers), `plots` and `report` (report.json, report.md and PNGs).
"""

from p2p_research.sim.options import SimOptions, parse_duration

__all__ = ["SimOptions", "parse_duration"]
