"""The top-level constants of `train.py`, read and rewritten on the AST, never by regex.

A constant is a top-level `UPPER_CASE = <constant expression>`: a literal (number, string, bool), a
negated number, arithmetic on numbers (`2**19`, `40 * 524288`, `1 / 3`), or a tuple or list of those
(`ADAM_BETAS = (0.8, 0.95)`). Anything with a name, a call or an attribute in it is code. Evaluation
is bounded (depth, sizes, exponents), because the same code reads the train.py that peers send.

The same module answers the trust question "did this change alter anything but the values of
top-level constants?": both the built-in proposer (which must only make such changes) and the
default trust policy for peers' changes rely on `constants_only_change`.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field

from p2p_research.errors import P2PResearchError

Literal = int | float | str | bool
Const = Literal | tuple  # a tuple/list constant is held as a tuple of its (possibly nested) values

MAX_DEPTH = 8            # nesting of a constant expression
MAX_ITEMS = 32           # elements of a tuple/list constant
MAX_INT_BITS = 128       # |int| results (2**19 is fine; 10**10**9 is not evaluated)
MAX_EXPONENT = 256
MAX_STR = 1000
# the largest train.py parsed: autoresearch's is about 25 KB, the default target's 11 KB. A git blob may
# be 16 MiB (gitparse.MAX_BLOB), and Python's parser spends about 2 CPU-s and 400 MB per MB of source
# (6 MB of `x = 1` lines: 11 CPU-s and 2.4 GB here), so one peer's result could stall a node and take its
# memory before any check said no
MAX_SOURCE_CHARS = 1 << 20


class ConstantsError(P2PResearchError, ValueError):
    """The source does not have the expected shape (does not parse, or a constant is not constant)."""


def _is_constant_name(name: str) -> bool:
    return name.isupper() and name.replace("_", "").isalnum() and not name[0].isdigit()


class _NotConstant(Exception):
    pass


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _number(v: object) -> int | float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _NotConstant
    return v


def _checked(v: int | float) -> int | float:
    if isinstance(v, int) and v.bit_length() > MAX_INT_BITS:
        raise _NotConstant
    if isinstance(v, float) and not math.isfinite(v):
        raise _NotConstant
    return v


def _eval(node: ast.expr, depth: int = 0) -> Const:
    """The value of a constant expression; _NotConstant for anything else (names, calls, huge values)."""
    if depth > MAX_DEPTH:
        raise _NotConstant
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or isinstance(v, (int, float)):
            return _checked(v)
        if isinstance(v, str) and len(v) <= MAX_STR:
            return v
        raise _NotConstant
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(_eval(node.operand, depth + 1))
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _number(_eval(node.left, depth + 1)), _number(_eval(node.right, depth + 1))
        if isinstance(node.op, ast.Pow) and (abs(b) > MAX_EXPONENT or (isinstance(a, int) and a.bit_length() * abs(b) > MAX_INT_BITS)):
            raise _NotConstant
        try:
            out = _BINOPS[type(node.op)](a, b)
        except (ArithmeticError, ValueError):
            raise _NotConstant from None
        if isinstance(out, complex):
            raise _NotConstant
        return _checked(out)
    if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) <= MAX_ITEMS:
        return tuple(_eval(e, depth + 1) for e in node.elts)
    raise _NotConstant


def constant_value(node: ast.expr) -> tuple[bool, Const | None]:
    """(True, value) when `node` is a constant expression, else (False, None)."""
    try:
        return True, _eval(node)
    except (_NotConstant, RecursionError):
        return False, None


@dataclass(frozen=True)
class Form:
    """How a constant is written, so a new value keeps its form where sensible (`2**19` -> `2**20`)."""

    kind: str = "literal"             # literal | pow | mul | tuple | list
    base: int = 0                     # pow: the literal base
    factor: int | float = 0           # mul: the literal right-hand factor
    items: tuple[Form, ...] = ()      # tuple | list: the form of each element
    quote: str = ""                   # a string literal's quote (a new value keeps the source's style)


def _form_of(node: ast.expr, lines: list[bytes] | None = None) -> Form:
    """`lines`: the source's lines as bytes (`_segment`), to read a string literal's quote."""
    if isinstance(node, (ast.Tuple, ast.List)):
        return Form("tuple" if isinstance(node, ast.Tuple) else "list",
                    items=tuple(_form_of(e, lines) for e in node.elts))
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and lines:
        text = _segment(lines, node)
        if text[:1] in ("'", '"') and text[:3] not in ('"""', "'''"):
            return Form(quote=text[0])
    if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant) and isinstance(node.right, ast.Constant):
        left, right = node.left.value, node.right.value
        if isinstance(node.op, ast.Pow) and type(left) is int and type(right) is int and left >= 2:
            return Form("pow", base=left)
        if isinstance(node.op, ast.Mult) and type(right) in (int, float) and right not in (0, 0.0):
            return Form("mul", factor=right)
    return Form()


@dataclass(frozen=True)
class ConstantSite:
    name: str
    value: Const
    lineno: int
    col: int
    end_lineno: int
    end_col: int
    form: Form = Form()
    text: str = ""                    # the expression as written


def parse_source(source: str) -> ast.Module:
    if len(source) > MAX_SOURCE_CHARS:
        raise ConstantsError(f"is too large to parse: {len(source):,} characters, at most {MAX_SOURCE_CHARS:,}")
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise ConstantsError(f"does not parse: {e.msg} (line {e.lineno})") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise ConstantsError(f"does not parse: {type(e).__name__}") from None


def _target_name(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def assigned_constant(stmt: ast.stmt) -> str | None:
    """The name a top-level statement assigns a constant expression to (`LR = 2**-9`), else None."""
    name, v = _target_name(stmt)
    if name is None or v is None or not _is_constant_name(name) or not constant_value(v)[0]:
        return None
    return name


def constant_sites(source: str) -> dict[str, ConstantSite]:
    """Top-level `NAME = constant expression` statements, by name (the last assignment wins, as in Python).

    Cached by source text: the built-in proposer reads the same baseline many times per proposal
    (measured: 7% of a busy node's main thread was `ast.parse` of the same train.py)."""
    return dict(_constant_sites(source))


def _segment(lines: list[bytes], v: ast.expr) -> str:
    """The source text of `v` (ast columns are UTF-8 byte offsets); `ast.get_source_segment` would
    split the whole source again for every constant and string literal (measured: 10x slower
    proposals, and 4.3 CPU-s of a node's start on prepare.py's ~330 string literals)."""
    end_lineno, end_col = v.end_lineno or v.lineno, v.end_col_offset or 0
    if v.lineno == end_lineno:
        return lines[v.lineno - 1][v.col_offset:end_col].decode(errors="replace")
    parts = [lines[v.lineno - 1][v.col_offset:], *lines[v.lineno:end_lineno - 1], lines[end_lineno - 1][:end_col]]
    return b"".join(parts).decode(errors="replace")


@dataclass
class _Analysis:
    """What the node reads from one train.py text: whether it parses and its constant sites, from one
    parse; and, where `constants_only_change` asks, the digest of its code without the constants' values
    (`_skeleton`: an `ast.dump` as costly as the parse, which the proposer's drafts never need): from the
    same parse when the trust check asks first (a peer's result), else from a second one when asked."""

    error: str = ""                                  # why it does not parse ("" when it does)
    sites: dict[str, ConstantSite] = field(default_factory=dict)
    weight: int = 0                                  # characters of the program it holds (the sites' text)
    skeleton: bytes | None = None                    # None: not asked yet; b"": nested too deeply to dump


def _analyze(source: str, skeleton: bool = False) -> _Analysis:
    """`skeleton`: also the skeleton's digest, from the same parse (asked first by a trust check)."""
    try:
        tree = parse_source(source)
    except ConstantsError as e:
        return _Analysis(error=str(e))
    sites: dict[str, ConstantSite] = {}
    lines = source.encode().splitlines(keepends=True)
    for stmt in tree.body:
        name, v = _target_name(stmt)
        if name is None or v is None or not _is_constant_name(name):
            continue
        ok, value = constant_value(v)
        if not ok:
            sites.pop(name, None)  # a later non-constant assignment shadows an earlier constant one
            continue
        sites[name] = ConstantSite(name, value, v.lineno, v.col_offset, v.end_lineno or v.lineno,  # type: ignore[arg-type]
                                   v.end_col_offset or 0, _form_of(v, lines), _segment(lines, v))
    found = _Analysis(sites=sites, weight=sum(len(x.name) + len(x.text) + 256 for x in sites.values()))
    if skeleton:
        _add_skeleton(found, tree)
    return found


def _add_skeleton(found: _Analysis, tree: ast.Module) -> None:
    try:
        found.skeleton = hashlib.sha256(_skeleton(tree).encode()).digest()
    except (RecursionError, MemoryError):
        found.skeleton = b""


def _skeleton_of(source: str) -> _Analysis:
    """The analysis of a text that parses, with its skeleton's digest (computed once per text: from the
    same parse when the text is new, from a second one when only its constants were read before)."""
    found = _analysis(source, skeleton=True)
    if not found.error and found.skeleton is None:
        _add_skeleton(found, parse_source(source))
    return found


class _AnalysisCache:
    """`_analyze`, remembered by the text's digest for the last `max_entries` texts and at most
    `max_weight` characters of them: it holds digests and what was read, never the programs (each up to
    MAX_SOURCE_CHARS). One parse serves every question about a text: a node parses each peer's
    train.py to check it (trust), to describe it, to merge it and to run it, and the builtin proposer
    draws the same merged programs at every proposal on one baseline (measured: `ast.parse` and `ast.dump`
    were 18 % of a busy node's main thread with a cache per question, each text parsed for each; 9 % with
    this one, docs/testing.md)."""

    def __init__(self, max_entries: int = 1024, max_weight: int = 16 << 20) -> None:
        self.max_entries, self.max_weight = max_entries, max_weight
        self._done: OrderedDict[bytes, _Analysis] = OrderedDict()
        self._weight = 0

    def __call__(self, source: str, skeleton: bool = False) -> _Analysis:
        key = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=20).digest()
        found = self._done.get(key)
        if found is not None:
            self._done.move_to_end(key)
            return found
        found = _analyze(source, skeleton)
        self._done[key] = found
        self._weight += found.weight
        while self._done and (len(self._done) > self.max_entries or self._weight > self.max_weight):
            self._weight -= self._done.popitem(last=False)[1].weight
        return found

    def cache_clear(self) -> None:
        self._done.clear()
        self._weight = 0


_analysis = _AnalysisCache()


def parses(source: str) -> bool:
    """Whether `source` parses (within MAX_SOURCE_CHARS)."""
    return not _analysis(source).error


def _constant_sites(source: str) -> dict[str, ConstantSite]:
    found = _analysis(source)
    if found.error:
        raise ConstantsError(found.error)
    return found.sites


def read_constants(source: str) -> dict[str, Const]:
    return {name: site.value for name, site in constant_sites(source).items()}


def flatten(constants: dict[str, Const]) -> dict[str, Literal]:
    """Scalar view: `NAME` for scalars, `NAME[i]` for the elements of tuple/list constants (one level)."""
    out: dict[str, Literal] = {}
    for name, v in constants.items():
        if isinstance(v, tuple):
            for i, item in enumerate(v):
                if not isinstance(item, tuple):
                    out[f"{name}[{i}]"] = item
        else:
            out[name] = v
    return out


def split_key(key: str) -> tuple[str, int | None]:
    """`NAME[1]` -> ("NAME", 1); `NAME` -> ("NAME", None)."""
    if key.endswith("]") and "[" in key:
        name, _, idx = key[:-1].partition("[")
        if idx.isdigit():
            return name, int(idx)
    return key, None


def apply_scalar_changes(constants: dict[str, Const], changes: dict[str, Literal]) -> dict[str, Const]:
    """Whole-constant new values for scalar-view changes (`ADAM_BETAS[1]` -> the new tuple)."""
    out: dict[str, Const] = {}
    for key, value in changes.items():
        name, idx = split_key(key)
        if idx is None:
            out[name] = value
            continue
        current = out.get(name, constants.get(name))
        if not isinstance(current, tuple) or idx >= len(current):
            raise ConstantsError(f"{key}: {name} is not a tuple or list constant with that element")
        out[name] = current[:idx] + (value,) + current[idx + 1:]
    return out


def format_literal(value: Literal) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConstantsError(f"not a finite number: {value!r}")
    text = repr(float(value))
    # Keep short decimal forms readable: 0.00030000000000000003 -> 0.0003 when exact enough.
    short = f"{value:.6g}"
    if float(short) == value:
        text = short if ("." in short or "e" in short) else short + ".0"
    return text


def format_value(value: Const, form: Form = Form()) -> str:
    """Source text for `value`, keeping `form` where the value fits it (a power of the same base, a
    multiple of the same factor, a tuple stays a tuple)."""
    if isinstance(value, tuple):
        items = [format_value(v, form.items[i] if i < len(form.items) else Form()) for i, v in enumerate(value)]
        if form.kind == "list":
            return "[" + ", ".join(items) + "]"
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if form.kind == "pow" and type(value) is int and value >= 1:
        k = round(math.log(value, form.base)) if value > 1 else 0
        if form.base ** k == value:
            return f"{form.base}**{k}"
    if form.kind == "mul" and not isinstance(value, bool) and isinstance(value, (int, float)):
        f = form.factor
        if type(f) is int and type(value) is int and value % f == 0:
            return f"{value // f} * {f}"
        if isinstance(value, float):
            q = round(value / f, 6)
            if q * f == value:
                return f"{format_literal(q)} * {format_literal(f)}"
    if isinstance(value, str) and form.quote == '"' and '"' not in value and "\\" not in value \
            and value.isprintable():
        return f'"{value}"'
    return format_literal(value)  # type: ignore[arg-type]


def describe_value(source: str, name: str, value: Const) -> str:
    """How `value` reads when written for constant `name` of `source` (for descriptions)."""
    site = constant_sites(source).get(name)
    return format_value(value, site.form if site else Form())


def rewrite_constants(source: str, changes: dict[str, Const]) -> str:
    """Replace the values of the named constants, keeping their form and every other byte of the source."""
    sites = constant_sites(source)
    missing = sorted(set(changes) - set(sites))
    if missing:
        raise ConstantsError(f"not top-level constants: {', '.join(missing)}")
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
        text = format_value(value, s.form)
        # each replaced span is the whole right-hand side of a top-level assignment, so its new text alone
        # says what the name will hold; re-parsing the whole rewritten source was the largest part of a
        # busy node's proposals (docs/scale.md, "Found: parsing train.py again and again")
        try:
            ok, got = constant_value(ast.parse(text, mode="eval").body)
        except (SyntaxError, ValueError, RecursionError):
            ok, got = False, None
        if not ok or _kind(got) != _kind(value):  # type: ignore[arg-type]
            raise ConstantsError(f"rewriting {name} changed its kind")
        edits.append((starts[s.lineno - 1] + s.col, starts[s.end_lineno - 1] + s.end_col, text.encode()))
    for a, b, encoded_text in sorted(edits, reverse=True):
        data = data[:a] + encoded_text + data[b:]
    return data.decode()


def _kind(v: Const) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(_kind(x) for x in v) + ")"
    return "bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "num"


def _skeleton(tree: ast.Module) -> str:
    """The module's code without the values of its top-level constants (`ast.dump`: formatting and comments
    are not code)."""
    body = []
    for stmt in tree.body:
        target, v = _target_name(stmt)
        if target is not None and v is not None and _is_constant_name(target):
            if constant_value(v)[0]:
                if isinstance(stmt, ast.Assign):
                    stmt = ast.Assign(targets=stmt.targets, value=ast.Constant(value="<const>"))
                elif isinstance(stmt, ast.AnnAssign):
                    stmt = ast.AnnAssign(target=stmt.target, annotation=stmt.annotation,
                                         value=ast.Constant(value="<const>"), simple=stmt.simple)
        body.append(stmt)
    return ast.dump(ast.Module(body=body, type_ignores=[]), include_attributes=False)


def constants_only_change(old: str, new: str) -> tuple[bool, str]:
    """Whether `new` differs from `old` in nothing but the values of top-level constants.

    Returns (ok, reason). A constant may change value and form (`2**19` -> `524288`) but not kind (a
    number stays a number, a str a str, a bool a bool, a tuple a tuple of as many elements of the same
    kinds), so a change cannot, say, turn a learning rate into a string that breaks code.
    """
    old_a, new_a = _skeleton_of(old), _skeleton_of(new)
    for a in (old_a, new_a):
        if a.error:
            return False, f"train.py {a.error}"
    if not (old_a.skeleton and new_a.skeleton):
        return False, "train.py is nested too deeply to check"
    old_skel, new_skel = old_a.skeleton, new_a.skeleton
    old_vals = {n: x.value for n, x in old_a.sites.items()}
    new_vals = {n: x.value for n, x in new_a.sites.items()}
    if old_skel != new_skel:
        return False, "train.py changes code, not only the values of top-level constants"
    if set(old_vals) != set(new_vals):
        return False, "train.py changes which top-level constants exist"
    for name, v_old in old_vals.items():
        k_old, k_new = _kind(v_old), _kind(new_vals[name])
        if k_old != k_new:
            return False, f"constant {name} changes kind ({k_old} -> {k_new})"
    return True, "only constant values changed"


def changed_constants(old: str, new: str) -> dict[str, tuple[Const, Const]]:
    """name -> (old value, new value) for the constants whose value differs."""
    a, b = read_constants(old), read_constants(new)
    return {k: (a[k], b[k]) for k in a if k in b and (a[k] != b[k] or _kind(a[k]) != _kind(b[k]))}
