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
    accidental, checks_ = accidental_duplicates(m)
    out.append(("wasted duplicates under 1% of experiments (checks of unproven negative reports apart)",
                accidental < 1.0, f"{m['duplicates_wasted']} ({m['duplicates_wasted_pct']:.2f}%)"
                + (f", of which {checks_} checked unproven negative reports: {accidental:.2f}% by accident"
                   if checks_ else "")))
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


def accidental_duplicates(m: dict[str, Any]) -> tuple[float, int]:
    """(% of experiments that ran twice by accident, the re-runs that checked unproven peers' negative
    reports on purpose): research/negatives.py has a sampling proposal re-run what only an unproven peer
    reported discarded, which counts as a duplicate but is verification by design."""
    checked = int(m.get("duplicates_checking_negatives") or 0)
    total = m.get("experiments_completed") or 0
    return (round(100 * (m["duplicates_wasted"] - checked) / total, 3) if total else 0.0), checked


def write_report(m: dict[str, Any], folder: Path, argv: list[str], dashboard_state: dict[str, Any] | None = None,
                 render: Callable[[dict[str, Any], dict[str, str]], str] | None = None) -> Path:
    """report.json, series.json, the plots and report.md (`render`: its Markdown, render_md by default)."""
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
    """report.md of either engine (`m["engine"]`): the figures both give (SimReport) in one layout, under
    one name each, with each engine's own sections around them, so the two reports read side by side."""
    des = m["engine"] == "des"
    L: list[str] = []
    a = L.append
    L += _des_head(m) if des else _process_head(m)
    a("## Acceptance\n\n| criterion | result | figure |\n|---|---|---|")
    for c in m["checks"]:
        a(f"| {c['criterion']} | {'PASS' if c['passed'] else 'FAIL'} | {c['figure']} |")
    a("\n## Figures\n\n| figure | value |\n|---|---|")
    for k, v in [*common_rows(m), *(_des_rows(m) if des else _process_rows(m))]:
        a(f"| {k} | {v} |")
    solo = m.get("solo")
    if solo and solo.get("final_val_bpb") is not None:
        a(f"\n## Swarm versus one solo node\n\nThe solo node (same objective, cost and duration, no peers) completed "
          f"{solo['experiments_completed']} experiments and ended at val_bpb {solo['final_val_bpb']:.4f}, which it "
          f"reached after {_f(solo['solo_reached_at_s'], 1)} s. The swarm's best reached that value after "
          f"{_f(solo['swarm_reached_at_s'], 1)} s"
          + (f", {abs(solo['swarm_sooner_by_s']):.1f} s {'sooner' if solo['swarm_sooner_by_s'] >= 0 else 'later'} "
             f"({_f(solo['speedup'], 1)}x)" if solo.get("speedup") and solo.get("swarm_sooner_by_s") is not None else "")
          + f", and ended at {_f(solo['swarm_final_val_bpb'], 4)}. (Each node's first value is its own noisy "
          "measurement of the genesis commit, so the swarm's minimum starts a little lower by selection alone.)\n")
        note = efficiency_note(m)
        if note:
            a(note)
    for key, title in (("best_over_time", "best val_bpb over time"), ("experiments_per_node", "experiments per node"),
                       ("adoption_delay", "adoption delay")):
        if files.get(key):
            a(f"![{title}]({files[key]})\n")
    if m["churn_events"]:
        a("## Churn\n\n| node | killed at (s) | same peer id | acked runs before kill | lost | experiments after restart |")
        a("|---|---|---|---|---|---|")
        for e in m["churn_events"]:
            a(f"| {e['node']} | {_f(e.get('killed_at_s'), 1)} | {_f(e.get('same_peer_id'))} | "
              f"{_f(e.get('acked_runs_before_kill'))} | {_f(e.get('acked_runs_lost'))} | {_f(e.get('experiments_after_restart'))} |")
        a("")
    if m["liar_nodes"]:
        a(f"## Liars\n\nLiar nodes: {', '.join(m['liar_nodes'])}. Adoptions from liars: "
          f"{m['adoptions']['from_liars']} ({m['adoptions']['from_liars_without_rerun']} without a re-run). Honest "
          f"nodes on a fabricated baseline at the end: {', '.join(m['honest_on_fabricated_baseline']) or 'none'}.\n")
    L += _des_tail(m) if des else _process_tail(m)
    return "\n".join(L) + "\n"


def _process_head(m: dict[str, Any]) -> list[str]:
    out = [f"# Simulation report: {m['nodes']} nodes, {m['duration_s']:.0f} s, {m['objective']} objective\n",
           f"Command: `{m['command']}`\n"]
    if m.get("dashboard"):
        out.append(f"Dashboard: live at {m['dashboard']['url']} during the run; its final state: "
                   f"[{m['dashboard']['file']}]({m['dashboard']['file']}) (every node's curve, the solo node, the counters).\n")
    cl = m.get("cluster")
    if cl:
        out.append(f"Ray cluster `{cl['address']}`: {len(cl['hosts'])} machine(s). Each machine's clock against "
                   "this one's (the ledgers' timestamps are each machine's own):\n")
        out.append("| machine | address | cores | nodes | clock offset ms (± error) |\n|---|---|---|---|---|")
        for h in cl["hosts"]:
            out.append(f"| {h['hostname']}{' (lost)' if h.get('lost') else ''} | {h['ip']} | {h['cpus']} | "
                       f"{len(h['nodes'])} | {h['clock_offset_ms']:+.1f} ± {h['clock_error_ms']:.1f} |")
        out.append("")
    out.append(f"Duration counted from {m['duration_counted_from']}; all nodes were up after {_f(m['startup_s'], 1)} s; "
               f"experiment window {m['window_s']:.0f} s; whole run {m['duration_s']:.0f} s"
               + (f"; settle after the window: {m['settle']['note']}" if m["settle"]["note"] else "")
               + (f". Interrupted by {m['interrupted']}." if m.get("interrupted") else ".") + "\n")
    return out


def _des_head(m: dict[str, Any]) -> list[str]:
    model = m["model"]
    machine = (f"one shared machine of {model['cores']:g} cores" if model["cores"] else "one machine (one core) per node")
    return [f"# Discrete-event simulation: {m['nodes']} virtual nodes, {m['window_s']:.0f} s window, "
            f"announce {m['announce']}\n",
            f"Command: `{m['command']}` ({m['wall_s']} s of wall time)\n",
            f"Modelled network: {machine}; hop latency median {model['hop_latency_s'] * 1000:g} ms; GossipSub D "
            f"{model['mesh_degree']}, {model['amplification']:g} copies per publish; loss {model['loss']:g}; NAT share "
            f"{model['nat_share']:g}; {model['cpu_per_publish_s'] * 1000:g} ms of CPU per publish per daemon.\n",
            f"All nodes were up after {_f(m['startup_s'], 1)} s; experiment window {m['window_s']:.0f} s; "
            f"settle: {m['settle']['note']}.\n"]


def _p(d: dict[str, Any], *keys: str, nd: int = 1) -> str:
    """Percentiles of a distribution figure, 'p50 / p99'."""
    return " / ".join(_f(d.get(k), nd) for k in keys)


def common_rows(m: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures both engines give (sim/report_type.SimReport), each under one name."""
    adopt, skipped = m["adoptions"], m["duplicates_avoided"].get("proposals_skipped_by_reason") or {}
    per_node = m.get("experiments_per_node") or {}
    spread = (f"{min(per_node.values(), default=0)} / {max(per_node.values(), default=0)}" if per_node else
              f"p50 {_f(m['experiments_per_node_summary'].get('p50'), 0)} / max {_f(m['experiments_per_node_summary'].get('max'), 0)}")
    return [
        ("experiments completed (swarm, verifications excluded)", m["experiments_completed"]),
        (f"  of which finished within the {m['window_s']:.0f} s window", m["experiments_completed_in_window"]),
        ("time in runs: experiments / verifications / baselines (node-seconds)",
         " / ".join(str(m["run_seconds_by_kind"].get(k, 0)) for k in ("experiment", "verification", "baseline"))),
        ("idle gap between a node's runs p50 / p90 / max (s)", _p(m["gap_between_runs_s"], "p50", "p90", "max", nd=2)),
        ("experiments by status", ", ".join(f"{k} {v}" for k, v in sorted(m["experiments_by_status"].items()))),
        ("combinations of wins run (kept); of which stacks of several", f"{m['combinations'].get('run', 0)} "
         f"({m['combinations'].get('by_status', {}).get('kept', 0)}); "
         f"{m['combinations'].get('stacks', {}).get('run', 0)} ({m['combinations'].get('stacks', {}).get('kept', 0)})"),
        ("experiments per node (min / max)", spread),
        ("runs aborted (stops, kills, yields)", m["experiments_aborted"]),
        ("duplicates wasted (of which checks of unproven negative reports)",
         f"{m['duplicates_wasted']} ({m['duplicates_wasted_pct']:.2f}%) ({m.get('duplicates_checking_negatives', 0)})"),
        ("duplicates avoided in flight (yielded to an earlier claim)", m["duplicates_avoided"]["yielded_in_flight"]),
        ("proposals skipped before running (id known / claimed elsewhere)",
         f"{skipped.get('known_in_ledger', 0)} / {skipped.get('claimed_elsewhere', 0)}" if skipped else "-"),
        ("verifications confirmed / refuted", f"{m['verifications']['confirmed']} / {m['verifications']['refuted']}"),
        ("  of liars' claims: confirmed / refuted", f"{m['verifications']['of_liars']['confirmed']} / "
                                                    f"{m['verifications']['of_liars']['refuted']}"),
        ("adoptions (with re-run / without)", f"{adopt['count']} ({adopt['with_rerun']} / {adopt['without_rerun']})"),
        ("adoption delay from announcement p50 / p99 (s)", _p(adopt["delay_from_announcement_s"], "p50", "p99")),
        ("adoption delay from receipt p50 / p99 (s)", _p(adopt["delay_from_receipt_s"], "p50", "p99")),
        ("gossip latency p50 / p99 (s)", f"{_p(m['gossip_latency_s'], 'p50', 'p99', nd=3)} (n={m['gossip_latency_s']['n']})"),
        ("results delivered to every other node", f"{_f(m['propagation']['results_reaching_every_node_pct'], 1)}% "
                                                  f"(pairs {_f(m['propagation']['delivered_pairs_pct'], 1)}%)"),
        ("swarm best reaches val_bpb (s)", ", ".join(f"{k}: {_f(v, 1)}" for k, v in m["time_to_target_s"].items())),
        ("crashed nodes", m["crashed_nodes"]),
    ]


def _process_rows(m: dict[str, Any]) -> list[tuple[str, Any]]:
    """What only real daemons show: their sockets, processes and stops."""
    return [
        ("connected peers per node at the stop p50 / max", _p(m["peers_at_stop"], "p50", "max", nd=0)),
        ("TCP bytes sent per experiment", _f(m["bytes_sent_per_experiment"])),
        ("CPU seconds, all nodes", m["cpu_s_total"]),
        (f"nodes that did not stop within {m.get('stop_grace_s', 30):.0f} s of SIGTERM (then SIGKILLed)",
         len(m["stop_timeouts"])),
    ]


def _des_rows(m: dict[str, Any]) -> list[tuple[str, Any]]:
    """What only the model shows: the load it computes for every node."""
    load = m["load"]
    return [
        ("verification run time / experiment run time", load["verification_overhead"]),
        ("per node: inbound messages/s (gossip + DHT)", f"{load['inbound_messages_per_node_s']} "
                                                         f"({load['inbound_gossip_messages_per_node_s']} + {load['dht_rpcs_per_node_s']})"),
        ("per node: inbound bytes/s", load["inbound_bytes_per_node_s"]),
        ("per node: CPU cores mean / max", f"{load['cpu_cores_per_node']['mean']} / {load['cpu_cores_per_node']['max']}"),
        ("CPU utilisation mean / p99 / max", f"{load['utilisation']['mean']} / {load['utilisation']['p99']} / "
                                              f"{load['utilisation']['max']}"),
        ("messages by kind", ", ".join(f"{k} {v}" for k, v in sorted(load["messages_by_kind"].items()))),
    ]


def _process_tail(m: dict[str, Any]) -> list[str]:
    out = ["## Per node\n\n| node | experiments | final baseline | val_bpb | CPU s | peak RSS MiB | TCP sent | restarts |",
           "|---|---|---|---|---|---|---|---|"]
    fb = {v["name"]: v for v in m["final_baselines"].values()}
    for name in sorted(m["processes"]):
        p = m["processes"][name]
        f = fb.get(name) or (m.get("solo") or {}).get("final_baseline") or {}
        label = name + (" (liar)" if name in m["liar_nodes"] else "")
        out.append(f"| {label} | {m['experiments_per_node'].get(name, (m.get('solo') or {}).get('experiments_completed', '-'))} "
                   f"| {str(f.get('commit'))[:10]} | {_f(f.get('val_bpb'), 4)} | {p['cpu_s']} | {p['peak_rss_mb']} | "
                   f"{p['tcp_bytes_sent']} | {p['restarts']} |")
    dc = m.get("daemon_counters_at_stop") or {}
    if dc.get("nodes_answering"):
        out.append(f"\n## Daemon counters at the stop (sum over {dc['nodes_answering']} nodes that answered; since each "
                   "node's last start)\n")
        for group in ("net", "net_rejected", "intake", "swarm", "dedup"):
            if dc.get(group):
                out.append(f"- {group}: " + ", ".join(f"{k} {v}" for k, v in sorted(dc[group].items())))
    out += [
        "\n## How these are measured\n",
        "- Experiments: every swarm node's local runs of kind `experiment` that finished kept, discarded or crash "
        "(verifications and aborted runs excluded), read from each node's ledger after the stop.",
        "- Duplicates wasted: runs of an experiment id beyond the first, across all nodes. " + m["duplicates_avoided"]["note"],
        "- Adoption delay: `adopted_at` of a baseline taken from a peer minus that result's receipt timestamp "
        "(announcement) or the adopter's `received_at` (receipt). Adoption happens between experiments, so the "
        "delay includes finishing the experiment in flight and any verification re-run.",
        f"- Gossip latency: {m['gossip_latency_s']['note']}.",
        f"- Bytes: {m['bytes']['method']}.",
        "- CPU seconds: utime+stime (+ waited children) from /proc/<pid>/stat; peak RSS: VmHWM from /proc/<pid>/status; "
        "sampled every 2 s and just before the stop, summed (CPU) or maxed (RSS) over a restarted node's processes.",
        "- Timings come from a shared 2-core machine where other work may run at the same time: they are noisy.",
    ]
    return out


def _des_tail(m: dict[str, Any]) -> list[str]:
    return [
        "## How these are modelled\n",
        "- Decisions: the daemon's own state machines (research/loop.py, swarm.py, claims.py, ownership.py, mutate.py, "
        "combine.py, turns.py) for every virtual node; runs cost `cost_s` and score the surrogate objective.",
        "- Delivery: hops ~ log_D(N) per node, each hop a log-normal latency plus the CPU queue (M/M/1 at the daemon's "
        "utilisation, plus any backlog while it is over 1); results wait for the sender's next claim (bundles).",
        "- Load: every node receives `amplification` copies of each gossip publish and serves its share of DHT "
        "requests; CPU is `cpu_per_publish_s` per publish and `cpu_per_dht_rpc_s` per DHT request, plus idle.",
        f"- Gossip latency: {m['gossip_latency_s']['note']}.",
        f"- Duplicates wasted: runs of an experiment id beyond the first, across all nodes; {m['duplicates_avoided']['note']}.",
    ]
