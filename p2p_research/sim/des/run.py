"""`simulate --engine des`: N virtual nodes in virtual time, and the same figures as a real run.

The swarm is set up as the process launcher sets it up (sim/launcher.py): node i starts at i /
start_rate with research seed `seed*1000 + i + 1`, liars drawn with `random.Random(seed)`, one solo node
(seed `seed*1000 + 500`) alone; the window counts from when every node is up; then the nodes stop
proposing and follow the swarm for up to `settle_s`. report.json keeps the process report's keys (where
a key is about OS processes, the modelled counterpart or None) and adds `load` (what each node receives
and spends) and `model` (every network assumption).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.research.constants import read_constants
from p2p_research.research.io.surrogate import FAMILIES, NOISE_STD, noise_std_of
from p2p_research.research.searchspace import parse_search_space
from p2p_research.sim.des.model import NetModel
from p2p_research.sim.des.vnode import Shared, VirtualNode
from p2p_research.sim.des.world import World
from p2p_research.sim.fabricated import on_fabricated, told_the_truth
from p2p_research.sim.figures import (
    skipped_as_known,
    solo_comparison,
    summary,
    swarm_best_over_time,
    times_to_targets,
)
from p2p_research.sim.report_type import SimReport
from p2p_research.store.status import COMPLETED

STARTUP_CPU_S = 1.1   # a daemon's start-up (imports, keys) on an idle core (docs/bench-gossip.md)
SERIES_NODES = 60     # per-node curves kept for the plot (all of them below that)
LATENCY_SAMPLES = 20_000


@dataclass
class DesOptions:
    nodes: int = 35
    duration_s: float = 300.0
    seed: int = 0
    cost_s: float = 15.0
    churn: float = 0.0
    churn_downtime_s: float = 5.0
    liars: int = 0
    verification: str = "adaptive"
    solo: bool = True
    settle_s: float = 180.0
    margin: float | None = None    # None: 0.002, the daemon's margin before it has measured its noise
    start_rate: float = 3.0
    budget_tokens: int = 500_000   # the embedded target's DEFAULT_BUDGET_TOKENS
    announce: str = "auto"         # auto | all | kept (research/flooding.py; world.py)
    combine: bool = True
    genesis: str = "shared"        # research.genesis: shared | each
    forward_records_only: bool = False  # an experiment (world.forwards_kept): kept results go on only where they are records
    surrogate: str = "default"     # the landscape (research/io/surrogate.py FAMILIES)
    net: NetModel = field(default_factory=NetModel)

    def validate(self) -> DesOptions:
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if self.duration_s <= 0:
            raise ValueError("--duration must be positive")
        if not 0 <= self.liars < self.nodes:
            raise ValueError("--liars must be at least 0 and fewer than --nodes")
        if self.genesis not in ("shared", "each"):
            raise ValueError("--genesis must be shared or each")
        if self.surrogate not in FAMILIES:
            raise ValueError(f"--surrogate must be one of {', '.join(FAMILIES)}")
        if self.announce not in ("auto", "all", "kept"):
            raise ValueError("--announce must be auto, all or kept")
        if self.verification not in ("always", "adaptive", "never"):
            raise ValueError("--verification must be always, adaptive or never")
        if self.net.cores < 0 or not 0 <= self.net.loss < 1 or not 0 <= self.net.nat_share <= 1:
            raise ValueError("--cores must be >= 0, --loss in [0, 1), --nat-share in [0, 1]")
        return self


def embedded_target() -> tuple[dict, Any]:
    from p2p_research.target import __file__ as target_init

    folder = Path(target_init).parent
    return read_constants((folder / "train.py").read_text()), parse_search_space((folder / "program.md").read_text())


class DesSimulation:
    def __init__(self, opts: DesOptions) -> None:
        self.opts = o = opts.validate()
        genesis, space = embedded_target()
        # the daemon's margin before it has measured its noise, scaled with the landscape's noise (the
        # margin a node measures is 2 sigma of its own runs)
        margin = o.margin if o.margin is not None else 0.002 * noise_std_of(o.surrogate) / NOISE_STD
        self.shared = Shared(space, genesis, o.budget_tokens, o.cost_s, margin, o.verification, combine=o.combine,
                             shared_genesis=o.genesis == "shared", family=o.surrogate)
        self.world = w = World(o.nodes, o.net, o.announce, o.seed)
        w.forward_records_only, w.margin = o.forward_records_only, margin
        rng = random.Random(o.seed)
        liars = set(rng.sample(range(1, o.nodes), o.liars)) if o.liars else set()
        w.nat = {i for i in range(o.nodes) if random.Random(f"nat:{o.seed}:{i}").random() < o.net.nat_share}
        self.nodes = [VirtualNode(w, self.shared, i, o.seed * 1000 + i + 1, liar=i in liars) for i in range(o.nodes)]
        w.nodes = self.nodes
        w.processes = o.nodes + (1 if o.solo else 0)
        self.solo = VirtualNode(w, self.shared, o.nodes, o.seed * 1000 + 500, solo=True) if o.solo else None
        self.churned: list[dict[str, Any]] = []
        self.wall_s = 0.0
        self.settled_at: float | None = None

    def _drain(self) -> None:
        """The window's end: every node is drained, as `simulate` drains its daemons."""
        for node in [*self.nodes, *([self.solo] if self.solo is not None else [])]:
            node.drain()

    def run(self, progress: Any = None) -> dict[str, Any]:
        o, w, sh = self.opts, self.world, self.shared
        started = time.monotonic()
        ready = []
        for i, node in enumerate(self.nodes):
            # each start costs STARTUP_CPU_S of CPU: on a shared machine the starts queue for its cores
            at = max(i / o.start_rate + STARTUP_CPU_S, (i + 1) * STARTUP_CPU_S / o.net.cores if o.net.cores else 0.0)
            ready.append(at)
            node.start(at)
        self.all_up = max(ready) if ready else 0.0
        if self.solo is not None:
            self.solo.start(STARTUP_CPU_S)
        sh.window_end = self.all_up + o.duration_s
        sh.settle_end = sh.window_end + o.settle_s
        w.at(sh.window_end, self._drain)
        self._plan_churn()
        t, step = 0.0, 5.0
        while t < sh.settle_end:
            t = min(sh.settle_end, t + step)
            w.run_until(t)
            if progress is not None:
                progress(t, sh.settle_end)
            if t > sh.window_end + ADOPTION_GRACE and self._converged():
                self.settled_at = t
                break
        self.t_end = w.t
        self.wall_s = time.monotonic() - started
        return self.metrics()

    def _plan_churn(self) -> None:
        o, w = self.opts, self.world
        k = round(o.churn * o.nodes)
        if not k:
            return
        rng = random.Random(f"churn:{o.seed}")
        for i in rng.sample(range(o.nodes), k):
            kill = self.all_up + rng.uniform(0.1, 0.8) * o.duration_s
            w.down[i].append((kill, kill + o.churn_downtime_s + STARTUP_CPU_S))
            node = self.nodes[i]
            w.at(kill, lambda n=node: n.kill())
            self.churned.append({"node": node.name, "killed_at_s": round(kill, 1), "restarted": True,
                                 "same_peer_id": True, "acked_runs_lost": 0})

    def _converged(self) -> bool:
        honest = [n for n in self.nodes if not n.liar]
        return len({n.loop.baseline_commit for n in honest}) == 1 and all(n.running is None for n in honest)

    # --- figures ----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        o, w, sh = self.opts, self.world, self.shared
        t0, w0, w1 = 0.0, self.all_up, sh.window_end
        honest = [n for n in self.nodes if not n.liar]
        runs = [(n, r) for n in self.nodes for r in n.stats.runs]
        exps = [(n, r) for n, r in runs if r["kind"] == "experiment" and r["status"] in COMPLETED]
        in_window = [r for _, r in exps if w0 <= r["t1"] <= w1]
        per_node = Counter(n.name for n, _ in exps)
        ids = Counter(r["exp_id"] for _, r in exps)
        wasted = sum(c - 1 for c in ids.values() if c > 1)
        run_s = defaultdict(float)
        for _, r in runs:
            run_s[r["kind"]] += r["t1"] - r["t0"]
        liar_names = {n.name for n in self.nodes if n.liar}
        ver = {"confirmed": 0, "refuted": 0, "other": 0, "of_liars": {"confirmed": 0, "refuted": 0},
               "of_honest": {"confirmed": 0, "refuted": 0}}
        for _, r in runs:
            if r["kind"] == "verification" and r["status"] in ("confirmed", "refuted"):
                ver[r["status"]] += 1
                ver["of_liars" if r["target"] in liar_names else "of_honest"][r["status"]] += 1
        adoptions = [a | {"node": n.name} for n in self.nodes for a in n.stats.adoptions]
        from_liar = [a for a in adoptions if self.nodes[a["from"]].liar]
        final = {n.name: {"name": n.name, "liar": n.liar, "commit": n.loop.baseline_commit, "val_bpb": n.loop.baseline_value,
                          "source": self.nodes[n.baseline_source].name if n.baseline_source >= 0 else None}
                 for n in self.nodes}
        best = min(honest, key=lambda n: (n.loop.baseline_value or math.inf))
        on_best = sum(n.loop.baseline_commit == best.loop.baseline_commit for n in honest)
        # as the process engine counts it (sim/figures.py): an honest node whose final baseline is any
        # experiment a liar announced as kept (its current baseline alone missed honest nodes left on
        # the liar's earlier, made-up values)
        # (a liar's claim that happens to be its run's true value within the tolerance is no lie: a
        # re-run confirms it, rightly)
        liar_kept = {r["exp_id"] for n in self.nodes if n.liar for r in n.stats.runs
                     if r["kind"] == "experiment" and r["status"] == "kept"
                     and not told_the_truth(r["value"], r.get("measured"), self.shared.margin)}
        # ... or any of its ancestors, up to the nearest result an honest re-run confirmed (sim/fabricated.py)
        confirmed = {r["exp_id"] for n in honest for r in n.stats.runs
                     if r["kind"] == "verification" and r["status"] == "confirmed"}
        fabricated = sorted(n.name for n in honest if on_fabricated(n.loop.baseline_commit, self.shared.parent,
                                                                     self.shared.exp_of, liar_kept, confirmed))
        series_all = {n.name: list(n.stats.baselines) for n in honest}
        swarm_series = swarm_best_over_time(list(series_all.values()))
        keep = sorted(series_all)[:: max(1, len(series_all) // SERIES_NODES)]
        series = {"t0": t0, "swarm": swarm_series, "nodes": {k: series_all[k] for k in keep},
                  "solo": list(self.solo.stats.baselines) if self.solo else [],
                  "adoption_delays_s": [a["t"] - a["announced_at"] for a in adoptions][:5000]}
        solo_info = None
        if self.solo is not None:
            s = self.solo
            solo_exps = [r for r in s.stats.runs if r["kind"] == "experiment" and r["status"] != "aborted"]
            solo_info = {"peer_id": s.name, "experiments_completed": len(solo_exps),
                         "final_baseline": {"commit": s.loop.baseline_commit, "val_bpb": s.loop.baseline_value}}
            solo_info.update(solo_comparison(s.stats.baselines, swarm_series))
        gaps = [g for n in self.nodes for g in n.stats.gaps]
        dedup = Counter()
        for n in self.nodes:
            dedup.update(n.stats.dedup)
        combos = Counter(r["status"] for _, r in exps if r["combination"])
        stacks = Counter(r["status"] for _, r in exps if r.get("stack"))
        return SimReport(
            engine="des",
            nodes=o.nodes, solo_node=o.solo, duration_s=round(self.t_end - t0, 1),
            requested_duration_s=o.duration_s,
            duration_counted_from="when every node was up (start-up excluded)",
            startup_s=round(self.all_up, 1), interrupted=None,
            objective="surrogate" if o.surrogate == "default" else f"surrogate ({o.surrogate})", cost_s=o.cost_s, fanout=None, churn=o.churn, liars=o.liars,
            seed=o.seed, verification=o.verification, announce=w.announce,
            experiments_completed=len(exps), experiments_completed_in_window=len(in_window),
            window_s=round(w1 - w0, 1),
            settle={"requested_s": o.settle_s, "note": (f"converged {self.settled_at - w1:.0f} s after the window"
                                                        if self.settled_at else "did not converge within the settle"),
                    "settle_s": round(self.t_end - w1, 1)},
            gap_between_runs_s={**summary(gaps), "note": "a node's time between the end of one run and the start of "
                                "its next (verification decisions, proposing, DHT lookups, CPU queue)"},
            run_seconds_by_kind={k: round(run_s.get(k, 0.0), 1) for k in ("experiment", "verification", "baseline")},
            experiments_completed_honest=sum(per_node[n.name] for n in honest),
            experiments_per_node={n.name: per_node[n.name] for n in self.nodes} if o.nodes <= 1000 else None,
            experiments_per_node_summary=summary([float(per_node[n.name]) for n in self.nodes]),
            experiments_by_status=dict(Counter(r["status"] for _, r in exps)),
            combinations={"run": sum(combos.values()), "by_status": dict(combos),
                          "stacks": {"run": sum(stacks.values()), "kept": stacks.get("kept", 0)}},
            experiments_aborted=sum(r["status"] == "aborted" for _, r in runs),
            duplicates_wasted=wasted, duplicates_wasted_pct=round(100 * wasted / len(exps), 3) if exps else 0.0,
            duplicates_checking_negatives=min(wasted, dedup.get("negatives_checked", 0)),
            duplicates_avoided={"yielded_in_flight": sum(n.stats.yielded for n in self.nodes),
                                "yield_refused": sum(n.stats.yield_refused for n in self.nodes),
                                "proposals_skipped_as_known": skipped_as_known(dedup),
                                "proposals_skipped_by_reason": dict(dedup),
                                "note": "as in the process report; DHT lookups: "
                                        f"{sum(n.stats.dht_lookups for n in self.nodes)}"},
            verifications=ver,
            adoptions={"count": len(adoptions), "with_rerun": sum(a["rerun"] for a in adoptions),
                       "without_rerun": sum(not a["rerun"] for a in adoptions), "from_liars": len(from_liar),
                       "from_liars_without_rerun": sum(not a["rerun"] for a in from_liar),
                       "delay_from_announcement_s": summary([a["t"] - a["announced_at"] for a in adoptions]),
                       "delay_from_receipt_s": summary([a["t"] - a["received_at"] for a in adoptions])},
            gossip_latency_s={**summary(self._latencies()), "excluded_catch_up": None,
                              "note": "modelled delivery time minus publish time of flooded results, sampled"},
            propagation={"results": sum(m.kind == "result" and m.flooded for m in w.messages),
                         "delivered_pairs_pct": 100.0, "results_reaching_every_node_pct": 100.0},
            crashed_nodes=0, stop_timeouts=[], crashes=[],
            churn_events=[e | {"experiments_after_restart": sum(
                1 for r in self.nodes[int(e["node"][1:])].stats.runs if r["t0"] > e["killed_at_s"])} for e in self.churned],
            liar_nodes=sorted(liar_names), honest_on_fabricated_baseline=fabricated,
            convergence={"honest_nodes": len(honest), "distinct_final_commits": len({n.loop.baseline_commit for n in honest}),
                         "on_best_commit": on_best, "best_commit": best.loop.baseline_commit,
                         "best_val_bpb": best.loop.baseline_value, "all_on_same_baseline": on_best == len(honest)},
            final_baselines=final if o.nodes <= 1000 else None,
            solo=solo_info,
            time_to_target_s=times_to_targets(swarm_series),
            series=series,
            engine_figures={"load": self.load_figures(), "model": asdict(o.net) | {"announce": w.announce},
                            "wall_s": round(self.wall_s, 1)},
        ).to_json()

    def _latencies(self) -> list[float]:
        w = self.world
        flooded = [m for m in w.messages if m.kind == "result" and m.flooded]
        if not flooded:
            return []
        per = max(1, LATENCY_SAMPLES // len(flooded))
        rng = random.Random(self.opts.seed)
        out: list[float] = []
        for m in flooded[:: max(1, len(flooded) // LATENCY_SAMPLES)]:
            for j in rng.sample(range(self.opts.nodes), min(per, self.opts.nodes)):
                t = w.delivery(m, j)
                if t < math.inf:
                    out.append(t - m.t)
        return out

    def load_figures(self) -> dict[str, Any]:
        """What one node receives and spends, over the experiment window (the busy part of a run)."""
        w, net = self.world, self.opts.net
        b0, b1 = int(self.all_up), int(self.shared.window_end)
        span = max(1, b1 - b0)
        pubs = sum(w.load.publishes.get(b, 0) for b in range(b0, b1))
        rpcs = sum(w.load.dht_rpcs.get(b, 0) for b in range(b0, b1))
        n = max(1, self.opts.nodes)
        util = [w.utilisation.get(b, 0.0) for b in range(b0, b1)]
        per_node_rpcs = 2 * rpcs / n / span
        cpu = [u * w.capacity() for u in util]
        return {
            "publishes_per_s": round(pubs / span, 3),
            "inbound_messages_per_node_s": round(pubs * net.amplification / span + per_node_rpcs, 3),
            "inbound_gossip_messages_per_node_s": round(pubs * net.amplification / span, 3),
            "dht_rpcs_per_node_s": round(per_node_rpcs, 3),
            "inbound_bytes_per_node_s": round(pubs * net.bytes_per_publish / span + per_node_rpcs * net.bytes_per_dht_rpc, 1),
            "cpu_cores_per_node": {"mean": round(statistics.fmean(cpu), 4) if cpu else None,
                                   "max": round(max(cpu), 4) if cpu else None},
            "utilisation": {"mean": round(statistics.fmean(util), 4) if util else None,
                            "p99": round(sorted(util)[int(0.99 * (len(util) - 1))], 4) if util else None,
                            "max": round(max(util), 4) if util else None},
            "messages_by_kind": dict(w.load.by_kind),
            "verification_overhead": round(
                sum(r["t1"] - r["t0"] for nd in self.nodes for r in nd.stats.runs if r["kind"] == "verification")
                / max(1e-9, sum(r["t1"] - r["t0"] for nd in self.nodes for r in nd.stats.runs if r["kind"] == "experiment")), 4),
        }


ADOPTION_GRACE = 5.0

