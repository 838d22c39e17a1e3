"""The simulation's figures, computed after the run from every node's ledger and the launcher's records.

All timestamps are the same machine's wall clock (every node runs here), so cross-ledger differences
(gossip latency, adoption delays) are meaningful to the scheduler's resolution.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.research import negatives
from p2p_research.sim.fabricated import on_fabricated, told_the_truth
from p2p_research.sim.launcher import STOP_GRACE_S
from p2p_research.sim.probe import swarm_stats as probe_swarm_stats
from p2p_research.sim.report_type import TARGETS, SimReport
from p2p_research.store import queries
from p2p_research.store.status import COMPLETED


def skipped_as_known(dedup: dict[str, int]) -> int:
    """Proposals dropped before running because the id was in the node's ledger or claimed elsewhere
    (not research/negatives.py's counters: those are candidates passed over or checked)."""
    return sum(v for k, v in dedup.items() if k not in negatives.COUNTERS)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, linear interpolation); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, Any]:
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"n": len(values), "p50": r(pct(values, 50)), "p90": r(pct(values, 90)), "p99": r(pct(values, 99)),
            "max": r(max(values)) if values else None, "mean": r(sum(values) / len(values)) if values else None}


@dataclass
class NodeData:
    name: str
    peer_id: str
    role: str
    liar: bool
    local: list[dict] = field(default_factory=list)
    peer_runs: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)


def read_ledger(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    if not path.exists():
        return [], [], []
    with queries.read_only(path) as db:
        runs, bases = queries.runs_and_baselines(db)
    return [r for r in runs if r["origin"] == "local"], [r for r in runs if r["origin"] == "peer"], bases


def best_over_time(baselines: list[dict], t0: float) -> list[tuple[float, float]]:
    """[(seconds since t0, best val_bpb so far)] from a node's baseline adoptions, one point per change."""
    out: list[tuple[float, float]] = []
    best = math.inf
    for b in baselines:
        v = b["val_bpb"]
        if v is None or not math.isfinite(v) or v >= best:
            continue
        best = v
        out.append((b["adopted_at"] - t0, v))
    return out


def swarm_best_over_time(series: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    events = sorted(p for s in series for p in s)
    out: list[tuple[float, float]] = []
    best = math.inf
    for t, v in events:
        if v < best:
            best = v
            out.append((t, v))
    return out


def solo_comparison(solo_series: list[tuple[float, float]], swarm_series: list[tuple[float, float]]) -> dict[str, Any]:
    """When the solo node and the swarm first reached the solo node's final value, and the ratio ({} when
    the solo node has no value)."""
    if not solo_series:
        return {}
    target = solo_series[-1][1]
    t_solo = first_time_at_or_below(solo_series, target)
    t_swarm = first_time_at_or_below(swarm_series, target)
    return {"final_val_bpb": target, "solo_reached_at_s": _r(t_solo), "swarm_reached_at_s": _r(t_swarm),
            "swarm_sooner_by_s": _r(t_solo - t_swarm) if t_solo is not None and t_swarm is not None else None,
            "speedup": _r(t_solo / t_swarm) if t_solo and t_swarm else None,
            "swarm_final_val_bpb": swarm_series[-1][1] if swarm_series else None}


def first_time_at_or_below(series: list[tuple[float, float]], value: float) -> float | None:
    for t, v in series:
        if v <= value + 1e-12:
            return t
    return None


def times_to_targets(swarm_series: list[tuple[float, float]]) -> dict[str, float | None]:
    """When the swarm's best first reached each of report_type.TARGETS (seconds from its t0; None: never)."""
    out: dict[str, float | None] = {}
    for v in TARGETS:
        t = first_time_at_or_below(swarm_series, v)
        out[f"{v:.2f}"] = None if t is None else round(t, 1)
    return out


def _told_the_truth(run: dict, margin: float | None) -> bool:
    """A liar's run whose announced value is its measured one within the tolerance (sim/fabricated.py;
    the engine keeps what it measured in the run's metrics; a run without it counts as a lie)."""
    try:
        measured = json.loads(run.get("metrics") or "{}").get("liar_measured")
    except (ValueError, AttributeError):
        return False
    return told_the_truth(run["val_bpb"], measured, margin)


def collect(sim: Any) -> dict[str, Any]:
    """Every figure of report.json (plus `series` for the plots) from a finished `Simulation`."""
    o = sim.opts
    data: dict[str, NodeData] = {}
    for n in sim.nodes:
        d = NodeData(n.name, n.peer_id, n.role, n.liar)
        d.local, d.peer_runs, d.baselines = read_ledger(n.home / "ledger.sqlite")
        data[n.name] = d
    swarm = [n for n in sim.nodes if n.role == "swarm"]
    honest = [n for n in swarm if not n.liar]
    liar_ids = {n.peer_id for n in swarm if n.liar}
    by_id = {n.peer_id: n for n in sim.nodes}
    swarm_t0 = min((n.incarnations[0].started_at for n in swarm if n.incarnations), default=sim.t_start)

    def completed(d: NodeData) -> list[dict]:
        return [r for r in d.local if r["kind"] == "experiment" and r["status"] in COMPLETED]

    # --- experiments and duplicates -------------------------------------------------------------
    w0 = sim.window_start() or sim.t_start
    w1 = sim.experiments_ended_at or sim.t_end
    per_node = {n.name: len(completed(data[n.name])) for n in swarm}
    in_window = sum(1 for n in swarm for r in completed(data[n.name]) if w0 <= (r["finished_at"] or 0) <= w1)
    gaps: list[float] = []
    run_s = {"experiment": 0.0, "verification": 0.0, "baseline": 0.0}
    for n in swarm:
        rs = [r for r in data[n.name].local if r["started_at"]]
        for a, b in zip(rs, rs[1:], strict=False):
            if a["finished_at"] and b["started_at"] and a["status"] != "aborted":
                gaps.append(b["started_at"] - a["finished_at"])
        for r in rs:
            if r["finished_at"] and r["kind"] in run_s:
                run_s[r["kind"]] += r["finished_at"] - r["started_at"]
    by_status: dict[str, int] = {}
    runs_of: dict[str, list[str]] = {}
    for n in swarm:
        for r in completed(data[n.name]):
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
            runs_of.setdefault(r["exp_id"], []).append(n.name)
    total = sum(per_node.values())
    combos: dict[str, int] = {}  # combinations of wins (research/io/combine.py), by status
    stacks: dict[str, int] = {}  # of which stacks of several wins ("combine a, b: ...")
    for n in swarm:
        for r in completed(data[n.name]):
            description = r.get("description") or ""
            if description.startswith("combine "):
                combos[r["status"]] = combos.get(r["status"], 0) + 1
                if ", " in description.split(":", 1)[0]:
                    stacks[r["status"]] = stacks.get(r["status"], 0) + 1
    wasted = sum(len(v) - 1 for v in runs_of.values())
    dup_examples = {k[:12]: v for k, v in runs_of.items() if len(v) > 1}
    yielded = sum(1 for n in swarm for r in data[n.name].local
                  if r["status"] == "aborted" and (r["reason"] or "").startswith("yielded"))
    aborted = sum(1 for n in swarm for r in data[n.name].local if r["status"] == "aborted")
    # --- verifications ----------------------------------------------------------------------------
    ver = {"confirmed": 0, "refuted": 0, "other": 0, "of_liars": {"confirmed": 0, "refuted": 0},
           "of_honest": {"confirmed": 0, "refuted": 0}}
    exp_owner: dict[str, str] = {}
    for n in swarm:
        for r in completed(data[n.name]):
            exp_owner.setdefault(r["exp_id"], n.peer_id)
    for n in swarm:
        for r in data[n.name].local:
            if r["kind"] != "verification":
                continue
            st = r["status"] if r["status"] in ("confirmed", "refuted") else "other"
            ver[st] += 1
            owner = exp_owner.get(r["exp_id"], "")
            if st != "other":
                ver["of_liars" if owner in liar_ids else "of_honest"][st] += 1
    # --- adoptions ------------------------------------------------------------------------------
    adoptions: list[dict[str, Any]] = []
    for n in swarm:
        d = data[n.name]
        received = {(r["exp_id"], r["peer"]): r for r in d.peer_runs if r["kind"] == "experiment"}
        for b in d.baselines:
            if not b["source_peer"] or b["source_peer"] == n.peer_id:
                continue
            r = received.get((b["exp_id"], b["source_peer"]))
            src = by_id.get(b["source_peer"])
            adoptions.append({
                "node": n.name, "from": src.name if src else b["source_peer"][:16], "exp_id": b["exp_id"],
                "val_bpb": b["val_bpb"], "rerun": (b["reason"] or "").startswith("confirmed"),
                "from_liar": b["source_peer"] in liar_ids,
                "delay_from_announcement_s": (b["adopted_at"] - r["finished_at"]) if r and r["finished_at"] else None,
                "delay_from_receipt_s": (b["adopted_at"] - r["received_at"]) if r and r["received_at"] else None})
    ann = [a["delay_from_announcement_s"] for a in adoptions if a["delay_from_announcement_s"] is not None]
    rec = [a["delay_from_receipt_s"] for a in adoptions if a["delay_from_receipt_s"] is not None]
    # --- gossip latency and propagation -----------------------------------------------------------
    def was_up(node: Any, t: float) -> bool:
        return any(i.ready_at and i.ready_at <= t and (i.ended_at is None or t <= i.ended_at)
                   for i in node.incarnations)

    live_lat, catchup = [], 0
    for n in swarm:
        for r in data[n.name].peer_runs:
            if r["kind"] not in ("experiment", "baseline") or not r["finished_at"] or not r["received_at"]:
                continue
            if was_up(n, r["finished_at"]):
                live_lat.append(r["received_at"] - r["finished_at"])
            else:
                catchup += 1
    have = {n.name: {(r["exp_id"], r["peer"]) for r in data[n.name].peer_runs if r["kind"] == "experiment"}
            for n in swarm}
    pairs = delivered = fully = results = 0
    for n in swarm:
        for r in completed(data[n.name]):
            results += 1
            others = [m for m in swarm if m is not n]
            got = sum((r["exp_id"], n.peer_id) in have[m.name] for m in others)
            pairs += len(others)
            delivered += got
            fully += got == len(others)
    # --- processes ------------------------------------------------------------------------------
    procs: dict[str, dict[str, Any]] = {}
    total_sent = total_recv = 0
    for n in sim.nodes:
        sent = sum(v[0] for v in n.tcp.values())
        recv = sum(v[1] for v in n.tcp.values())
        if n.role == "swarm":
            total_sent += sent
            total_recv += recv
        procs[n.name] = {"cpu_s": round(sum(i.cpu_s for i in n.incarnations), 2),
                         "peak_rss_mb": round(max((i.peak_rss_mb for i in n.incarnations), default=0.0), 1),
                         "tcp_bytes_sent": sent, "tcp_bytes_received": recv, "restarts": len(n.incarnations) - 1,
                         "startup_s": round(n.incarnations[0].ready_at - n.incarnations[0].started_at, 2)
                         if n.incarnations and n.incarnations[0].ready_at else None,
                         "exit_codes": [i.returncode for i in n.incarnations]}
    crashed = [n for n in sim.nodes if n.crashed]
    # --- final baselines and convergence -----------------------------------------------------------
    final: dict[str, dict[str, Any]] = {}
    for n in swarm:
        b = data[n.name].baselines[-1] if data[n.name].baselines else None
        final[n.peer_id] = {"name": n.name, "liar": n.liar, "commit": b["commit_id"] if b else None,
                            "val_bpb": b["val_bpb"] if b else None,
                            "source": (by_id[b["source_peer"]].name if b and b["source_peer"] in by_id else None)}
    honest_final = [final[n.peer_id] for n in honest]
    commits: dict[str, int] = {}
    for f in honest_final:
        commits[f["commit"]] = commits.get(f["commit"], 0) + 1
    best_final = min((f for f in honest_final if f["val_bpb"] is not None), key=lambda f: f["val_bpb"], default=None)
    # a liar's kept result whose announced value is not what its run measured, and honest nodes whose
    # baseline rests on one up to the nearest result an honest re-run confirmed (sim/fabricated.py)
    fabricated = {r["exp_id"] for n in swarm if n.liar for r in completed(data[n.name])
                  if r["status"] == "kept" and not _told_the_truth(r, o.margin)}
    rows = [r for d in data.values() for r in (*d.local, *d.peer_runs)]
    parent_of = {r["commit_id"]: r["parent"] for r in rows if r["parent"]}
    exp_of = {r["commit_id"]: r["exp_id"] for r in rows}
    confirmed = {r["exp_id"] for n in honest for r in data[n.name].local
                 if r["kind"] == "verification" and r["status"] == "confirmed"}
    honest_on_fabricated = [f["name"] for f in honest_final
                            if on_fabricated(f["commit"], parent_of, exp_of, fabricated, confirmed)]
    # --- churn: identity, nothing acknowledged lost, resumed ---------------------------------------
    churn = []
    for c in sim.churn_plan:
        n = sim.node(c["node"])
        final_runs = {(r["run_id"], r["exp_id"], r["kind"], r["status"]) for r in data[n.name].local}
        before = [tuple(x) for snap in sim.acked_before_kill.get(n.name, []) for x in snap]
        lost = [x for x in before if tuple(x) not in final_runs]
        ids = {i.peer_id for i in n.incarnations if i.peer_id}
        after = [r for r in completed(data[n.name]) if c.get("restarted_at") and (r["finished_at"] or 0) > c["restarted_at"]]
        churn.append({"node": n.name, "killed_at_s": round(c.get("killed_at", 0) - sim.t_start, 1) if c["done"] else None,
                      "restarted": c["restarted"], "peer_ids": sorted(ids), "same_peer_id": ids == {n.peer_id},
                      "acked_runs_before_kill": len(before), "acked_runs_lost": len(lost),
                      "experiments_after_restart": len(after)})
    # --- best over time ---------------------------------------------------------------------------
    series = {n.name: best_over_time(data[n.name].baselines, swarm_t0) for n in swarm}
    swarm_series = swarm_best_over_time([series[n.name] for n in honest])
    solo_info: dict[str, Any] | None = None
    solo_series: list[tuple[float, float]] = []
    solo = next((n for n in sim.nodes if n.role == "solo"), None)
    if solo is not None and solo.incarnations:
        s0 = solo.incarnations[0].started_at
        solo_series = best_over_time(data[solo.name].baselines, s0)
        sb = data[solo.name].baselines[-1] if data[solo.name].baselines else None
        solo_info = {"peer_id": solo.peer_id, "experiments_completed": len(completed(data[solo.name])),
                     "final_baseline": {"commit": sb["commit_id"] if sb else None, "val_bpb": sb["val_bpb"] if sb else None}}
        solo_info.update(solo_comparison(solo_series, swarm_series))
    # --- the daemons' own counters at the stop (since their last start) ----------------------------
    counters: dict[str, dict[str, Any]] = {}
    for st in sim.final_status.values():
        net = st.get("net") or {}
        for group, d in (("net", {k: v for k, v in net.items() if not isinstance(v, dict)}),
                         ("net_rejected", net.get("rejected") or {}), ("intake", st.get("intake") or {}),
                         ("swarm", probe_swarm_stats(st)), ("dedup", st.get("dedup") or {})):
            g = counters.setdefault(group, {})
            for k, v in d.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    g[k] = g.get(k, 0) + v
    peers_at_stop = [st.get("peers_connected", 0) for name, st in sim.final_status.items() if name != "solo"]  # noqa: PERF102
    duration = sim.t_end - sim.t_start
    return SimReport(
        engine="process",
        nodes=len(swarm),
        solo_node=solo is not None,
        duration_s=round(duration, 1),
        requested_duration_s=o.duration_s,
        duration_counted_from=("when every node was up (start-up excluded)" if o.count_from == "all-up"
                               else "the first node process start (start-up included)"),
        startup_s=round(sim.all_up_at - sim.t_start, 1) if sim.all_up_at else None,
        interrupted=sim.interrupted or None,
        objective=o.objective if o.objective != "surrogate" or o.surrogate == "default" else f"surrogate ({o.surrogate})",
        cost_s=o.cost_s if o.objective == "surrogate" else None,
        fanout=o.fanout, churn=o.churn, liars=o.liars, seed=o.seed, verification=o.verification, announce=o.announce,
        experiments_completed=total,
        experiments_completed_in_window=in_window,
        window_s=round(w1 - w0, 1),
        settle={"requested_s": o.settle_s, "note": sim.settle_note or None,
                "settle_s": round(sim.t_end - sim.experiments_ended_at, 1) if sim.experiments_ended_at else None},
        gap_between_runs_s={**summary(gaps), "note": "a node's idle time between the end of one local run and "
                            "the start of its next: announcing, verification decisions, proposing (dedup checks)"},
        run_seconds_by_kind={k: round(v, 1) for k, v in run_s.items()},
        experiments_completed_honest=sum(per_node[n.name] for n in honest),
        experiments_per_node=per_node,
        experiments_per_node_summary=summary([float(v) for v in per_node.values()]),
        experiments_by_status=by_status,
        combinations={"run": sum(combos.values()), "by_status": combos,
                      "stacks": {"run": sum(stacks.values()), "kept": stacks.get("kept", 0)}},
        experiments_aborted=aborted,
        duplicates_wasted=wasted,
        duplicates_wasted_pct=round(100 * wasted / total, 3) if total else 0.0,
        duplicates_checking_negatives=min(wasted, int((counters.get("dedup") or {}).get("negatives_checked", 0))),
        duplicates_avoided={
            "yielded_in_flight": yielded,
            "yield_refused": int((counters.get("swarm") or {}).get("yield_refused", 0)),
            "proposals_skipped_as_known": (skipped_as_known(counters["dedup"]) if counters.get("dedup") else None),
            "proposals_skipped_by_reason": counters.get("dedup") or None,
            "note": "yielded_in_flight: runs a node stopped because another node's earlier claim on the same "
                    "experiment won. proposals_skipped_as_known: proposals dropped before running because the id "
                    "was already in the node's ledger (run there or announced by a peer) or claimed by another "
                    "node (proposals_skipped_by_reason also counts the negative reports passed over and "
                    "checked); from the daemons' `status` just before the stop (a restarted node counts since "
                    "its restart)."},
        verifications=ver,
        adoptions={"count": len(adoptions), "with_rerun": sum(a["rerun"] for a in adoptions),
                   "without_rerun": sum(not a["rerun"] for a in adoptions),
                   "from_liars": sum(a["from_liar"] for a in adoptions),
                   "from_liars_without_rerun": sum(a["from_liar"] and not a["rerun"] for a in adoptions),
                   "delay_from_announcement_s": summary(ann), "delay_from_receipt_s": summary(rec)},
        gossip_latency_s={**summary(live_lat), "excluded_catch_up": catchup,
                          "note": "receiver's received_at minus the sender's receipt ts, for results the "
                                  "receiver got while it was up (results a restarted node caught up on are excluded)"},
        propagation={"results": results, "delivered_pairs_pct": round(100 * delivered / pairs, 2) if pairs else None,
                     "results_reaching_every_node_pct": round(100 * fully / results, 2) if results else None},
        crashed_nodes=len(crashed),
        stop_timeouts=sorted(e["node"] for e in sim.events if e["kind"] == "stop_timeout"),
        crashes=[{"node": n.name, "info": n.crash_info} for n in crashed],
        churn_events=churn,
        liar_nodes=[n.name for n in swarm if n.liar],
        honest_on_fabricated_baseline=honest_on_fabricated,
        convergence={"honest_nodes": len(honest), "distinct_final_commits": len(commits),
                     "on_best_commit": commits.get(best_final["commit"], 0) if best_final else 0,
                     "best_commit": best_final["commit"] if best_final else None,
                     "best_val_bpb": best_final["val_bpb"] if best_final else None,
                     "all_on_same_baseline": len(commits) == 1},
        final_baselines=final,
        solo=solo_info,
        time_to_target_s=times_to_targets(swarm_series),
        series={"t0": "first swarm node start", "swarm": swarm_series, "solo": solo_series, "nodes": series,
                "adoption_delays_s": ann},
        engine_figures={
            "duplicate_examples": dict(list(dup_examples.items())[:10]),
            "bytes_sent_per_experiment": round(total_sent / total) if total else None,
            "bytes": {"tcp_sent_total": total_sent, "tcp_received_total": total_recv,
                      "method": "kernel per-socket tcp_info counters (bytes_sent/bytes_received) of each daemon's "
                                "established TCP sockets, sampled with `ss -tinp` every 5 s and at stop; a lower "
                                "bound (traffic on a socket closed between two samples is missed)"},
            "daemon_counters_at_stop": {"nodes_answering": len(sim.final_status), **counters},
            "peers_at_stop": summary([float(p) for p in peers_at_stop]),
            "processes": procs,
            "cpu_s_total": round(sum(p["cpu_s"] for k, p in procs.items()), 1),
            "stop_grace_s": STOP_GRACE_S,
            "slow_start_nodes": sorted(sim.slow_start),
            "events": [{**e, "t": round(e["t"] - sim.t_start, 2)} for e in sim.events],
        },
    ).to_json()


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
