"""SWARM.md: the digest of what the swarm knows, written into the workspace for agents to read.

It is what an agent (and the built-in proposer, through the same ledger) consults before proposing:
the current best and its lineage, recent results, negative results with how many nodes saw them, and
open claims, so nobody repeats what the swarm already tried.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from p2p_research.store import queries
from p2p_research.store.ledger import Ledger


def _v(x: float | None) -> str:
    return "-" if x is None else f"{x:.6f}"


def render_swarm_md(ledger: Ledger, protocol_id: str, self_peer: str = "", now: float | None = None,
                    diff_of: Callable[[str], str] | None = None) -> str:
    """`diff_of(commit)`: the commit's change as a patch ("" when its objects are not here), for the
    ideas from other hardware (an agent's scratch copy has no history to diff)."""
    now = now or time.time()
    lines = ["# SWARM.md", "", "What this node knows of the swarm's research (rewritten as news arrives). "
             "Read it before proposing: do not repeat what was tried.", ""]
    history = ledger.baseline_history(protocol_id)
    lines += ["## Current best", ""]
    if history:
        b = history[-1]
        lines.append(f"`{b.commit_id[:10]}` val_bpb **{_v(b.val_bpb)}** (found by {b.source_peer[:16] or 'this node'})")
        lines += ["", "Lineage (oldest first):", ""]
        for step in history[-15:]:
            lines.append(f"- `{step.commit_id[:10]}` {_v(step.val_bpb)} by {step.source_peer[:16] or 'this node'}: {step.reason}")
    else:
        lines.append("(no baseline measured yet)")
    lines += ["", "## Recent results", "", "| experiment | by | status | val_bpb | change |", "|---|---|---|---|---|"]
    for r in ledger.runs(kind="experiment", limit=25)[::-1]:
        if r.status == "running" or r.protocol_id != protocol_id:  # a sibling protocol's numbers mean nothing here
            continue
        who = "this node" if r.origin == "local" else r.peer[:12]
        lines.append(f"| `{r.exp_id[:10]}` | {who} | {r.status} | {_v(r.val_bpb)} | {r.description[:80]} |")
    neg = queries.negative_results(ledger.db, protocol_id)
    lines += ["", "## Negative results", "", "| change | nodes | runs | best val_bpb |", "|---|---|---|---|"]
    for n in neg:
        lines.append(f"| {(n['description'] or n['exp_id'][:10])[:80]} | {n['nodes']} | {n['runs']} | {_v(n['best'])} |")
    lines += _ideas_section(ledger, protocol_id, diff_of)
    claims = ledger.claims(active_at=now)
    lines += ["", "## Open claims (being run now)", ""]
    for c in claims:
        who = "this node" if c["peer"] == self_peer else c["peer"][:12]
        lines.append(f"- `{c['exp_id'][:10]}` by {who}, lease {max(0, c['lease_until'] - now):.0f} s: {c['description'][:80]}")
    if not claims:
        lines.append("(none)")
    return "\n".join(lines) + "\n"


def _ideas_section(ledger: Ledger, protocol_id: str, diff_of: Callable[[str], str] | None,
                   limit: int = 8, max_patch: int = 3000) -> list[str]:
    """Kept changes of sibling protocols (the same genesis under another budget or hardware,
    research/io/ideas.py): an agent may try one here. Their numbers are another protocol's and decide
    nothing here; each comes with its patch where this node has its objects."""
    from p2p_research.research.io.ideas import ideas_of

    ideas = ideas_of(ledger, protocol_id)[:limit]
    if not ideas:
        return []
    out = ["", "## Ideas from other hardware", "",
           "Kept elsewhere (another budget or GPU model of this genesis): worth trying here, but their numbers "
           "are not this swarm's.", ""]
    for i in ideas:
        gain = "gain unknown" if i.gain_there is None else f"improved val_bpb by {i.gain_there:.4f} there"
        out.append(f"- `{i.exp_id[:10]}` on {i.label[:40]}: {(i.description or '-')[:100]} ({gain})")
        patch = ""
        if diff_of is not None:
            try:
                patch = diff_of(i.commit)
            except Exception:  # noqa: BLE001 - objects not (yet) fetched: the description stays
                patch = ""
        if patch:
            cut = patch if len(patch) <= max_patch else patch[:max_patch] + "\n... (patch cut)\n"
            out += ["", "```diff", cut.rstrip("\n"), "```", ""]
    return out
