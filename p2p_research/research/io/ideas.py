"""Ideas across hardware: a sibling protocol's kept change, proposed here and judged here.

A sibling protocol (research/siblings.py: the same genesis, another budget or hardware class) keeps
changes this node's swarm may never try. Its numbers mean nothing here, so only the change crosses:
the builtin proposer applies the sibling's win, relative to its own parent, onto this node's baseline
(research/combine.merged_train_py: constants knob by knob, code by a three-way merge only where that
peer's code may run) and the result is an experiment like any other, measured and kept or discarded
here. The sibling's gain orders the ideas and is shown beside the verdict here; it judges nothing.

Pure over rows the ledger gives (`ideas_of`, `across_hardware` read them), so the ranking and the view
are tested without a network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2p_research.research.ids import Budget
from p2p_research.store.ledger import Ledger
from p2p_research.wire import WireError, decode_receipt

MAX_IDEAS = 16  # ideas examined per proposal (newest 200 read, the best by their gain there first)


@dataclass(frozen=True)
class Idea:
    """A kept result of a sibling protocol: its change is `parent` -> `commit`."""

    exp_id: str
    commit: str
    parent: str
    protocol: str
    peer: str
    label: str               # the sibling's budget (and hardware under a wall-clock budget), in words
    gain_there: float | None  # its parent's value minus its own, under the sibling's protocol
    description: str = ""


def label_of(budget_tokens: int | None, budget_seconds: float | None, hardware: str) -> str:
    """A protocol's budget in words, with the hardware where it decides the result (wall clock)."""
    try:
        budget = Budget(budget_tokens, budget_seconds).describe()
    except (TypeError, ValueError):
        return "?"
    where = "".join(ch for ch in hardware[:60] if ch.isprintable()).strip()  # a peer's words: one line
    return f"{budget} on {where}" if budget_seconds and where else budget


def idea_of(row: Mapping[str, Any]) -> Idea:
    """An Idea from a `Ledger.sibling_wins` row (its receipt says the budget and hardware)."""
    label = "?"
    if row.get("receipt"):
        try:
            r = decode_receipt(row["receipt"])
            label = label_of(r.budget_tokens, r.budget_seconds, r.hardware)
        except (WireError, ValueError):
            pass
    value, parent_value = row.get("value"), row.get("parent_value")
    gain = parent_value - value if value is not None and parent_value is not None else None
    return Idea(row["exp_id"], row["commit"], row["parent"], row["protocol"], row.get("peer") or "", label, gain,
                row.get("description") or "")


def ranked(ideas: Iterable[Idea], limit: int = MAX_IDEAS) -> list[Idea]:
    """The ideas worth trying first: the largest gain there first, those of unknown gain last."""
    return sorted(ideas, key=lambda i: (i.gain_there is None, -(i.gain_there or 0.0), i.exp_id))[:limit]


def ideas_of(ledger: Ledger, protocol_id: str) -> list[Idea]:
    """Sibling protocols' kept changes no experiment here came from yet, best first."""
    return ranked(idea_of(r) for r in ledger.sibling_wins(protocol_id))


def idea_description(idea: Idea, change: str) -> str:
    """Where the idea came from, then the change as applied here."""
    return f"idea {idea.exp_id[:10]} from {idea.protocol[:12]} ({idea.label}): {change}"


def across_hardware(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Each idea tried here (a `Ledger.idea_rows` row): where it came from and its gain there, whether it
    held here (kept) and its gain here; and per source protocol, how many were tried and held."""
    ideas: list[dict[str, Any]] = []
    by_protocol: dict[str, dict[str, Any]] = {}
    for r in rows:
        status = r.get("status") or "proposed"
        value, parent = r.get("value"), r.get("parent_value")
        gain_here = parent - value if value is not None and parent is not None and status in ("kept", "discarded") else None
        held = True if status == "kept" else False if status in ("discarded", "crash") else None
        ideas.append({"exp_id": r["exp_id"], "description": r.get("description") or "",
                      "from_exp": r["source_exp"], "from_protocol": r["source_protocol"],
                      "from_budget": r.get("source_label") or "?", "from_peer": r.get("source_peer") or "",
                      "gain_there": r.get("gain_there"), "status_here": status, "val_bpb_here": value,
                      "gain_here": gain_here, "held": held, "proposed_at": r.get("proposed_at")})
        p = by_protocol.setdefault(r["source_protocol"], {"protocol": r["source_protocol"],
                                                          "budget": r.get("source_label") or "?", "tried": 0,
                                                          "held": 0, "judged": 0})
        p["tried"] += 1
        p["judged"] += held is not None
        p["held"] += held is True
    return {"ideas": ideas, "by_protocol": sorted(by_protocol.values(), key=lambda p: (-p["held"], p["protocol"]))}


def ideas_view(ledger: Ledger, protocol_id: str) -> dict[str, Any]:
    """`across_hardware` of what this ledger holds under `protocol_id`."""
    return across_hardware(ledger.idea_rows(protocol_id))
