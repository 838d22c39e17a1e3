"""report.json, series.json, report.md and plots of a discrete-event run (the process report's layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p_research.sim.report import _f, efficiency_note, write_report


def write_des_report(m: dict[str, Any], folder: Path, argv: list[str]) -> Path:
    return write_report(m, folder, argv, render=render_md)


def render_md(m: dict[str, Any], files: dict[str, str]) -> str:
    L: list[str] = []
    a = L.append
    load, model = m["load"], m["model"]
    a(f"# Discrete-event simulation: {m['nodes']} virtual nodes, {m['window_s']:.0f} s window, "
      f"announce {m['announce']}\n")
    a(f"Command: `{m['command']}` ({m['wall_s']} s of wall time)\n")
    machine = (f"one shared machine of {model['cores']:g} cores" if model["cores"] else "one machine (one core) per node")
    a(f"Modelled network: {machine}; hop latency median {model['hop_latency_s'] * 1000:g} ms; GossipSub D "
      f"{model['mesh_degree']}, {model['amplification']:g} copies per publish; loss {model['loss']:g}; NAT share "
      f"{model['nat_share']:g}; {model['cpu_per_publish_s'] * 1000:g} ms of CPU per publish per daemon.\n")
    a(f"All nodes were up after {_f(m['startup_s'], 1)} s; settle: {m['settle']['note']}.\n")
    a("## Acceptance\n\n| criterion | result | figure |\n|---|---|---|")
    for c in m["checks"]:
        a(f"| {c['criterion']} | {'PASS' if c['passed'] else 'FAIL'} | {c['figure']} |")
    adopt = m["adoptions"]
    rows = [
        ("experiments completed (in the window)", f"{m['experiments_completed']} ({m['experiments_completed_in_window']})"),
        ("experiments by status", ", ".join(f"{k} {v}" for k, v in sorted(m["experiments_by_status"].items()))),
        ("combinations of wins run (kept)", f"{m['combinations']['run']} ({m['combinations']['by_status'].get('kept', 0)})"),
        ("duplicates wasted", f"{m['duplicates_wasted']} ({m['duplicates_wasted_pct']:.2f}%)"),
        ("yielded in flight", m["duplicates_avoided"]["yielded_in_flight"]),
        ("verifications confirmed / refuted", f"{m['verifications']['confirmed']} / {m['verifications']['refuted']}"),
        ("verification run time / experiment run time", load["verification_overhead"]),
        ("adoptions (with re-run / without)", f"{adopt['count']} ({adopt['with_rerun']} / {adopt['without_rerun']})"),
        ("adoption delay from announcement p50 / p99 (s)",
         f"{_f(adopt['delay_from_announcement_s']['p50'], 1)} / {_f(adopt['delay_from_announcement_s']['p99'], 1)}"),
        ("gossip latency p50 / p99 (s)", f"{_f(m['gossip_latency_s']['p50'])} / {_f(m['gossip_latency_s']['p99'])}"),
        ("idle gap between runs p50 / p90 (s)", f"{_f(m['gap_between_runs_s']['p50'], 2)} / {_f(m['gap_between_runs_s']['p90'], 2)}"),
        ("per node: inbound messages/s (gossip + DHT)", f"{load['inbound_messages_per_node_s']} "
                                                         f"({load['inbound_gossip_messages_per_node_s']} + {load['dht_rpcs_per_node_s']})"),
        ("per node: inbound bytes/s", load["inbound_bytes_per_node_s"]),
        ("per node: CPU cores mean / max", f"{load['cpu_cores_per_node']['mean']} / {load['cpu_cores_per_node']['max']}"),
        ("CPU utilisation mean / p99 / max", f"{load['utilisation']['mean']} / {load['utilisation']['p99']} / "
                                              f"{load['utilisation']['max']}"),
        ("messages by kind", ", ".join(f"{k} {v}" for k, v in sorted(load["messages_by_kind"].items()))),
        ("swarm best reaches val_bpb (s)", ", ".join(f"{k}: {_f(v, 1)}" for k, v in m["time_to_target_s"].items())),
    ]
    a("\n## Figures\n\n| figure | value |\n|---|---|")
    for k, v in rows:
        a(f"| {k} | {v} |")
    solo = m.get("solo")
    if solo and solo.get("final_val_bpb") is not None:
        a(f"\n## Swarm versus one solo node\n\nThe solo node completed {solo['experiments_completed']} experiments and "
          f"ended at val_bpb {solo['final_val_bpb']:.4f}, reached after {_f(solo['solo_reached_at_s'], 1)} s; the swarm's "
          f"best reached it after {_f(solo['swarm_reached_at_s'], 1)} s ({_f(solo['speedup'], 1)}x) and ended at "
          f"{_f(solo['swarm_final_val_bpb'], 4)}.\n")
        note = efficiency_note(m)
        if note:
            a(note)
    for key, title in (("best_over_time", "best val_bpb over time"), ("experiments_per_node", "experiments per node"),
                       ("adoption_delay", "adoption delay")):
        if files.get(key):
            a(f"![{title}]({files[key]})\n")
    a("## How these are modelled\n")
    a("- Decisions: the daemon's own state machines (research/loop.py, swarm.py, claims.py, ownership.py, mutate.py, "
      "combine.py) for every virtual node; runs cost `cost_s` and score the surrogate objective.")
    a("- Delivery: hops ~ log_D(N) per node, each hop a log-normal latency plus the CPU queue (M/M/1 at the daemon's "
      "utilisation, plus any backlog while it is over 1); results wait for the sender's next claim (bundles).")
    a("- Load: every node receives `amplification` copies of each gossip publish and serves its share of DHT "
      "requests; CPU is `cpu_per_publish_s` per publish and `cpu_per_dht_rpc_s` per DHT request, plus idle.")
    return "\n".join(L) + "\n"
