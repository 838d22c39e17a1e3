"""Which git objects a commit still needs locally (pure reads of the workspace), for fetching."""

from __future__ import annotations

import pygit2

from p2p_research.research.workspace import Workspace


def missing_references(ws: Workspace, oid: str) -> list[str]:
    """Objects that `oid` (a commit or tree already present) refers to and the repo lacks."""
    try:
        obj = ws.repo[oid]
    except (KeyError, ValueError):
        return [oid]
    out: list[str] = []
    if isinstance(obj, pygit2.Commit):
        refs = [str(obj.tree_id), *(str(p) for p in obj.parent_ids)]
        out = [r for r in refs if not ws.has_object(r)]
        if ws.has_object(str(obj.tree_id)):
            out += missing_references(ws, str(obj.tree_id))
    elif isinstance(obj, pygit2.Tree):
        for e in obj:
            if not ws.has_object(str(e.id)):
                out.append(str(e.id))
            elif e.type_str == "tree":
                out += missing_references(ws, str(e.id))
    return out
