"""report.json (figures), series.json (time series) and report.md (with PNG plots) in the report folder."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p_research.sim.plots import write_plots


def checks(m: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(criterion, passed, figure) of the acceptance criteria that apply to this run."""
    out: list[tuple[str, bool, str]] = []
    if m["nodes"] >= 35 and m["requested_duration_s"] <= 300 and m["objective"] == "surrogate":
        out.append(("at least 333 experiments completed within the 5 minutes",
                    m["experiments_completed_in_window"] >= 333,
                    f"{m['experiments_completed_in_window']} in the window ({m['experiments_completed']} in all)"))
    out.append(("no node crashed", m["crashed_nodes"] == 0, str(m["crashed_nodes"])))
    c = m["convergence"]
    out.append(("every honest node ends on the same best baseline", c["all_on_same_baseline"],
                f"{c['on_best_commit']}/{c['honest_nodes']} on {str(c['best_commit'])[:10]}, "
                f"{c['distinct_final_commits']} distinct"))
    out.append(("wasted duplicates under 1% of experiments", m["duplicates_wasted_pct"] < 1.0,
                f"{m['duplicates_wasted']} ({m['duplicates_wasted_pct']:.2f}%)"))
    if m["churn_events"]:
        ok = all(e["same_peer_id"] and e["acked_runs_lost"] == 0 and e["restarted"] for e in m["churn_events"])
        resumed = sum(e["experiments_after_restart"] > 0 for e in m["churn_events"])
        out.append(("restarted nodes keep their peer id, lose nothing acknowledged", ok,
                    f"{len(m['churn_events'])} restarts, {sum(e['acked_runs_lost'] for e in m['churn_events'])} "
                    f"acknowledged runs lost, {resumed} resumed experimenting"))
    if m["liars"]:
        out.append(("no honest node ends on a fabricated baseline", not m["honest_on_fabricated_baseline"],
                    ", ".join(m["honest_on_fabricated_baseline"]) or "none"))
    solo = m.get("solo") or {}
    if solo.get("final_val_bpb") is not None:
        sooner = solo.get("swarm_sooner_by_s")
        out.append(("swarm reaches the solo node's final val_bpb sooner", sooner is not None and sooner > 0,
                    f"swarm at {solo.get('swarm_reached_at_s')} s vs solo at {solo.get('solo_reached_at_s')} s"))
    return out


def write_report(m: dict[str, Any], folder: Path, argv: list[str], dashboard_state: dict[str, Any] | None = None,
                 render: Callable[[dict[str, Any], dict[str, str]], str] | None = None) -> Path:
    """report.json, series.json, the plots and report.md (`render`: its Markdown; the process run's by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = m.pop("series")
    if m.get("dashboard") is not None:  # the page served during the run, kept with its final state
        from p2p_research.sim.live_page import final_state, write_static

        m["dashboard"]["file"] = write_static(folder, final_state(m, series, dashboard_state)).name
    m["command"] = " ".join(shlex.quote(a) for a in argv)
    m["checks"] = [{"criterion": c, "passed": ok, "figure": f} for c, ok, f in checks(m)]
    (folder / "report.json").write_text(json.dumps(m, indent=1, default=str))
    (folder / "series.json").write_text(json.dumps(series))
    try:
        files = write_plots({**m, "series": series}, folder)
    except Exception as e:  # noqa: BLE001 - the figures must not cost the report
        files = {}
        m["plot_error"] = str(e)
    (folder / "report.md").write_text((render or render_md)(m, files))
    return folder / "report.md"


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def efficiency_note(m: dict[str, Any]) -> str:
    """The parallel efficiency of the solo comparison, and what it does not say (both engines' reports)."""
    solo = m.get("solo") or {}
    if not solo.get("speedup") or not m.get("nodes"):
        return ""
    n = m["nodes"]
    return (f"\nParallel efficiency (that speedup / {n} nodes): {solo['speedup'] / n:.0%}. The solo node had 1/{n} of "
            "the swarm's compute and its final value is one draw: at equal compute (one node for N times the "
            "duration) and over 20 seeds, `bench/bench_speedup.py` gives the median time to each target value and "
            "the speedup (docs/scale.md).\n")


def render_md(m: dict[str, Any], files: dict[str, str]) -> str:
    L: list[str] = []
    a = L.append
    a(f"# Simulation report: {m['nodes']} nodes, {m['duration_s']:.0f} s, {m['objective']} objective\n")
    a(f"Command: `{m['command']}`\n")
    if m.get("dashboard"):
        a(f"Dashboard: live at {m['dashboard']['url']} during the run; its final state: "
          f"[{m['dashboard']['file']}]({m['dashboard']['file']}) (every node's curve, the solo node, the counters).\n")
    a(f"Duration counted from {m['duration_counted_from']}; all nodes were up after {_f(m['startup_s'], 1)} s; "
      f"experiment window {m['window_s']:.0f} s; whole run {m['duration_s']:.0f} s"
      + (f"; settle after the window: {m['settle']['note']}" if m["settle"]["note"] else "")
      + (f". Interrupted by {m['interrupted']}." if m.get("interrupted") else ".") + "\n")
    a("## Acceptance\n\n| criterion | result | figure |\n|---|---|---|")
    for c in m["checks"]:
        a(f"| {c['criterion']} | {'PASS' if c['passed'] else 'FAIL'} | {c['figure']} |")
    a("")
    a("## Figures\n\n| figure | value |\n|---|---|")
    rows = [
        ("experiments completed (swarm, verifications excluded)", m["experiments_completed"]),
        (f"  of which finished within the {m['window_s']:.0f} s window", m["experiments_completed_in_window"]),
        ("time in runs: experiments / verifications / baselines (node-seconds)",
         " / ".join(str(m["run_seconds_by_kind"][k]) for k in ("experiment", "verification", "baseline"))),
        ("idle gap between a node's runs p50 / p90 / max (s)",
         f"{_f(m['gap_between_runs_s']['p50'], 1)} / {_f(m['gap_between_runs_s']['p90'], 1)} / "
         f"{_f(m['gap_between_runs_s']['max'], 1)}"),
        ("experiments by status", ", ".join(f"{k} {v}" for k, v in sorted(m["experiments_by_status"].items()))),
        ("combinations of wins run (kept)", f"{m.get('combinations', {}).get('run', 0)} "
                                            f"({m.get('combinations', {}).get('by_status', {}).get('kept', 0)})"),
        ("experiments per node (min / max)", f"{min(m['experiments_per_node'].values(), default=0)} / "
                                             f"{max(m['experiments_per_node'].values(), default=0)}"),
        ("runs aborted (stops, kills, yields)", m["experiments_aborted"]),
        ("duplicates wasted", f"{m['duplicates_wasted']} ({m['duplicates_wasted_pct']:.2f}%)"),
        ("duplicates avoided in flight (yielded to an earlier claim)", m["duplicates_avoided"]["yielded_in_flight"]),
        ("proposals skipped before running (id known / claimed elsewhere)",
         "-" if not m["duplicates_avoided"].get("proposals_skipped_by_reason") else
         f"{m['duplicates_avoided']['proposals_skipped_by_reason'].get('known_in_ledger', 0)} / "
         f"{m['duplicates_avoided']['proposals_skipped_by_reason'].get('claimed_elsewhere', 0)}"),
        ("verifications confirmed / refuted", f"{m['verifications']['confirmed']} / {m['verifications']['refuted']}"),
        ("  of liars' claims: confirmed / refuted", f"{m['verifications']['of_liars']['confirmed']} / "
                                                    f"{m['verifications']['of_liars']['refuted']}"),
        ("adoptions (with re-run / without)", f"{m['adoptions']['count']} ({m['adoptions']['with_rerun']} / "
                                              f"{m['adoptions']['without_rerun']})"),
        ("adoption delay from announcement p50 / p99 (s)", f"{_f(m['adoptions']['delay_from_announcement_s']['p50'], 1)} / "
                                                           f"{_f(m['adoptions']['delay_from_announcement_s']['p99'], 1)}"),
        ("adoption delay from receipt p50 / p99 (s)", f"{_f(m['adoptions']['delay_from_receipt_s']['p50'], 1)} / "
                                                      f"{_f(m['adoptions']['delay_from_receipt_s']['p99'], 1)}"),
        ("gossip latency p50 / p99 (s)", f"{_f(m['gossip_latency_s']['p50'])} / {_f(m['gossip_latency_s']['p99'])} "
                                         f"(n={m['gossip_latency_s']['n']})"),
        ("results delivered to every other node", f"{_f(m['propagation']['results_reaching_every_node_pct'], 1)}% "
                                                  f"(pairs {_f(m['propagation']['delivered_pairs_pct'], 1)}%)"),
        ("connected peers per node at the stop p50 / max", f"{_f(m['peers_at_stop']['p50'], 0)} / "
                                                            f"{_f(m['peers_at_stop']['max'], 0)}"),
        ("TCP bytes sent per experiment", _f(m["bytes_sent_per_experiment"])),
        ("CPU seconds, all nodes", m["cpu_s_total"]),
        ("crashed nodes", m["crashed_nodes"]),
        (f"nodes that did not stop within {m.get('stop_grace_s', 30):.0f} s of SIGTERM (then SIGKILLed)",
         len(m["stop_timeouts"])),
    ]
    for k, v in rows:
        a(f"| {k} | {v} |")
    solo = m.get("solo")
    if solo and solo.get("final_val_bpb") is not None:
        a(f"\n## Swarm versus one solo node\n\nThe solo node (same objective, cost and duration, no peers) completed "
          f"{solo['experiments_completed']} experiments and ended at val_bpb {solo['final_val_bpb']:.4f}, which it "
          f"reached after {_f(solo['solo_reached_at_s'], 1)} s. The swarm's best reached that value after "
          f"{_f(solo['swarm_reached_at_s'], 1)} s"
          + (f", {solo['swarm_sooner_by_s']:.1f} s sooner ({_f(solo['speedup'], 1)}x)" if solo.get("speedup") else "")
          + f", and ended at {_f(solo['swarm_final_val_bpb'], 4)}. (Each node's first value is its own noisy "
          "measurement of the genesis commit, so the swarm's minimum starts a little lower by selection alone.)\n")
        note = efficiency_note(m)
        if note:
            a(note)
    if files.get("best_over_time"):
        a(f"![best val_bpb over time]({files['best_over_time']})\n")
    if files.get("experiments_per_node"):
        a(f"![experiments per node]({files['experiments_per_node']})\n")
    if files.get("adoption_delay"):
        a(f"![adoption delay]({files['adoption_delay']})\n")
    if m["churn_events"]:
        a("## Churn\n\n| node | killed at (s) | same peer id | acked runs before kill | lost | experiments after restart |")
        a("|---|---|---|---|---|---|")
        for e in m["churn_events"]:
            a(f"| {e['node']} | {_f(e['killed_at_s'], 1)} | {e['same_peer_id']} | {e['acked_runs_before_kill']} | "
              f"{e['acked_runs_lost']} | {e['experiments_after_restart']} |")
        a("")
    if m["liar_nodes"]:
        a(f"## Liars\n\nLiar nodes: {', '.join(m['liar_nodes'])}. Adoptions from liars: "
          f"{m['adoptions']['from_liars']} ({m['adoptions']['from_liars_without_rerun']} without a re-run). Honest "
          f"nodes on a fabricated baseline at the end: {', '.join(m['honest_on_fabricated_baseline']) or 'none'}.\n")
    a("## Per node\n\n| node | experiments | final baseline | val_bpb | CPU s | peak RSS MiB | TCP sent | restarts |")
    a("|---|---|---|---|---|---|---|---|")
    fb = {v["name"]: v for v in m["final_baselines"].values()}
    for name in sorted(m["processes"]):
        p = m["processes"][name]
        f = fb.get(name) or (m.get("solo") or {}).get("final_baseline") or {}
        label = name + (" (liar)" if name in m["liar_nodes"] else "")
        a(f"| {label} | {m['experiments_per_node'].get(name, (m.get('solo') or {}).get('experiments_completed', '-'))} "
          f"| {str(f.get('commit'))[:10]} | {_f(f.get('val_bpb'), 4)} | {p['cpu_s']} | {p['peak_rss_mb']} | "
          f"{p['tcp_bytes_sent']} | {p['restarts']} |")
    dc = m.get("daemon_counters_at_stop") or {}
    if dc.get("nodes_answering"):
        a(f"\n## Daemon counters at the stop (sum over {dc['nodes_answering']} nodes that answered; since each "
          "node's last start)\n")
        for group in ("net", "net_rejected", "intake", "swarm", "dedup"):
            if dc.get(group):
                a(f"- {group}: " + ", ".join(f"{k} {v}" for k, v in sorted(dc[group].items())))
    a("\n## How these are measured\n")
    a("- Experiments: every swarm node's local runs of kind `experiment` that finished kept, discarded or crash "
      "(verifications and aborted runs excluded), read from each node's ledger after the stop.")
    a("- Duplicates wasted: runs of an experiment id beyond the first, across all nodes. "
      + m["duplicates_avoided"]["note"])
    a("- Adoption delay: `adopted_at` of a baseline taken from a peer minus that result's receipt timestamp "
      "(announcement) or the adopter's `received_at` (receipt). Adoption happens between experiments, so the "
      "delay includes finishing the experiment in flight and any verification re-run.")
    a(f"- Gossip latency: {m['gossip_latency_s']['note']}.")
    a(f"- Bytes: {m['bytes']['method']}.")
    a("- CPU seconds: utime+stime (+ waited children) from /proc/<pid>/stat; peak RSS: VmHWM from /proc/<pid>/status; "
      "sampled every 2 s and just before the stop, summed (CPU) or maxed (RSS) over a restarted node's processes.")
    a("- Timings come from a shared 2-core machine where other work may run at the same time: they are noisy.")
    return "\n".join(L) + "\n"
