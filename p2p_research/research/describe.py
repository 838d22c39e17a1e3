"""A readable one-line summary of a change of train.py (pure), for when an agent gives no description.

Constants are named with their old and new values as written (`LEARNING_RATE 0.002 -> 0.004`,
`TOTAL_BATCH_SIZE 2**19 -> 2**20`); code changes name the top-level functions and classes they touch
and count the lines (`code: GPT.forward, norm; +6 -2 lines`). Never raw diff text.
"""

from __future__ import annotations

import ast
import difflib

from p2p_research.research.constants import (
    MAX_SOURCE_CHARS,
    ConstantsError,
    changed_constants,
    constants_only_change,
    describe_value,
)

MAX_LEN = 200


def _defs(tree: ast.Module) -> dict[str, str]:
    """Top-level functions and classes (and methods, as Class.method) -> their AST dump."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for m in methods:
                out[f"{node.name}.{m.name}"] = ast.dump(m)
            rest = [n for n in node.body if n not in methods]
            out[node.name] = ast.dump(ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords,
                                                   body=rest, decorator_list=node.decorator_list))
    return out


def describe_change(old: str, new: str) -> str:
    try:
        consts = changed_constants(old, new)
        only, _ = constants_only_change(old, new)
    except (ConstantsError, RecursionError):
        consts, only = {}, False
    parts = [f"{k} {describe_value(old, k, a)} -> {describe_value(new, k, b)}" for k, (a, b) in sorted(consts.items())]
    if not only and max(len(old), len(new)) > MAX_SOURCE_CHARS:  # neither parsed nor diffed (constants.py)
        parts.insert(0, f"code; {len(old):,} -> {len(new):,} characters, too large to compare")
    elif not only:
        try:
            a, b = _defs(ast.parse(old)), _defs(ast.parse(new))
            touched = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
            # a class whose methods changed is named by its methods
            touched = [n for n in touched if not any(t.startswith(n + ".") for t in touched)]
        except (SyntaxError, RecursionError, ValueError):
            touched = []
        added = removed = 0
        for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0):
            if line.startswith("+") and not line.startswith("+++"):
                added += 1
            elif line.startswith("-") and not line.startswith("---"):
                removed += 1
        where = ", ".join(touched[:4]) + (f" and {len(touched) - 4} more" if len(touched) > 4 else "")
        parts.insert(0, f"code{': ' + where if where else ''}; +{added} -{removed} lines")
    text = "; ".join(parts) or "no change"
    return text if len(text) <= MAX_LEN else text[:MAX_LEN - 3] + "..."
