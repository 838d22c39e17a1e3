"""
Reads a results.tsv the way karpathy/autoresearch's analysis.ipynb does.

`analyze()` mirrors the notebook's code cells one by one, in order (load and
coerce, outcome counts and keep rate, kept list, the progress plot, summary
statistics, top hits by delta), using the same pandas and matplotlib steps, so
that a test can check that a node's results.tsv reads as autoresearch's does:
if the notebook would choke on a file (a missing column, no kept row, an
unparsable status), so does this. The code is written anew; only the steps
follow the notebook. The plot is drawn with matplotlib's Agg backend and saved
to `png_path` instead of progress.png; `plt.show()` has no counterpart.
Requires pandas and matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def analyze(results_tsv: Path, png_path: Path) -> dict:
    """Run the notebook's cells on results_tsv; write the plot to png_path.

    Returns total, counts (by upper-cased status), keep_rate (None when nothing
    was decided), baseline_bpb (first row, as the summary cell reads it),
    plot_baseline_bpb (first non-crash row, as the plot cell reads it),
    best_bpb, best_description, kept_descriptions, running_min, hits
    (description and delta, biggest first), png, and log (the printed text).
    """
    lines: list[str] = []

    def out(text: str = "") -> None:
        lines.append(text)
        print(text)

    # Cell 1: load the TSV (5 columns: commit, val_bpb, memory_gb, status, description)
    df = pd.read_csv(results_tsv, sep="\t")
    df["val_bpb"] = pd.to_numeric(df["val_bpb"], errors="coerce")
    df["memory_gb"] = pd.to_numeric(df["memory_gb"], errors="coerce")
    df["status"] = df["status"].str.strip().str.upper()
    out(f"Total experiments: {len(df)}")
    out(f"Columns: {list(df.columns)}")
    out(df.head(10).to_string())

    # Cell 2: outcome counts and keep rate
    counts = df["status"].value_counts()
    out("Experiment outcomes:")
    out(counts.to_string())
    n_keep = counts.get("KEEP", 0)
    n_discard = counts.get("DISCARD", 0)
    n_decided = n_keep + n_discard
    keep_rate = None
    if n_decided > 0:
        keep_rate = float(n_keep / n_decided)
        out(f"\nKeep rate: {n_keep}/{n_decided} = {keep_rate:.1%}")

    # Cell 3: every kept experiment
    kept = df[df["status"] == "KEEP"].copy()
    out(f"KEPT experiments ({len(kept)} total):\n")
    for i, row in kept.iterrows():
        out(f"  #{i:3d}  bpb={row['val_bpb']:.6f}  mem={row['memory_gb']:.1f}GB  {row['description']}")

    # Cell 4: val_bpb over time
    fig = Figure(figsize=(16, 8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()

    valid = df[df["status"] != "CRASH"].copy().reset_index(drop=True)
    plot_baseline_bpb = valid.loc[0, "val_bpb"]
    # only the region at or below the baseline is drawn
    below = valid[valid["val_bpb"] <= plot_baseline_bpb + 0.0005]

    disc = below[below["status"] == "DISCARD"]
    ax.scatter(disc.index, disc["val_bpb"], c="#cccccc", s=12, alpha=0.5, zorder=2, label="Discarded")

    kept_v = below[below["status"] == "KEEP"]
    ax.scatter(kept_v.index, kept_v["val_bpb"], c="#2ecc71", s=50, zorder=4, label="Kept",
               edgecolors="black", linewidths=0.5)

    kept_mask = valid["status"] == "KEEP"
    kept_idx = valid.index[kept_mask]
    kept_bpb = valid.loc[kept_mask, "val_bpb"]
    running_min = kept_bpb.cummin()
    ax.step(kept_idx, running_min, where="post", color="#27ae60", linewidth=2, alpha=0.7,
            zorder=3, label="Running best")

    for idx, bpb in zip(kept_idx, kept_bpb, strict=True):
        label = str(valid.loc[idx, "description"]).strip()
        if len(label) > 45:
            label = label[:42] + "..."
        ax.annotate(label, (idx, bpb), textcoords="offset points", xytext=(6, 6), fontsize=8.0,
                    color="#1a7a3a", alpha=0.9, rotation=30, ha="left", va="bottom")

    n_total = len(df)
    n_kept = len(df[df["status"] == "KEEP"])
    ax.set_xlabel("Experiment #", fontsize=12)
    ax.set_ylabel("Validation BPB (lower is better)", fontsize=12)
    ax.set_title(f"Autoresearch Progress: {n_total} Experiments, {n_kept} Kept Improvements", fontsize=14)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(True, alpha=0.2)

    # y range: a margin below the best and above the baseline
    plot_best_bpb = kept_bpb.min()
    margin = (plot_baseline_bpb - plot_best_bpb) * 0.15
    ax.set_ylim(plot_best_bpb - margin, plot_baseline_bpb + margin)

    png_path = Path(png_path)
    fig.tight_layout()
    fig.savefig(png_path, dpi=150, bbox_inches="tight")
    out(f"Saved to {png_path}")

    # Cell 5: summary statistics
    kept = df[df["status"] == "KEEP"].copy()
    baseline_bpb = df.iloc[0]["val_bpb"]
    best_bpb = kept["val_bpb"].min()
    best_row = kept.loc[kept["val_bpb"].idxmin()]
    out(f"Baseline val_bpb:  {baseline_bpb:.6f}")
    out(f"Best val_bpb:      {best_bpb:.6f}")
    out(f"Total improvement: {baseline_bpb - best_bpb:.6f} "
        f"({(baseline_bpb - best_bpb) / baseline_bpb * 100:.2f}%)")
    out(f"Best experiment:   {best_row['description']}")
    out()
    out("Cumulative effort per improvement:")
    kept_sorted = kept.reset_index()
    for _, row in kept_sorted.iterrows():
        out(f"  Experiment #{row['index']:3d}: bpb={row['val_bpb']:.6f}  {str(row['description']).strip()}")

    # Cell 6: top hits, each kept row's delta against the kept row before it
    kept = df[df["status"] == "KEEP"].copy()
    kept["prev_bpb"] = kept["val_bpb"].shift(1)
    kept["delta"] = kept["prev_bpb"] - kept["val_bpb"]
    hits = kept.iloc[1:].copy().sort_values("delta", ascending=False)
    out(f"{'Rank':>4}  {'Delta':>8}  {'BPB':>10}  Description")
    out("-" * 80)
    for rank, (_, row) in enumerate(hits.iterrows(), 1):
        out(f"{rank:4d}  {row['delta']:+.6f}  {row['val_bpb']:.6f}  {row['description']}")
    out(f"\n{'':>4}  {hits['delta'].sum():+.6f}  {'':>10}  TOTAL improvement over baseline")

    return {
        "total": int(n_total),
        "counts": {str(k): int(v) for k, v in counts.items()},
        "keep_rate": keep_rate,
        "baseline_bpb": float(baseline_bpb),
        "plot_baseline_bpb": float(plot_baseline_bpb),
        "best_bpb": float(best_bpb),
        "best_description": str(best_row["description"]),
        "kept_descriptions": [str(d) for d in df.loc[df["status"] == "KEEP", "description"]],
        "running_min": [float(v) for v in running_min],
        "hits": [(str(r["description"]), float(r["delta"])) for _, r in hits.iterrows()],
        "png": png_path,
        "log": "\n".join(lines),
    }
