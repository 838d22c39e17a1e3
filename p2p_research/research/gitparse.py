"""Structural checks for raw git objects received from untrusted peers, before anything is written.

A fetched object is verified against its id (sha1 of "<type> <len>\\0" + data), but a matching hash
says nothing about whether the bytes *parse*: a "commit" of garbage still hashes to its id, lands in
the repo and later crashes pygit2 walks. These pure functions (bytes in, no I/O, no pygit2) check
structure and are deliberately stricter than git: whatever they accept, libgit2/pygit2 can read,
including every decoded field (names, e-mails, messages, tree entry names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2p_research.errors import P2PResearchError

MAX_BLOB = 16 * 1024 * 1024  # bytes; experiments edit small source files, anything bigger is abuse
MAX_TREE_ENTRIES = 4096
MAX_COMMIT_BYTES = 64 * 1024
MAX_PARENTS = 8
ALLOWED_KINDS = frozenset({1, 2, 3})  # commit, tree, blob; tags (4) are never part of an experiment

_COMMIT, _TREE, _BLOB, _TAG = 1, 2, 3, 4
_DIR_MODE = 0o40000
_MODES = {b"100644": 0o100644, b"100755": 0o100755, b"120000": 0o120000, b"40000": _DIR_MODE}
_MAX_NAME_BYTES = 255
_MAX_TIMESTAMP = 2**63 - 1  # libgit2 reads the timestamp as int64 and rejects the commit beyond it
# Named encodings are decoded *strictly* by pygit2 (unknown ones raise LookupError), so only these
# two are accepted: lower-cased header value -> the Python codec pygit2 will end up using.
_ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "iso-8859-1": "latin-1", "latin1": "latin-1"}
_RESERVED_HEADERS = {"tree", "parent", "author", "committer"}

_TREE_LINE = re.compile(r"tree ([0-9a-f]{40})")
_PARENT_LINE = re.compile(r"parent ([0-9a-f]{40})")
_SIGNATURE = re.compile(r"(author|committer) [^<>]*<[^<>]*> ([0-9]{1,20}) [+-][0-9]{4}")
_EXTRA_HEADER = re.compile(r"([a-z0-9-]+) (.*)")


class ObjectFormatError(P2PResearchError, ValueError):
    """A peer's object is not a well-formed commit/tree/blob; `reason` is one short loggable line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TreeEntry:
    mode: int  # 0o100644, 0o100755, 0o120000 (symlink) or 0o40000 (tree)
    name: str
    oid: str  # 40 lowercase hex


@dataclass(frozen=True)
class ParsedCommit:
    tree: str
    parents: tuple[str, ...]


def _show(raw: bytes | str, limit: int = 40) -> str:
    """A peer-controlled value made safe for a one-line log: repr'd and cut short."""
    text = repr(raw[:limit])
    return text[:limit] + "..." if len(raw) > limit or len(text) > limit else text


def _signature(line: str, role: str) -> None:
    m = _SIGNATURE.fullmatch(line)
    if m is None or m.group(1) != role:
        raise ObjectFormatError(f"commit: missing or malformed {role} line")
    if int(m.group(2)) > _MAX_TIMESTAMP:
        raise ObjectFormatError(f"commit: {role} timestamp out of range")


def parse_commit(data: bytes) -> ParsedCommit:
    """Check a commit's header (tree, parents, author, committer, extra headers) and return its links.

    The message after the first blank line may hold any bytes (git allows it); the header must be
    NUL-free UTF-8 lines, ending with a newline even when there is no message.
    """
    if len(data) > MAX_COMMIT_BYTES:
        raise ObjectFormatError(f"commit: {len(data)} bytes exceeds {MAX_COMMIT_BYTES}")
    end = data.find(b"\n\n")
    header, message = (data, b"") if end < 0 else (data[: end + 1], data[end + 2 :])
    if b"\0" in header:
        raise ObjectFormatError("commit: NUL byte in header")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectFormatError("commit: header is not valid UTF-8") from None
    lines = text.split("\n")
    if not (m := _TREE_LINE.fullmatch(lines[0])):
        raise ObjectFormatError("commit: missing tree line")
    if not text.endswith("\n"):
        raise ObjectFormatError("commit: header does not end with a newline")
    lines.pop()  # the empty string after the final newline
    tree, i, parents = m.group(1), 1, []
    while i < len(lines) and (m := _PARENT_LINE.fullmatch(lines[i])):
        parents.append(m.group(1))
        i += 1
    if len(parents) > MAX_PARENTS:
        raise ObjectFormatError(f"commit: {len(parents)} parents exceeds {MAX_PARENTS}")
    _signature(lines[i] if i < len(lines) else "", "author")
    _signature(lines[i + 1] if i + 1 < len(lines) else "", "committer")
    encoding = None
    for n, line in enumerate(lines[i + 2 :], start=i + 3):
        if line.startswith(" "):  # continuation of the previous header (gpgsig, mergetag)
            continue
        if not (m := _EXTRA_HEADER.fullmatch(line)):
            raise ObjectFormatError(f"commit: malformed header line {n}: {_show(line)}")
        if m.group(1) in _RESERVED_HEADERS:
            raise ObjectFormatError(f"commit: misplaced {m.group(1)!r} line {n}")
        if m.group(1) == "encoding":
            if encoding is not None:
                raise ObjectFormatError("commit: duplicate encoding header")
            if (encoding := _ENCODINGS.get(m.group(2).lower())) is None:
                raise ObjectFormatError(f"commit: unsupported encoding {_show(m.group(2))}")
    if encoding is not None:
        try:  # pygit2 decodes strictly once an encoding is named (the header is UTF-8 already)
            message.decode(encoding)
        except UnicodeDecodeError:
            raise ObjectFormatError(f"commit: message does not decode as declared {encoding}") from None
    return ParsedCommit(tree=tree, parents=tuple(parents))


def _entry_name(i: int, raw: bytes) -> str:
    if not raw:
        raise ObjectFormatError(f"tree: entry {i} has an empty name")
    if b"/" in raw:
        raise ObjectFormatError(f"tree: entry {i} name contains '/': {_show(raw)}")
    if len(raw) > _MAX_NAME_BYTES:
        raise ObjectFormatError(f"tree: entry {i} name is {len(raw)} bytes (max {_MAX_NAME_BYTES})")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectFormatError(f"tree: entry {i} name is not valid UTF-8: {_show(raw)}") from None
    if name in (".", "..") or name.lower() == ".git":
        raise ObjectFormatError(f"tree: entry {i} has forbidden name {name!r}")
    return name


def parse_tree(data: bytes) -> tuple[TreeEntry, ...]:
    """Parse `<octal mode> <name>\\0<20-byte sha1>` entries, enforcing git's canonical form.

    Entries are numbered from 0 in error reasons. Only regular, executable, symlink and tree modes
    are allowed: submodules (160000) would point at commits outside this repository.
    """
    entries: list[TreeEntry] = []
    seen: set[str] = set()
    prev_key: bytes | None = None
    pos = 0
    while pos < len(data):
        i = len(entries)
        if i >= MAX_TREE_ENTRIES:
            raise ObjectFormatError(f"tree: more than {MAX_TREE_ENTRIES} entries")
        nul = data.find(b"\0", pos)
        if nul < 0 or len(data) < nul + 21:
            raise ObjectFormatError(f"tree: entry {i} is truncated")
        if (space := data.find(b" ", pos, nul)) < 0:
            raise ObjectFormatError(f"tree: entry {i} has no space between mode and name")
        raw_mode = data[pos:space]
        if raw_mode == b"160000":
            raise ObjectFormatError(f"tree: entry {i} has mode 160000 (submodule)")
        if raw_mode not in _MODES:
            raise ObjectFormatError(f"tree: entry {i} has unsupported mode {_show(raw_mode, 16)}")
        mode, raw_name = _MODES[raw_mode], data[space + 1 : nul]
        name = _entry_name(i, raw_name)
        if name in seen:
            raise ObjectFormatError(f"tree: duplicate entry name {name!r}")
        key = raw_name + b"/" if mode == _DIR_MODE else raw_name  # git sorts trees as "name/"
        if prev_key is not None and key <= prev_key:
            raise ObjectFormatError(f"tree: entries not in git order at {name!r}")
        seen.add(name)
        prev_key = key
        entries.append(TreeEntry(mode=mode, name=name, oid=data[nul + 1 : nul + 21].hex()))
        pos = nul + 21
    return tuple(entries)


def check_object(kind: int, data: bytes) -> ParsedCommit | tuple[TreeEntry, ...] | None:
    """Validate an object of `kind` before it is written; the parse result, or None for a blob.

    Raises ObjectFormatError (and nothing else) for any input that must not reach the repository.
    """
    if kind == _TAG:
        raise ObjectFormatError("tag objects are not accepted")
    if kind not in ALLOWED_KINDS:
        raise ObjectFormatError(f"unknown kind {kind!r}")
    if kind == _COMMIT:
        return parse_commit(data)
    if kind == _TREE:
        return parse_tree(data)
    if len(data) > MAX_BLOB:
        raise ObjectFormatError(f"blob: {len(data)} bytes exceeds {MAX_BLOB}")
    return None


def references(kind: int, data: bytes) -> list[tuple[str, int | None]]:
    """The (oid, expected kind) pairs a valid object points to, so a fetcher knows what to ask for next.

    Commit: its tree (2), then each parent (1). Tree: each entry, 2 for subtrees and 3 for files and
    symlinks. Blob: none. The kind is never None today (gitlinks are rejected); the type leaves room
    for links of unknown kind. Raises ObjectFormatError like check_object.
    """
    parsed = check_object(kind, data)
    if parsed is None:
        return []
    if isinstance(parsed, ParsedCommit):
        return [(parsed.tree, _TREE), *((p, _COMMIT) for p in parsed.parents)]
    return [(e.oid, _TREE if e.mode == _DIR_MODE else _BLOB) for e in parsed]
