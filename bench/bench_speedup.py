"""Research effectiveness: how much sooner a swarm reaches a value than one node alone, over many seeds.

The "time to the solo node's final value" of one simulation is mostly luck (when that one solo run
happened to find its last gain). This benchmark measures what the swarm is for instead: for each
target value v, the median time a solo node needs to reach v (one node for `--solo-duration`, default
175 minutes: the swarm's compute) over the median time an N-node swarm needs (`--duration`, default 5
minutes, N nodes sharing `--cores` like the real simulation on one machine), across `--seeds`. Every
run is the discrete-event simulator (sim/des) on the default surrogate objective, so the figures are
deterministic per seed and do not depend on this machine's load:

    .venv/bin/python bench/bench_speedup.py                        # seeds 0-19, ~3 minutes on 2 cores
    .venv/bin/python bench/bench_speedup.py --seeds 20-39          # the check on seeds not tuned to
    .venv/bin/python bench/bench_speedup.py --liars 2 --seeds 0-9  # the same under two liars

Printed: every seed's times, then per v the medians, the speedup (solo median / swarm median) and the
parallel efficiency (speedup / N); how many seeds reach 1.495 within the window (swarm) and within
the solo node's equal compute; the adoption delay from announcement (p50, median over seeds) and the
share of node time spent re-running peers' results. A time the run never reached counts as infinite
(a median over such seeds is infinite too, and says so). `--out FILE` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

TARGETS = (1.54, 1.52, 1.51, 1.50)
FINAL = 1.495   # the value both end near at equal compute
#: another landscape (--surrogate) has values of its own: its targets are what the solo node reaches,
#: median over the seeds, at the times it needs for the default's (about 6, 17, 25 and 61 minutes), and
#: its final value the solo node's median at the end of its equal compute
SOLO_TIMES = (360.0, 1000.0, 1500.0, 3680.0)


def time_to(series: list, value: float, within: float) -> float | None:
    """The first time the best-over-time `series` ([[t, best], ...]) is at or below `value`, if it is
    within the run's window (the settle after it does not count)."""
    for t, best in series:
        if t > within:
            return None
        if best <= value:
            return float(t)
    return None


def seeds_of(text: str) -> list[int]:
    """`0-19` or `0,3,7-9` as a list of seeds (argparse's type: a bad one is a one-line usage error)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seeds: {text!r} (e.g. 0-19 or 0,3,7-9)") from None
    if not out:
        raise argparse.ArgumentTypeError(f"no seed in {text!r}")
    return out


def one(kind: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    """One simulation (a swarm or the solo node) and what the benchmark reads of it."""
    from p2p_research.sim.des.model import NetModel
    from p2p_research.sim.des.run import DesOptions, DesSimulation

    swarm = kind == "swarm"
    cores = args["cores"] if swarm else 0.0
    opts = DesOptions(nodes=args["nodes"] if swarm else 1, seed=seed, solo=False, cost_s=args["cost"],
                      duration_s=args["duration"] if swarm else args["solo_duration"],
                      liars=args["liars"] if swarm else 0, settle_s=args["settle"] if swarm else 0.0,
                      surrogate=args["surrogate"], net=NetModel(hop_latency_s=0.001 if cores else 0.040, cores=cores))
    started = time.monotonic()
    m = DesSimulation(opts).run()
    window = opts.duration_s
    series = m["series"]["swarm"]
    kinds = m["run_seconds_by_kind"]
    busy = sum(kinds.values()) or 1.0
    return {
        "kind": kind, "seed": seed, "wall_s": round(time.monotonic() - started, 1), "window": window,
        "series": [[t, b] for t, b in series if t <= window],
        "final": min((b for t, b in series if t <= window), default=None),
        "experiments": m["experiments_completed_in_window"],
        "adoption_delay_p50_s": (m["adoptions"]["delay_from_announcement_s"] or {}).get("p50") if swarm else None,
        "verification_share": round(kinds.get("verification", 0.0) / busy, 3),
        "honest_on_fabricated": len(m["honest_on_fabricated_baseline"]),
        "converged": m["convergence"]["all_on_same_baseline"],
    }


def swarm_size(text: str) -> int:
    """--nodes: a swarm of at least two (argparse's type)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise argparse.ArgumentTypeError(f"a swarm needs at least 2 nodes, got {text!r}")
    return n


def median_time(values: list[float | None]) -> float:
    return statistics.median(math.inf if v is None else v for v in values)


def fmt(t: float | None) -> str:
    return "-" if t is None or math.isinf(t) else f"{t:,.0f}"


def best_at(series: list, t: float) -> float:
    """The best value of a best-over-time series at time t (infinite before its first value)."""
    return min((b for s, b in series if s <= t), default=math.inf)


def targets_of(solo: list[dict], family: str) -> tuple[tuple[float, ...], float]:
    """The values the table asks about: the default's fixed ones, or another landscape's from its solo runs."""
    if family == "default":
        return TARGETS, FINAL
    values = tuple(round(statistics.median(best_at(r["series"], t) for r in solo), 4) for t in SOLO_TIMES)
    return values, round(statistics.median(best_at(r["series"], r["window"]) for r in solo), 4)


def with_times(runs: list[dict], targets: tuple[float, ...], final: float) -> None:
    for r in runs:
        r["times"] = {f"{v:.4f}": time_to(r["series"], v, r["window"]) for v in (*targets, final)}


def summary(swarm: list[dict], solo: list[dict], nodes: int, targets: tuple[float, ...] = TARGETS,
            final: float = FINAL) -> dict[str, Any]:
    rows = {}
    for v in targets:
        key = f"{v:.4f}"
        s_solo = median_time([r["times"][key] for r in solo])
        s_swarm = median_time([r["times"][key] for r in swarm])
        speedup = s_solo / s_swarm if s_swarm and not math.isinf(s_swarm) else None
        rows[key] = {"solo_median_s": s_solo, "swarm_median_s": s_swarm,
                     "speedup": round(speedup, 2) if speedup is not None and not math.isinf(speedup) else None,
                     "efficiency": round(speedup / nodes, 3) if speedup is not None and not math.isinf(speedup) else None}
    delays = [r["adoption_delay_p50_s"] for r in swarm if r["adoption_delay_p50_s"] is not None]
    key = f"{final:.4f}"
    return {
        "targets": rows, "final": final,
        "swarm_reaches_final": sum(r["times"][key] is not None for r in swarm),
        "solo_reaches_final": sum(r["times"][key] is not None for r in solo),
        "seeds": len(swarm),
        "adoption_delay_p50_s": {"median": statistics.median(delays) if delays else None,
                                 "min": min(delays, default=None), "max": max(delays, default=None)},
        "verification_share": {"median": statistics.median(r["verification_share"] for r in swarm),
                               "max": max(r["verification_share"] for r in swarm)},
        "honest_on_fabricated": sum(r["honest_on_fabricated"] for r in swarm),
        "converged": sum(r["converged"] for r in swarm),
    }


def print_report(swarm: list[dict], solo: list[dict], s: dict, args: argparse.Namespace) -> None:
    targets, final = tuple(float(v) for v in s["targets"]), s["final"]
    heads = [f"{v:.4f}" for v in (*targets, final)]
    print(f"\n{args.nodes} nodes for {args.duration:.0f} s (cores {args.cores:g}, liars {args.liars}) against one node "
          f"for {args.solo_duration:.0f} s; runs of {args.cost:g} s; surrogate {args.surrogate}; {len(args.seeds)} seeds, "
          f"{args.seeds[0]} to {args.seeds[-1]}")
    print("| seed | " + " | ".join(f"swarm {h}" for h in heads) + " | " + " | ".join(f"solo {h}" for h in heads)
          + " | adoption p50 | verification |")
    print("|---" * (2 * len(heads) + 3) + "|")
    for a, b in zip(swarm, solo, strict=True):
        print(f"| {a['seed']} | " + " | ".join(fmt(a["times"][h]) for h in heads) + " | "
              + " | ".join(fmt(b["times"][h]) for h in heads)
              + f" | {fmt(a['adoption_delay_p50_s'])} | {a['verification_share']:.0%} |")
    print("\n| v | " + " | ".join(f"{v:.4g}" for v in targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    t = s["targets"]
    print("| solo, median (s) | " + " | ".join(fmt(t[f"{v:.4f}"]["solo_median_s"]) for v in targets) + " |")
    print("| swarm, median (s) | " + " | ".join(fmt(t[f"{v:.4f}"]["swarm_median_s"]) for v in targets) + " |")
    print("| speedup | " + " | ".join(f"{t[f'{v:.4f}']['speedup']}x" if t[f"{v:.4f}"]["speedup"] else "-"
                                      for v in targets) + " |")
    print("| parallel efficiency | " + " | ".join(f"{t[f'{v:.4f}']['efficiency']:.0%}" if t[f"{v:.4f}"]["efficiency"]
                                                  else "-" for v in targets) + " |")
    d = s["adoption_delay_p50_s"]
    print(f"\nreach {final:.4g} in the window: swarm {s['swarm_reaches_final']}/{s['seeds']}; "
          f"solo at equal compute {s['solo_reaches_final']}/{s['seeds']}")
    print(f"adoption delay from announcement, p50: median {fmt(d['median'])} s over seeds "
          f"[{fmt(d['min'])}, {fmt(d['max'])}] (runs of {args.cost:g} s)")
    print(f"re-runs of peers' results: median {s['verification_share']['median']:.0%} of node time "
          f"(max {s['verification_share']['max']:.0%})")
    print(f"honest nodes on a fabricated baseline: {s['honest_on_fabricated']} (all seeds); "
          f"converged: {s['converged']}/{s['seeds']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=seeds_of, default="0-19", help="e.g. 0-19 or 0,3,7-9")
    ap.add_argument("--nodes", type=swarm_size, default=35, help="swarm nodes (2 or more)")
    ap.add_argument("--duration", type=float, default=300.0, help="the swarm's window (s)")
    ap.add_argument("--solo-duration", type=float, default=None, help="the solo node's time (s; default nodes x duration)")
    ap.add_argument("--cores", type=float, default=2.0, help="cores the swarm's nodes share (0: one machine each)")
    ap.add_argument("--cost", type=float, default=15.0, help="simulated seconds per run")
    ap.add_argument("--liars", type=int, default=0)
    ap.add_argument("--settle", type=float, default=180.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--surrogate", default="default", choices=("default", "separable", "interacting", "noisy", "deceptive"),
                    help="the landscape (research/io/surrogate.py); other than default, the targets come from its solo runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.solo_duration is None:
        args.solo_duration = args.nodes * args.duration
    seeds = args.seeds
    conf = {k: getattr(args, k) for k in ("nodes", "duration", "solo_duration", "cores", "cost", "liars", "settle",
                                          "surrogate")}
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        swarm_f = [pool.submit(one, "swarm", s, conf) for s in seeds]
        solo_f = [pool.submit(one, "solo", s, conf) for s in seeds]
        swarm = [f.result() for f in swarm_f]
        solo = [f.result() for f in solo_f]
    targets, final = targets_of(solo, args.surrogate)
    with_times(swarm, targets, final)
    with_times(solo, targets, final)
    s = summary(swarm, solo, args.nodes, targets, final)
    print_report(swarm, solo, s, args)
    print(f"\n({time.monotonic() - started:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({"config": conf, "seeds": seeds, "summary": s, "swarm": swarm, "solo": solo},
                                       indent=1, default=lambda x: None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
