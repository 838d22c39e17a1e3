"""Which honest nodes end on a fabricated baseline: one rule for both simulation engines.

A liar's kept result is fabricated when its announced value is not what its run measured (beyond the
tolerance: a made-up value that happens to land on the truth is no lie, and a re-run rightly confirms
it). An honest node is *on* a fabricated baseline when its final baseline, or an ancestor of it up to
the nearest result that an honest node's re-run confirmed, is fabricated. Work built on a fabricated
result (a speculative branch never dropped, research/speculation.py) counts; a confirmed re-run stops
the walk because it measured the whole program at that commit, whatever its ancestors changed, and its
number is the one every node acts on from then on (a liar's true result on top of its own lies,
confirmed by honest re-runs, is an honest baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Set

DEFAULT_MARGIN = 0.002  # research.margin's default: a node's keep threshold before it has measured its noise


def told_the_truth(claimed: float | None, measured: float | None, margin: float | None = None) -> bool:
    """Whether a liar's announced value is what its run measured, within a verifier's tolerance (2 x the
    margin, research/swarm.SwarmPolicy.tol): a re-run rightly confirms such a claim, so it is no lie."""
    tol = 2 * (margin if margin is not None else DEFAULT_MARGIN)
    return claimed is not None and isinstance(measured, (int, float)) and abs(claimed - measured) <= tol


def on_fabricated(commit: str | None, parent_of: Mapping[str, str], exp_of: Mapping[str, str],
                  fabricated: Set[str], confirmed: Set[str]) -> bool:
    """Whether `commit` or an ancestor (up to the nearest confirmed result) is a fabricated result:
    `fabricated` and `confirmed` are experiment ids, `parent_of` and `exp_of` map commits."""
    seen: set[str] = set()
    while commit and commit not in seen:
        seen.add(commit)
        exp = exp_of.get(commit)
        if exp in fabricated:
            return True
        if exp in confirmed:
            return False
        commit = parent_of.get(commit, "")
    return False
