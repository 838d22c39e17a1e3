"""Combining wins: two improvements found independently on the same baseline, proposed together.

When two nodes keep different changes of one baseline, a swarm adopts one and the other's gain is lost
until someone happens to propose it again. Here a node looks at kept results that branched off its
baseline's lineage without being adopted into it, and proposes each one's change applied onto the
current baseline: a three-way merge of train.py (the win's parent, the baseline, the win), which
succeeds when the two changes touch disjoint constants or disjoint code regions. The combination is an
experiment like any other: its id is the hash of its tree, so every node that computes the same
combination computes the same id, and claims, the DHT and ownership dedup it across the swarm.

A proposal also stacks several wins at once (`stack_knobs`): the best constants-only wins, each added
where its knobs are still untouched, so a round whose results improved on different knobs is merged in
one experiment rather than one win per round. The stacks come before the single merges, and each has an
owner of its own on the ring, so a few nodes run stacks of growing size while the others go on as before.
Measured with the DES over 20 seeds and five landscapes (docs/scale.md): the swarm reaches the later
targets sooner on every landscape.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pygit2

from p2p_research.research.constants import (
    ConstantsError,
    changed_constants,
    constants_only_change,
    read_constants,
    rewrite_constants,
)
from p2p_research.research.io.workspace import Workspace, WorkspaceError

EDITABLE_FILE = "train.py"
MAX_CANDIDATES = 8
#: wins a stack draws from (the best first): a stack of them all, and every shorter prefix of at least two
MAX_STACKED = MAX_CANDIDATES

W = TypeVar("W", bound=Hashable)


@dataclass(frozen=True)
class Win:
    """A kept result: its commit, the baseline it improved on (parent), how good it was."""

    exp_id: str
    commit: str
    parent: str
    val_bpb: float
    description: str
    peer: str = ""  # "" for this node's own


def candidates(wins: Iterable[Win], ancestry: Iterable[str], limit: int = 4 * MAX_CANDIDATES) -> list[Win]:
    """Wins that branched off the baseline's lineage and were not adopted into it, best first.

    `ancestry`: the baseline and its first-parent ancestors. A win whose parent is the baseline itself
    is not a combination (it is a plain candidate for adoption) and is left out too."""
    anc = list(ancestry)
    on_line = set(anc)
    baseline = anc[0] if anc else None
    out = [w for w in wins if w.parent in on_line and w.commit not in on_line and w.parent != baseline]
    return sorted(out, key=lambda w: (w.val_bpb, w.exp_id))[:limit]


def stack_knobs(baseline: dict, wins: Iterable[tuple[W, dict, dict]],
                limit: int = MAX_STACKED) -> Iterator[tuple[dict, tuple[W, ...]]]:
    """Several wins applied onto the baseline at once, knob by knob (pure; the daemon's builtin proposer
    and the DES both take it).

    `wins`: (win, its parent's constants, the knobs it changed), best first (`candidates`' order). The
    first `limit` are added in turn, each one whose knobs the baseline and the wins added before it left
    at its parent's values (merge_knobs); after each addition from the second on, yields the knobs that
    the stack changes (name -> value, to set in the baseline) and the wins in it. A stack of one is the
    plain combination, which the caller proposes anyway."""
    acc, knobs, used = dict(baseline), {}, []
    for n, (win, parent, changes) in enumerate(wins):
        if n >= limit:
            return
        k = merge_knobs(parent, acc, changes)
        if k is None:
            continue
        acc.update(k)
        knobs.update(k)
        used.append(win)
        if len(used) >= 2:
            yield dict(knobs), tuple(used)


def win_knobs(parent: str, win: str) -> tuple[dict, dict] | None:
    """The parent's constants and the knobs a win changed (name -> new value), from the two programs;
    None when the win changed code too (a stack is constants only) or either does not parse."""
    try:
        only, _ = constants_only_change(parent, win)
        if not only:
            return None
        return read_constants(parent), {name: new for name, (_, new) in changed_constants(parent, win).items()}
    except ConstantsError:
        return None


def merge_constants(parent: str, baseline: str, win: str, theirs: bool = False) -> str | None:
    """Constants the win changed (from its parent), set in the baseline, when the baseline still has the
    parent's value for each of them (disjoint knobs); None when the win changed code, or a knob overlaps
    (unless `theirs`: see merge_knobs). A line-based merge would call two changes of adjacent lines a
    conflict; knobs are not lines."""
    found = win_knobs(parent, win)
    if found is None:
        return None
    before, changes = found
    try:
        now = read_constants(baseline)
    except ConstantsError:
        return None
    knobs = merge_knobs(before, now, changes, theirs=theirs)
    if knobs is None:
        return None
    merged = rewrite_constants(baseline, knobs)
    return None if merged == baseline else merged


def merge_knobs(parent: dict, baseline: dict, changes: dict, theirs: bool = False) -> dict | None:
    """The decision of a knob-by-knob merge (pure): the win's `changes` (name -> new value, relative to
    `parent`) apply to `baseline` when the baseline still has the parent's value of every one of them;
    None when a knob overlaps (the baseline moved it too) or nothing would change.

    `theirs`: the change's values are the point, whatever the baseline moved (an idea from another
    protocol: "this value held there", tried here at that value); a knob the baseline lacks still
    refuses it."""
    if not changes or any(name not in baseline for name in changes):
        return None
    if not theirs and any(baseline[name] != parent.get(name) for name in changes):
        return None
    if all(baseline[name] == new and type(baseline[name]) is type(new) for name, new in changes.items()):
        return None
    return dict(changes)


def merged_train_py(ws: Workspace, parent: str, baseline: str, win: str, code: bool = True,
                    theirs: bool = False) -> bytes | None:
    """train.py with the win's change (parent -> win) applied onto the baseline, or None when the
    changes overlap, a commit is missing here, or nothing changes. Constants-only wins merge knob by
    knob (`theirs`: their values even where the baseline moved a knob too, merge_knobs); code changes by
    a three-way merge of train.py (disjoint code regions), only with `code` (a peer's code runs here
    only where the trust policy lets that peer's code run: the sandbox)."""
    try:
        texts = [ws.files_of(c)[EDITABLE_FILE].decode() for c in (parent, baseline, win)]
    except (KeyError, ValueError, UnicodeDecodeError, pygit2.GitError, WorkspaceError):
        return None
    by_knob = merge_constants(*texts, theirs=theirs)
    if by_knob is not None:
        return by_knob.encode()
    if not code:
        return None
    repo = ws.repo
    try:
        trees = [repo[c].peel(pygit2.Tree) for c in (parent, baseline, win)]
        index = repo.merge_trees(*trees)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    if index.conflicts is not None:
        return None
    try:
        entry = index[EDITABLE_FILE]
    except KeyError:
        return None
    data = repo[entry.id].read_raw()
    try:
        base = repo[trees[1][EDITABLE_FILE].id].read_raw()
    except KeyError:
        return None
    return None if data == base else data
