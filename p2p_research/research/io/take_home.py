"""Take the winner home: the swarm's best train.py (or any commit's) into the user's own folder or a
branch of their git checkout (an autoresearch folder), with its lineage and receipts as the commit
message, so they can go on with their own tools.

`winner` reads the node's ledger and repository (nothing is changed there); `write_file` and
`write_branch` are the two ways out. `write_branch` never touches the checkout's working tree, index
or HEAD: it makes one commit on the branch (on top of its tip, or of HEAD for a new branch) whose
tree is the parent's with train.py replaced.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

from p2p_research.daemon.views import signed_receipts
from p2p_research.errors import P2PResearchError
from p2p_research.research.io.context import EDITABLE_FILE
from p2p_research.research.io.workspace import Workspace
from p2p_research.store.ledger import Ledger

MAX_STEPS = 200  # lineage lines in a commit message (a long lineage keeps its newest steps)


class TakeHomeError(P2PResearchError, ValueError):
    """What cannot be taken home, in one line."""


@dataclass(frozen=True)
class Step:
    commit: str
    exp_id: str
    description: str
    val_bpb: float | None      # the best value a run of this node or a peer's signed receipt gave it
    found_by: str
    verified_here: bool        # a run of this node measured it


@dataclass(frozen=True)
class Winner:
    commit: str
    exp_id: str
    protocol_id: str
    train_py: bytes
    val_bpb: float | None
    lineage: list[Step]                                  # genesis first
    receipts: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> str:
        last = self.lineage[-1] if self.lineage else None
        head = f"p2p-research: {last.description if last else self.commit[:12]}"
        if self.val_bpb is not None:
            head += f" (val_bpb {self.val_bpb:.6f})"
        lines = [head[:200], "",
                 f"Commit {self.commit} of the swarm's repository (experiment {self.exp_id}), "
                 f"protocol {self.protocol_id}.", "", "Lineage, genesis first:"]
        steps = self.lineage[-MAX_STEPS:]
        if len(self.lineage) > len(steps):
            lines.append(f"  ... {len(self.lineage) - len(steps)} earlier step(s)")
        for s in steps:
            value = f"{s.val_bpb:.6f}" if s.val_bpb is not None else "-"
            where = "verified here" if s.verified_here else "a peer's receipt"
            lines.append(f"  {s.commit[:10]}  val_bpb {value}  by {s.found_by[:20]}  ({where})  {s.description[:90]}")
        if self.receipts:
            lines += ["", "Receipts (signed by the measurers, checked again when taken):"]
            for r in self.receipts[:20]:
                if "receipt" not in r:
                    lines.append(f"  run {r.get('run')}: {r.get('signature')}")
                    continue
                rc = r["receipt"]
                lines.append(f"  {r['signed_by']}: val_bpb {rc.get('value')} seed {rc.get('seed')} "
                             f"hardware {rc.get('hardware')} software {rc.get('software')} "
                             f"signature {r['signature']} {r['signature_hex'][:32]}...")
        return "\n".join(lines) + "\n"


def _best_value(ledger: Ledger, exp_id: str) -> tuple[float | None, str, bool]:
    """(value, who measured it, whether this node did) of an experiment: this node's own measurement
    first (what it trusts), else the lowest value a peer signed."""
    runs = [r for r in ledger.runs(exp_id=exp_id) if r.val_bpb is not None
            and r.status not in ("crash", "aborted", "running", "refuted")]
    local = [r for r in runs if r.origin == "local"]
    if local:
        best = min(local, key=lambda r: r.val_bpb)  # type: ignore[arg-type, return-value]
        return best.val_bpb, best.peer or "this node", True
    if runs:
        best = min(runs, key=lambda r: r.val_bpb)  # type: ignore[arg-type, return-value]
        return best.val_bpb, best.peer or "a peer", False
    return None, "", False


def resolve(ledger: Ledger, ws: Workspace, what: str) -> tuple[str, str]:
    """(commit, protocol) of `what`: "best" (this node's baseline: the swarm's best it verified) or an
    experiment id or commit prefix."""
    if what == "best":
        b = ledger.latest_baseline()
        if b is None:
            raise TakeHomeError("this node has no baseline yet: run it until it measures one, or name a commit")
        return b.commit_id, b.protocol_id
    if len(what) < 4:
        raise TakeHomeError("give at least 4 characters of an experiment id or commit, or 'best'")
    found = {m["exp_id"]: m for m in ledger.find_experiments(what)}
    if not found:
        raise TakeHomeError(f"no experiment or commit starts with {what!r}")
    if len(found) > 1:
        raise TakeHomeError(f"{what!r} is ambiguous ({len(found)} experiments); give more characters")
    m = next(iter(found.values()))
    return m["commit_id"], m["protocol_id"]


def winner(ledger: Ledger, ws: Workspace, what: str = "best") -> Winner:
    commit, protocol = resolve(ledger, ws, what)
    if not ws.is_complete(commit):
        raise TakeHomeError(f"the node does not have all of {commit[:12]}'s objects (yet)")
    files = ws.files_of(commit)
    if EDITABLE_FILE not in files:
        raise TakeHomeError(f"{commit[:12]} has no {EDITABLE_FILE}")
    chain: list[str] = []
    c: str | None = commit
    while c and len(chain) < 10_000:
        chain.append(c)
        c = ws.parent_of(c)
    steps = []
    for c in reversed(chain):
        exps = [m for m in ledger.find_experiments(c) if m["commit_id"] == c]
        exp = exps[0] if exps else {"exp_id": "", "description": "(not an experiment of this node's ledger)"}
        value, by, here = _best_value(ledger, exp["exp_id"]) if exp["exp_id"] else (None, "", False)
        steps.append(Step(c, exp["exp_id"], exp.get("description") or "", value, by or exp.get("peer") or "", here))
    final = steps[-1]
    return Winner(commit, final.exp_id, protocol, files[EDITABLE_FILE], final.val_bpb, steps,
                  signed_receipts(ledger, final.exp_id) if final.exp_id else [])


def write_file(w: Winner, folder: Path, force: bool = False) -> Path:
    """train.py into `folder`; an existing different train.py is kept unless `force`."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise TakeHomeError(f"{folder} is not a folder")
    dest = folder / EDITABLE_FILE
    if dest.exists() and dest.read_bytes() != w.train_py and not force:
        raise TakeHomeError(f"{dest} exists and differs: --force overwrites it, --branch writes a git branch instead")
    tmp = dest.with_name(f".{EDITABLE_FILE}.{os.getpid()}.tmp")
    tmp.write_bytes(w.train_py)
    os.replace(tmp, dest)
    return dest


def write_branch(w: Winner, checkout: Path, branch: str, force: bool = False) -> str:
    """One commit on `branch` of the git checkout at `checkout` whose tree is its parent's with
    train.py (at the checkout folder's place in the repository) replaced; returns the commit id."""
    found = pygit2.discover_repository(str(checkout.expanduser()))
    if found is None:
        raise TakeHomeError(f"{checkout} is not in a git repository")
    repo = pygit2.Repository(found)
    if repo.is_bare or repo.workdir is None:
        raise TakeHomeError(f"{checkout}'s repository has no working tree")
    if not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise TakeHomeError(f"{branch!r} is not a valid branch name")
    ref_name = f"refs/heads/{branch}"
    if not repo.head_is_unborn and not repo.head_is_detached and repo.head.name == ref_name and not force:
        raise TakeHomeError(f"{branch} is checked out in {repo.workdir}: a commit under it would leave the working "
                            "tree behind (check out another branch, or give another name)")
    rel = Path(os.path.relpath(checkout.expanduser().resolve(), Path(repo.workdir).resolve()))
    parts = [] if str(rel) == "." else list(rel.parts)
    if parts and parts[0] == "..":
        raise TakeHomeError(f"{checkout} is outside its repository's working tree")
    parent = repo.references[ref_name].peel(pygit2.Commit) if ref_name in repo.references else (
        None if repo.head_is_unborn else repo.head.peel(pygit2.Commit))
    blob = repo.create_blob(w.train_py)
    tree = _replace(repo, parent.tree if parent is not None else None, parts, EDITABLE_FILE, blob)
    try:
        sig = repo.default_signature
    except (KeyError, pygit2.GitError):
        sig = pygit2.Signature("p2p-research", "p2p-research@localhost", int(time.time()), 0)
    oid = repo.create_commit(ref_name, sig, sig, w.message(), tree, [parent.id] if parent is not None else [])
    return str(oid)


def _replace(repo: pygit2.Repository, tree: pygit2.Tree | None, parts: list[str], name: str, blob: pygit2.Oid) -> pygit2.Oid:
    builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    if not parts:
        builder.insert(name, blob, pygit2.GIT_FILEMODE_BLOB)
        return builder.write()
    sub = None
    if tree is not None and parts[0] in tree:
        entry = tree[parts[0]]
        sub = repo[entry.id] if entry.type_str == "tree" else None
    builder.insert(parts[0], _replace(repo, sub, parts[1:], name, blob), pygit2.GIT_FILEMODE_TREE)
    return builder.write()
