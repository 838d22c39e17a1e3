"""PNG figures of a simulation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _step(series: list[tuple[float, float]], t_end: float) -> tuple[list[float], list[float]]:
    xs, ys = [p[0] for p in series], [p[1] for p in series]
    if series:
        xs.append(max(t_end, xs[-1]))
        ys.append(ys[-1])
    return xs, ys


def write_plots(m: dict[str, Any], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    s = m["series"]
    t_end = m["duration_s"]
    files: dict[str, str] = {}
    liars = set(m.get("liar_nodes") or [])

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, ser in sorted(s["nodes"].items()):
        if not ser:
            continue
        xs, ys = _step(ser, t_end)
        ax.step(xs, ys, where="post", lw=0.7, alpha=0.9 if name in liars else 0.35,
                color="tab:red" if name in liars else "tab:gray", ls="--" if name in liars else "-")
    if s["swarm"]:
        xs, ys = _step(s["swarm"], t_end)
        ax.step(xs, ys, where="post", lw=2.2, color="tab:blue", label=f"swarm best ({m['nodes']} nodes)")
    if s["solo"]:
        xs, ys = _step(s["solo"], t_end)
        ax.step(xs, ys, where="post", lw=2.2, color="tab:orange", label="solo node")
    solo = m.get("solo") or {}
    if solo.get("final_val_bpb") is not None:
        ax.axhline(solo["final_val_bpb"], color="tab:orange", lw=0.8, ls=":")
        if solo.get("swarm_reached_at_s") is not None:
            ax.axvline(solo["swarm_reached_at_s"], color="tab:blue", lw=0.8, ls=":")
        if solo.get("solo_reached_at_s") is not None:
            ax.axvline(solo["solo_reached_at_s"], color="tab:orange", lw=0.8, ls=":")
    ax.plot([], [], color="tab:gray", lw=0.7, label="each node (baseline)")
    if liars:
        ax.plot([], [], color="tab:red", lw=0.7, ls="--", label="liar nodes (fabricated claims)")
    ax.set_xlabel("seconds since the first node started")
    ax.set_ylabel("best val_bpb (lower is better)")
    ax.set_title(f"Best val_bpb over time ({m['objective']} objective)")
    ys_all = [v for ser in [s["swarm"], s["solo"]] for _, v in ser]
    if ys_all:
        lo, hi = min(ys_all), max(ys_all)
        pad = (hi - lo) * 0.08 + 1e-3
        ax.set_ylim(lo - pad, hi + pad)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "best_over_time.png", dpi=110)
    plt.close(fig)
    files["best_over_time"] = "best_over_time.png"

    per = m["experiments_per_node"]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    names = sorted(per)
    ax.bar(range(len(names)), [per[n] for n in names],
           color=["tab:red" if n in liars else "tab:blue" for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("experiments completed")
    ax.set_title(f"Experiments per node (total {m['experiments_completed']}, solo node "
                 f"{(m.get('solo') or {}).get('experiments_completed', '-')})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "experiments_per_node.png", dpi=110)
    plt.close(fig)
    files["experiments_per_node"] = "experiments_per_node.png"

    delays = s.get("adoption_delays_s") or []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if delays:
        ax.hist(delays, bins=min(40, max(5, len(delays) // 3)), color="tab:green")
        a = m["adoptions"]["delay_from_announcement_s"]
        ax.axvline(a["p50"], color="k", ls="--", lw=1, label=f"p50 {a['p50']:.1f} s")
        ax.axvline(a["p99"], color="k", ls=":", lw=1, label=f"p99 {a['p99']:.1f} s")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no adoptions", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds from a result's announcement to its adoption")
    ax.set_ylabel("adoptions")
    ax.set_title(f"Adoption delay ({len(delays)} adoptions)")
    fig.tight_layout()
    fig.savefig(folder / "adoption_delay.png", dpi=110)
    plt.close(fig)
    files["adoption_delay"] = "adoption_delay.png"
    return files
