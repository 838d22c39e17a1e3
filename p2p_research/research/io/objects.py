"""Which git objects a commit still needs locally (pure reads of the workspace), for fetching."""

from __future__ import annotations

import pygit2

from p2p_research.research.io.workspace import Workspace, WorkspaceError


def missing_references(ws: Workspace, oid: str) -> list[str]:
    """Objects that `oid` (a commit or tree already present) refers to and the repo lacks.

    WorkspaceError for an object that libgit2 cannot read (write_objects keeps such objects out;
    this is the second line)."""
    try:
        obj = ws.repo[oid]
    except (KeyError, ValueError):
        return [oid]
    except pygit2.GitError as e:
        raise WorkspaceError(f"object {oid[:10]} cannot be read: {e}") from None
    out: list[str] = []
    if isinstance(obj, pygit2.Commit):
        refs = [(str(obj.tree_id), 2), *((str(p), 1) for p in obj.parent_ids)]
        out = [r for r, want in refs if not _present_as(ws, r, want, oid)]
        if ws.has_object(str(obj.tree_id)):
            out += missing_references(ws, str(obj.tree_id))
    elif isinstance(obj, pygit2.Tree):
        for e in obj:
            want = 2 if e.type_str == "tree" else 3
            if not _present_as(ws, str(e.id), want, oid):
                out.append(str(e.id))
            elif want == 2:
                out += missing_references(ws, str(e.id))
    return out


def _present_as(ws: Workspace, ref: str, want: int, referrer: str) -> bool:
    """Whether `ref` is here; WorkspaceError when it is here as another kind than `referrer` says (an
    object can arrive after the tree that names it, so write_objects cannot always catch that)."""
    have = ws.kind_of(ref)
    if have is not None and have != want:
        raise WorkspaceError(f"object {referrer[:10]} refers to {ref[:10]} as kind {want}, but it is kind {have}")
    return have is not None


def incomplete_ancestry(ws: Workspace, commit: str, limit: int = 500) -> list[str]:
    """Objects missing anywhere along `commit`'s first-parent chain (commits, trees, blobs).

    Adopting a commit means reading (and trust-checking) every step of its lineage, so a present
    commit whose ancestor's tree is missing is not complete. Stops at the root or after `limit` commits.
    """
    out: list[str] = []
    cur: str | None = commit
    for _ in range(limit):
        if cur is None:
            break
        if not ws.has_object(cur):
            out.append(cur)
            break
        out += [m for m in missing_references(ws, cur) if m not in out]
        try:
            obj = ws.repo[cur]
        except pygit2.GitError as e:
            raise WorkspaceError(f"object {cur[:10]} cannot be read: {e}") from None
        cur = str(obj.parent_ids[0]) if isinstance(obj, pygit2.Commit) and obj.parent_ids else None
    return out


def first_parent_ancestry(ws: Workspace, commit: str, limit: int = 10_000) -> list[str]:
    """The commit and its first-parent ancestors that are here, newest first (stops at a missing one)."""
    out = []
    cur: str | None = commit
    while cur is not None and len(out) < limit:
        try:
            obj = ws.repo[cur]
        except (KeyError, ValueError):
            break
        if not isinstance(obj, pygit2.Commit):
            break
        out.append(cur)
        cur = str(obj.parent_ids[0]) if obj.parent_ids else None
    return out


def root_of(ws: Workspace, commit: str, limit: int = 10_000) -> str | None:
    """The root commit (genesis) at the end of `commit`'s first-parent chain, or None when part of
    the chain is not here (or longer than `limit`)."""
    chain = first_parent_ancestry(ws, commit, limit)
    if not chain or ws.repo[chain[-1]].parent_ids:
        return None
    return chain[-1]
