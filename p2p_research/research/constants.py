"""The top-level constants of `train.py`, read and rewritten on the AST, never by regex.

The same module answers the trust question "did this change alter anything but literal values of
top-level constants?": both the built-in proposer (which must only make such changes) and the
default trust policy for peers' changes rely on `constants_only_change`.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass

Literal = int | float | str | bool


class ConstantsError(ValueError):
    """The source does not have the expected shape (does not parse, or a constant is not a literal)."""


def _is_constant_name(name: str) -> bool:
    return name.isupper() and name.replace("_", "").isalnum() and not name[0].isdigit()


def _literal_value(node: ast.expr) -> tuple[bool, Literal | None]:
    """A plain literal, including a negated number (`-1e-3` is a UnaryOp in the AST)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return True, node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float))
        and not isinstance(node.operand.value, bool)
    ):
        v = node.operand.value
        return True, -v if isinstance(node.op, ast.USub) else v
    return False, None


@dataclass(frozen=True)
class ConstantSite:
    name: str
    value: Literal
    lineno: int
    col: int
    end_lineno: int
    end_col: int


def parse_source(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise ConstantsError(f"does not parse: {e.msg} (line {e.lineno})") from None


def constant_sites(source: str) -> dict[str, ConstantSite]:
    """Top-level `NAME = literal` statements, by name (the last assignment wins, as in Python).

    Cached by source text: the built-in proposer reads the same baseline many times per proposal
    (measured: 7% of a busy node's main thread was `ast.parse` of the same train.py)."""
    return dict(_constant_sites(source))


@functools.lru_cache(maxsize=64)
def _constant_sites(source: str) -> dict[str, ConstantSite]:
    sites: dict[str, ConstantSite] = {}
    for stmt in parse_source(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name = stmt.target.id
        else:
            continue
        if not _is_constant_name(name):
            continue
        ok, value = _literal_value(stmt.value)
        if not ok:
            continue
        v = stmt.value
        sites[name] = ConstantSite(name, value, v.lineno, v.col_offset, v.end_lineno or v.lineno, v.end_col_offset or 0)
    return sites


def read_constants(source: str) -> dict[str, Literal]:
    return {name: site.value for name, site in constant_sites(source).items()}


def format_literal(value: Literal) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConstantsError(f"not a finite number: {value!r}")
    text = repr(float(value))
    # Keep short decimal forms readable: 0.00030000000000000003 -> 3e-04 style via %g when exact enough.
    short = f"{value:.6g}"
    if float(short) == value:
        text = short if ("." in short or "e" in short) else short + ".0"
    return text


def rewrite_constants(source: str, changes: dict[str, Literal]) -> str:
    """Replace the literal values of the named constants, keeping every other byte of the source."""
    sites = constant_sites(source)
    missing = sorted(set(changes) - set(sites))
    if missing:
        raise ConstantsError(f"not top-level literal constants: {', '.join(missing)}")
    lines = source.splitlines(keepends=True)
    # Convert (line, col) to absolute offsets; ast columns are UTF-8 byte offsets.
    encoded = [line.encode() for line in lines]
    starts = [0]
    for b in encoded:
        starts.append(starts[-1] + len(b))
    data = source.encode()
    edits = []
    for name, value in changes.items():
        s = sites[name]
        a = starts[s.lineno - 1] + s.col
        b = starts[s.end_lineno - 1] + s.end_col
        edits.append((a, b, format_literal(value).encode()))
    for a, b, text in sorted(edits, reverse=True):
        data = data[:a] + text + data[b:]
    out = data.decode()
    got = read_constants(out)
    for name, value in changes.items():
        if type(got[name]) is not type(value) and not (isinstance(value, float) and isinstance(got[name], float)):
            raise ConstantsError(f"rewriting {name} changed its type")
    return out


def _skeleton(tree: ast.Module) -> tuple[str, dict[str, Literal]]:
    values: dict[str, Literal] = {}
    body = []
    for stmt in tree.body:
        target = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target = stmt.targets[0].id
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target = stmt.target.id
        if target is not None and _is_constant_name(target):
            ok, value = _literal_value(stmt.value)  # type: ignore[arg-type]
            if ok:
                values[target] = value  # type: ignore[assignment]
                if isinstance(stmt, ast.Assign):
                    stmt = ast.Assign(targets=stmt.targets, value=ast.Constant(value="<const>"))
                else:
                    stmt = ast.AnnAssign(target=stmt.target, annotation=stmt.annotation,
                                         value=ast.Constant(value="<const>"), simple=stmt.simple)
        body.append(stmt)
    return ast.dump(ast.Module(body=body, type_ignores=[]), include_attributes=False), values


def constants_only_change(old: str, new: str) -> tuple[bool, str]:
    """Whether `new` differs from `old` in nothing but literal values of top-level constants.

    Returns (ok, reason). A literal may change value but not kind (an int stays a number, a str a str,
    a bool a bool), so a change cannot, say, turn a learning rate into a string that breaks code.
    """
    try:
        old_tree = parse_source(old)
        new_tree = parse_source(new)
    except ConstantsError as e:
        return False, f"train.py {e}"
    old_skel, old_vals = _skeleton(old_tree)
    new_skel, new_vals = _skeleton(new_tree)
    if old_skel != new_skel:
        return False, "train.py changes code, not only the literal values of top-level constants"
    if set(old_vals) != set(new_vals):
        return False, "train.py changes which top-level constants exist"
    for name, v_old in old_vals.items():
        v_new = new_vals[name]
        kind_old = "bool" if isinstance(v_old, bool) else "str" if isinstance(v_old, str) else "num"
        kind_new = "bool" if isinstance(v_new, bool) else "str" if isinstance(v_new, str) else "num"
        if kind_old != kind_new:
            return False, f"constant {name} changes kind ({kind_old} -> {kind_new})"
        if isinstance(v_new, float) and (v_new != v_new or v_new in (float("inf"), float("-inf"))):
            return False, f"constant {name} is not finite"
    return True, "only constant values changed"


def changed_constants(old: str, new: str) -> dict[str, tuple[Literal, Literal]]:
    """name -> (old value, new value) for the constants whose literal differs."""
    a, b = read_constants(old), read_constants(new)
    return {k: (a[k], b[k]) for k in a if k in b and (a[k] != b[k] or type(a[k]) is not type(b[k]))}
