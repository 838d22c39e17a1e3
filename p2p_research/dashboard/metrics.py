"""Prometheus metrics of a node, read at scrape time from what the daemon already counts.

A collector (not counters incremented across the code): every figure comes from the ledger (runs,
their durations, adoptions) or the daemon's `status` (gossip verdicts, drops, peers), so `/metrics`
and `p2p-research status --json` can never disagree, and nothing is counted twice after a restart
(the ledger is the memory; in-process counters start again at zero, which Prometheus's `rate()`
handles as a counter reset).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from p2p_research.store import queries
from p2p_research.store.ledger import Ledger

RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)
ADOPTION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 3600)


def _histogram(name: str, doc: str, values: list[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    counts = [sum(1 for v in values if v <= b) for b in buckets]
    return HistogramMetricFamily(name, doc, buckets=[(str(b), c) for b, c in zip(buckets, counts, strict=True)]
                                 + [("+Inf", len(values))], sum_value=sum(values))


class NodeCollector:
    """`status` returns the daemon's status view; `ledger` is the node's ledger."""

    def __init__(self, status: Callable[[], dict[str, Any]], ledger: Ledger) -> None:
        self.status = status
        self.ledger = ledger

    def describe(self) -> list[Metric]:
        return []  # collected fresh at each scrape

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        db = self.ledger.db
        exp = CounterMetricFamily("p2p_research_experiments", "Experiments recorded, by origin and final status",
                                  labels=["origin", "status"])
        for origin, status, n in queries.experiment_counts(db):
            exp.add_metric([origin, status], n)
        yield exp
        kinds = CounterMetricFamily("p2p_research_runs", "This node's finished runs, by kind (experiment, baseline, "
                                    "verification) and status", labels=["kind", "status"])
        for kind, status, n in queries.local_run_counts(db):
            kinds.add_metric([kind, status], n)
        yield kinds
        running = GaugeMetricFamily("p2p_research_runs_running", "This node's runs in progress", labels=["kind"])
        for kind, n in queries.running_by_kind(db):
            running.add_metric([kind], n)
        yield running
        # a histogram over the whole ledger (one pass in SQL): monotonic, as Prometheus expects
        within, count, total = queries.run_durations(db, RUN_BUCKETS)
        yield HistogramMetricFamily(
            "p2p_research_run_duration_seconds", "Wall-clock duration of this node's finished runs",
            buckets=[(str(b), n) for b, n in zip(RUN_BUCKETS, within, strict=True)] + [("+Inf", count)],
            sum_value=total)
        sandbox_failures, failures = queries.crashes(db)
        fail = CounterMetricFamily("p2p_research_run_failures", "This node's runs that crashed", labels=["cause"])
        fail.add_metric(["sandbox"], sandbox_failures)
        fail.add_metric(["other"], failures - sandbox_failures)
        yield fail
        last = queries.latest_training(db)
        if last is not None:
            try:
                tokens = json.loads(last[1] or "{}").get("tokens")
                if isinstance(tokens, (int, float)) and not isinstance(tokens, bool):
                    yield GaugeMetricFamily("p2p_research_training_tokens_per_second",
                                            "Training throughput of this node's latest finished run",
                                            value=tokens / last[0])
            except (ValueError, AttributeError):
                pass

        delays = queries.adoption_delays(db)
        yield _histogram("p2p_research_adoption_delay_seconds", "From a result's finish (its receipt time) to "
                         "this node adopting it as baseline", delays, ADOPTION_BUCKETS)

        swarm = st.get("swarm_stats", {})
        ver = CounterMetricFamily("p2p_research_verifications", "Re-runs of peers' claims, by verdict", labels=["verdict"])
        for verdict in ("confirmed", "refuted"):
            ver.add_metric([verdict], swarm.get(f"verified_{verdict}", 0))
        yield ver
        yield CounterMetricFamily("p2p_research_adoptions", "Baselines adopted from peers", value=swarm.get("adopted", 0))
        spec = CounterMetricFamily("p2p_research_speculation", "Results kept on a peer's claim not yet verified here, "
                                   "and such branches dropped when the claim was refuted", labels=["what"])
        spec.add_metric(["kept"], swarm.get("speculative_kept", 0))
        spec.add_metric(["dropped"], swarm.get("branches_dropped", 0))
        yield spec

        net = st.get("net", {})
        gossip = CounterMetricFamily("p2p_research_gossip_messages", "Gossip messages by direction and verdict",
                                     labels=["direction", "verdict"])
        gossip.add_metric(["out", "published"], net.get("published", 0))
        gossip.add_metric(["in", "accepted"], net.get("received", 0))
        gossip.add_metric(["in", "duplicate"], net.get("duplicate", 0))
        for reason, n in sorted((net.get("rejected") or {}).items()):
            gossip.add_metric(["in", f"rejected_{reason}"], n)
        yield gossip
        intake = st.get("intake", {})
        by_type = CounterMetricFamily("p2p_research_messages_recorded", "Peers' messages recorded, by type",
                                      labels=["type"])
        for t in ("claims", "results", "posts"):
            by_type.add_metric([t], intake.get(t, 0))
        yield by_type
        drops = CounterMetricFamily("p2p_research_libp2p_drops", "Messages libp2p dropped silently (counted by our "
                                    "patches)", labels=["kind"])
        for k in ("rpcs", "messages", "queue_full", "queue_closed"):
            drops.add_metric([k], net.get(f"libp2p_dropped_{k}", net.get(f"libp2p_drops_{k}", 0)))
        yield drops
        yield CounterMetricFamily("p2p_research_libp2p_wedged_connections", "Connections closed because no frame "
                                  "could be written for 30 s (the peer read nothing)",
                                  value=net.get("libp2p_yamux_write_timeouts", 0))
        yield GaugeMetricFamily("p2p_research_peers", "Connected peers", value=st.get("peers_connected", 0))
        reach = st.get("reachability") or {}
        g = GaugeMetricFamily("p2p_research_reachable", "1 for this node's reachability status", labels=["status"])
        g.add_metric([reach.get("status", "unknown")], 1)
        yield g
        yield GaugeMetricFamily("p2p_research_uptime_seconds", "Seconds since the daemon started",
                                value=st.get("uptime_s", 0.0))
        yield GaugeMetricFamily("p2p_research_scrape_timestamp_seconds", "When this scrape was computed",
                                value=time.time())


def registry_for(collector: NodeCollector) -> Callable[[], bytes]:
    """A function rendering the collector in Prometheus text format (its own registry: no globals)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    return lambda: generate_latest(reg)
