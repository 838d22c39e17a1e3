"""The code key of an experiment: what it computes, not how its train.py is formatted (pure).

Two agents that word one idea differently (spacing, line breaks, comments, docstrings, quotes) write
different bytes, hence different git trees and experiment ids, but the same program. The semantic id
hashes the protocol with train.py's normalised AST (docstrings removed, no positions) and every other
file's bytes, so dedup (the ledger, claims, the DHT) treats such edits as one experiment.
"""

from __future__ import annotations

import ast
import hashlib

from p2p_research.research.constants import MAX_SOURCE_CHARS

EDITABLE = "train.py"


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]


def normalized(source: bytes) -> bytes | None:
    """train.py as its AST (no positions, comments or docstrings); None when it does not parse."""
    if len(source) > MAX_SOURCE_CHARS:  # too large to parse (research/constants.py): its bytes are its identity
        return None
    try:
        tree = ast.parse(source.decode())
        _strip_docstrings(tree)
        return ast.dump(tree, include_attributes=False).encode()
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None


def semantic_id(protocol_id: str, files: dict[str, bytes]) -> str:
    """40 hex characters, like an experiment id (its own hash domain, so the two never collide)."""
    h = hashlib.sha256(b"p2p-research-semantic/1")
    for part in (protocol_id.encode(),):
        h.update(len(part).to_bytes(8, "big") + part)
    for name in sorted(files):
        data = files[name]
        if name == EDITABLE:
            norm = normalized(data)
            data = b"ast:" + norm if norm is not None else b"raw:" + data
        for part in (name.encode(), data):
            h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:40]
