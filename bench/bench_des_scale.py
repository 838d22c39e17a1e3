"""How the swarm behaves from 35 to 10,000 nodes: the discrete-event simulator over a grid of sizes.

For each N and each protocol (`--announce all`: claims and every result flooded, the protocol of the
real daemon; `kept`: kept results and replicas' confirmations flooded, the rest in the DHT), one run
with modelled real-world latencies and one machine per node. Prints one line per run and writes
JSON plus one PNG per figure (log N on x):

    .venv/bin/python bench/bench_des_scale.py --nodes 35 100 300 1000 --duration 600 --out docs/scale
    .venv/bin/python bench/bench_des_scale.py --nodes 35 100 --duration 120      # quick check, ~10 s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from p2p_research.sim.des.model import NetModel
from p2p_research.sim.des.run import DesOptions, DesSimulation
from p2p_research.sim.report import accidental_duplicates

FIGURES = {
    "inbound_messages_per_node_s": ("inbound messages per node per s (gossip copies + DHT requests)", True),
    "inbound_kib_per_node_s": ("inbound KiB per node per s", True),
    "cpu_cores_per_node": ("CPU per node (cores, mean over the window)", True),
    "duplicates_wasted_pct": ("wasted duplicates (% of experiments)", False),
    "verification_overhead": ("verification run time / experiment run time", False),
    "adoption_delay_p50_s": ("adoption delay from announcement, p50 (s)", False),
    "gossip_latency_p50_s": ("gossip delivery latency, p50 (s)", True),
    "experiments_per_node_h": ("experiments per node per hour", False),
    "time_to_1_50_s": ("time until the swarm's best reaches val_bpb 1.50 (s)", False),
    "converged_after_s": ("time after the window until every honest node is on one baseline (s)", False),
}


def one(n: int, announce: str, duration: float, seed: int, settle: float, start_rate: float = 3.0,
        records_only: bool = False) -> dict:
    sim = DesSimulation(DesOptions(nodes=n, duration_s=duration, seed=seed, announce=announce, settle_s=settle,
                                   solo=False, start_rate=start_rate, net=NetModel(), forward_records_only=records_only))
    m = sim.run()
    load = m["load"]
    return {
        "nodes": n, "announce": announce, "window_s": m["window_s"], "wall_s": m["wall_s"],
        "experiments": m["experiments_completed"],
        "experiments_per_node_h": round(m["experiments_completed_in_window"] / n / (m["window_s"] / 3600), 1),
        "inbound_messages_per_node_s": load["inbound_messages_per_node_s"],
        "inbound_gossip_messages_per_node_s": load["inbound_gossip_messages_per_node_s"],
        "dht_rpcs_per_node_s": load["dht_rpcs_per_node_s"],
        "inbound_kib_per_node_s": round(load["inbound_bytes_per_node_s"] / 1024, 1),
        "cpu_cores_per_node": load["cpu_cores_per_node"]["mean"],
        "cpu_utilisation_max": load["utilisation"]["max"],
        "duplicates_wasted_pct": m["duplicates_wasted_pct"],
        # of those, what dedup missed (the rest checked unproven peers' negative reports on purpose)
        "duplicates_accidental_pct": accidental_duplicates(m)[0],
        "verification_overhead": load["verification_overhead"],
        "adoption_delay_p50_s": m["adoptions"]["delay_from_announcement_s"]["p50"],
        "gossip_latency_p50_s": m["gossip_latency_s"]["p50"],
        "time_to_1_50_s": m["time_to_target_s"].get("1.50"),
        "time_to_target_s": m["time_to_target_s"],
        "converged": m["convergence"]["all_on_same_baseline"],
        "converged_after_s": m["settle"]["settle_s"] if m["convergence"]["all_on_same_baseline"] else None,
        "best_val_bpb": m["convergence"]["best_val_bpb"],
        "messages_by_kind": load["messages_by_kind"],
    }


def plot(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, (title, logy) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for announce, style in (("all", "o-"), ("kept", "s--")):
            pts = sorted((r["nodes"], r[key]) for r in rows if r["announce"] == announce and r.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style,
                        label={"all": "announce all (flooding)", "kept": "announce kept (sparse)"}[announce])
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{out.name}-{key}.png"
        fig.savefig(out.parent / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def table(rows: list[dict]) -> str:
    """The runs as a Markdown table (docs/scale.md)."""
    cols = [("nodes", "N"), ("announce", "announce"), ("wall_s", "wall s"), ("experiments_per_node_h", "exp/node/h"),
            ("inbound_messages_per_node_s", "in msg/s/node"), ("dht_rpcs_per_node_s", "of which DHT"),
            ("inbound_kib_per_node_s", "in KiB/s/node"), ("cpu_cores_per_node", "CPU cores/node"),
            ("cpu_utilisation_max", "CPU max"), ("duplicates_wasted_pct", "dup %"), ("duplicates_accidental_pct", "of which by accident %"),
            ("verification_overhead", "re-run/exp time"), ("adoption_delay_p50_s", "adopt p50 s"),
            ("gossip_latency_p50_s", "gossip p50 s"), ("time_to_1_50_s", "to 1.50 s"),
            ("converged_after_s", "one baseline after s")]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: (r["nodes"], r["announce"])):
        out.append("| " + " | ".join("-" if r.get(k) is None else str(r[k]) for k, _ in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[35, 100, 300])
    ap.add_argument("--announce", nargs="+", default=["all", "kept"], choices=["all", "kept"])
    ap.add_argument("--duration", type=float, default=600.0, help="experiment window per run (virtual s)")
    ap.add_argument("--settle", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-rate", type=float, default=3.0, help="nodes started per second (3: all 1,000 in 333 s)")
    ap.add_argument("--forward-records-only", action="store_true",
                    help="an experiment: sparse nodes pass a kept result on only where it beats their baseline")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT-<figure>.png")
    ap.add_argument("--table", action="store_true", help="print OUT.json's runs as a Markdown table and plot them")
    args = ap.parse_args(argv)
    if args.table:
        rows = json.loads((args.out.parent / f"{args.out.name}.json").read_text())["runs"]
        print(table(rows))
        plot(rows, args.out)
        return 0
    rows = []
    if args.out is not None and (args.out.parent / f"{args.out.name}.json").exists():
        rows = json.loads((args.out.parent / f"{args.out.name}.json").read_text())["runs"]  # add to earlier sizes
    try:
        for n in args.nodes:
            for announce in args.announce:
                t = time.monotonic()
                r = one(n, announce, args.duration, args.seed, args.settle, args.start_rate, args.forward_records_only)
                r["start_rate"] = args.start_rate
                rows = [x for x in rows if (x["nodes"], x["announce"]) != (n, announce)] + [r]
                print(f"N={n:>6} announce={announce:<4} wall {time.monotonic() - t:7.1f} s | in/node/s "
                      f"{r['inbound_messages_per_node_s']:>8} ({r['inbound_kib_per_node_s']} KiB) | cpu {r['cpu_cores_per_node']} "
                      f"| dup {r['duplicates_wasted_pct']}% (accident {r['duplicates_accidental_pct']}%) | verif {r['verification_overhead']} | adopt p50 "
                      f"{r['adoption_delay_p50_s']} s | to 1.50 {r['time_to_1_50_s']} s | converged {r['converged']}",
                      flush=True)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(
                        {"command": " ".join(sys.argv), "duration_s": args.duration, "runs": rows}, indent=1))
    except KeyboardInterrupt:
        return 130
    if args.out is not None:
        print("plots:", ", ".join(plot(rows, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
