"""gitparse: structural checks of untrusted git objects; what it accepts, pygit2 must be able to read."""

from __future__ import annotations

import pygit2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from p2p_research.research.gitparse import (
    ALLOWED_KINDS,
    MAX_BLOB,
    MAX_COMMIT_BYTES,
    MAX_PARENTS,
    MAX_TREE_ENTRIES,
    ObjectFormatError,
    ParsedCommit,
    TreeEntry,
    check_object,
    parse_commit,
    parse_tree,
    references,
)

COMMIT, TREE, BLOB, TAG = 1, 2, 3, 4
HEX_T = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
HEX_P = "1" * 40
TREE_LINE = b"tree " + HEX_T.encode() + b"\n"
PARENT_LINE = b"parent " + HEX_P.encode() + b"\n"
AUTHOR = b"author A U Thor <a@example.com> 1735689600 +0100\n"
COMMITTER = b"committer C O Mitter <c@example.com> 1735689601 -0230\n"
HEAD = TREE_LINE + PARENT_LINE + AUTHOR + COMMITTER
GOOD_COMMIT = HEAD + b"\nsubject\n\nbody\n"
GPGSIG = b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEz\n -----END PGP SIGNATURE-----\n"
HASHY = bytes(range(20))


def entry(mode: bytes, name: bytes, oid: bytes = HASHY) -> bytes:
    return mode + b" " + name + b"\0" + oid


def with_parents(n: int) -> bytes:
    return HEAD.replace(PARENT_LINE, PARENT_LINE * n)


def many_entries(n: int) -> bytes:
    return b"".join(entry(b"100644", b"%05d" % i) for i in range(n))


GOOD_TREE = b"".join([entry(b"100644", b"a"), entry(b"40000", b"lib"), entry(b"100755", b"run.sh"),
                      entry(b"120000", b"z")])


# --- what pygit2 reports, touching every field a walk may read ---------------------------------------

Parsed = ParsedCommit | tuple[TreeEntry, ...] | None


def pygit2_view(repo: pygit2.Repository, kind: int, data: bytes) -> Parsed:
    """Write `data` raw and read it back through pygit2; raises if pygit2 cannot read any field."""
    obj = repo[repo.odb.write(kind, data)]
    if kind == COMMIT:
        for sig in (obj.author, obj.committer):
            assert isinstance(sig.name, str) and isinstance(sig.email, str)
            assert isinstance(sig.time, int) and isinstance(sig.offset, int)
        assert isinstance(obj.message, str) and isinstance(obj.raw_message, bytes)
        return ParsedCommit(str(obj.tree_id), tuple(str(p) for p in obj.parent_ids))
    if kind == TREE:
        return tuple(TreeEntry(e.filemode, e.name, str(e.id)) for e in obj if e.type_str in ("tree", "blob"))
    return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> pygit2.Repository:
    return pygit2.init_repository(str(tmp_path_factory.mktemp("scratch")), bare=True)


# --- 1. real objects made by pygit2 --------------------------------------------------------------------

def test_real_pygit2_objects_pass_and_parse_identically(tmp_path) -> None:
    repo = pygit2.init_repository(str(tmp_path))
    blob = repo.create_blob(b"print('hi')\n")
    deep = repo.TreeBuilder()
    deep.insert("x.txt", repo.create_blob(b""), pygit2.GIT_FILEMODE_BLOB)
    lib = repo.TreeBuilder()
    lib.insert("deeper", deep.write(), pygit2.GIT_FILEMODE_TREE)
    lib.insert("données.txt", blob, pygit2.GIT_FILEMODE_BLOB)
    root = repo.TreeBuilder()
    root.insert("lib", lib.write(), pygit2.GIT_FILEMODE_TREE)
    root.insert("lib-x", blob, pygit2.GIT_FILEMODE_BLOB)  # git order: "lib-x" < "lib.py" < "lib/"
    root.insert("lib.py", blob, pygit2.GIT_FILEMODE_BLOB)
    root.insert("run.sh", repo.create_blob(b"#!/bin/sh\necho hi\n"), pygit2.GIT_FILEMODE_BLOB_EXECUTABLE)
    root.insert("link", repo.create_blob(b"lib/deeper/x.txt"), pygit2.GIT_FILEMODE_LINK)
    tree = root.write()
    empty = repo.TreeBuilder().write()
    sig = pygit2.Signature("p2p-research", "genesis@p2p-research.invalid", 1735689600, 0)
    zoe = pygit2.Signature("Zoë Ünïcode", "zoe@p2p-research.invalid", 1735689700, -150)  # a display name
    c1 = repo.create_commit(None, sig, sig, "genesis", empty, [])
    c2 = repo.create_commit(None, zoe, sig, "change\n", tree, [c1])
    c3 = repo.create_commit(None, sig, zoe, "merge\n\nline two\nline three\n", tree, [c1, c2], "UTF-8")
    text = repo.create_commit_string(sig, sig, "signed\n", tree, [c3])
    c4 = repo.create_commit_with_signature(text, "-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP-----")
    seen = {COMMIT: 0, TREE: 0, BLOB: 0}
    for oid in repo.odb:  # every object written above, whatever its kind
        kind, data = repo.odb.read(oid)
        seen[kind] += 1
        parsed = check_object(kind, data)
        obj = repo[oid]
        if kind == COMMIT:
            parents = tuple(str(p) for p in obj.parent_ids)
            assert parsed == parse_commit(data) == ParsedCommit(str(obj.tree_id), parents)
            assert references(kind, data) == [(str(obj.tree_id), TREE), *((p, COMMIT) for p in parents)]
        elif kind == TREE:
            assert parsed == parse_tree(data) == tuple(TreeEntry(e.filemode, e.name, str(e.id)) for e in obj)
            expected = [(str(e.id), TREE if e.type_str == "tree" else BLOB) for e in obj]
            assert references(kind, data) == expected
        else:
            assert parsed is None and references(kind, data) == []
    assert seen == {COMMIT: 4, TREE: 4, BLOB: 4}
    assert b"\nencoding UTF-8\n" in repo.odb.read(c3)[1]
    assert b"\ngpgsig " in repo.odb.read(c4)[1]
    assert {e.mode for e in parse_tree(repo.odb.read(tree)[1])} == {0o100644, 0o100755, 0o120000, 0o40000}


# --- 2. accepted edge cases, each confirmed by pygit2 --------------------------------------------------

ACCEPTED_COMMITS = {
    "no message, no blank line": HEAD,
    "blank line, empty message": HEAD + b"\n",
    "root commit": HEAD.replace(PARENT_LINE, b""),
    "max parents": with_parents(MAX_PARENTS),
    "empty author name": HEAD.replace(b"A U Thor ", b"") + b"\nmsg\n",
    "utf-8 author name": HEAD.replace(b"A U Thor", "Zoë".encode()) + b"\nmsg\n",
    "any bytes in message": HEAD + b"\n\xff\xfe\0binary\0\n",
    "gpgsig continuation": HEAD + GPGSIG + b"\nsigned\n",
    "encoding utf-8": HEAD + b"encoding UTF-8\n\ncaf\xc3\xa9\n",
    "encoding latin1": HEAD + b"encoding ISO-8859-1\n\ncaf\xe9\n",
    "largest timestamp": HEAD.replace(b"1735689600", str(2**63 - 1).encode()) + b"\nx\n",
    "odd timezone": HEAD.replace(b"+0100", b"+9999") + b"\nx\n",
}


@pytest.mark.parametrize("data", ACCEPTED_COMMITS.values(), ids=ACCEPTED_COMMITS.keys())
def test_accepted_commit_variants_are_readable(scratch, data: bytes) -> None:
    assert check_object(COMMIT, data) == pygit2_view(scratch, COMMIT, data)


ACCEPTED_TREES = {
    "empty tree": b"",
    "all modes": GOOD_TREE,
    "file before same-prefix dir": entry(b"100644", b"a-b") + entry(b"40000", b"a") + entry(b"100644", b"a0"),
    "spaces and unicode": entry(b"100644", b"a b") + entry(b"100644", "ñ".encode()),
    "255-byte name": entry(b"100644", b"n" * 255),
    "max entries": many_entries(MAX_TREE_ENTRIES),
}


@pytest.mark.parametrize("data", ACCEPTED_TREES.values(), ids=ACCEPTED_TREES.keys())
def test_accepted_tree_variants_are_readable(scratch, data: bytes) -> None:
    assert check_object(TREE, data) == pygit2_view(scratch, TREE, data)


def test_blobs_any_bytes_up_to_the_limit() -> None:
    assert check_object(BLOB, b"") is None
    assert check_object(BLOB, bytes(range(256))) is None
    assert check_object(BLOB, b"\0" * MAX_BLOB) is None


# --- 3. each malformation rejected with a specific reason ----------------------------------------------

def sub(old: bytes, new: bytes, data: bytes = HEAD) -> bytes:
    assert old in data
    return data.replace(old, new)


REJECTED = {
    # kinds and sizes
    "tag": (TAG, GOOD_COMMIT, "tag objects are not accepted"),
    "kind 0": (0, b"", "unknown kind 0"),
    "kind 5": (5, b"", "unknown kind 5"),
    "kind -1": (-1, b"", "unknown kind -1"),
    "huge blob": (BLOB, b"\0" * (MAX_BLOB + 1), "blob: 16777217 bytes exceeds"),
    "huge commit": (COMMIT, GOOD_COMMIT + b"x" * MAX_COMMIT_BYTES, "exceeds 65536"),
    # commit header: tree and parents
    "empty commit": (COMMIT, b"", "commit: missing tree line"),
    "no tree line": (COMMIT, sub(TREE_LINE, b""), "commit: missing tree line"),
    "tree not first": (COMMIT, PARENT_LINE + TREE_LINE + AUTHOR + COMMITTER, "commit: missing tree line"),
    "uppercase tree hex": (COMMIT, sub(HEX_T.encode(), HEX_T.upper().encode()), "missing tree line"),
    "short tree hex": (COMMIT, sub(HEX_T.encode(), HEX_T[:39].encode()), "missing tree line"),
    "tree trailing space": (COMMIT, sub(HEX_T.encode(), HEX_T.encode() + b" "), "missing tree line"),
    "too many parents": (COMMIT, with_parents(MAX_PARENTS + 1), "commit: 9 parents exceeds 8"),
    "bad parent hex": (COMMIT, sub(HEX_P.encode(), b"xyz"), "malformed author line"),
    # signatures
    "missing author": (COMMIT, sub(AUTHOR, b""), "missing or malformed author line"),
    "missing committer": (COMMIT, sub(COMMITTER, b""), "missing or malformed committer line"),
    "committer first": (COMMIT, sub(AUTHOR + COMMITTER, COMMITTER + AUTHOR), "malformed author line"),
    "two authors": (COMMIT, sub(AUTHOR, AUTHOR + AUTHOR), "malformed committer line"),
    "no email": (COMMIT, sub(b"<a@example.com>", b"a@example.com"), "malformed author line"),
    "email unclosed": (COMMIT, sub(b"<c@example.com>", b"<c@example.com"), "malformed committer line"),
    "angle in name": (COMMIT, sub(b"A U Thor", b"A <U> Thor"), "malformed author line"),
    "no timestamp": (COMMIT, sub(b" 1735689600", b""), "malformed author line"),
    "text timestamp": (COMMIT, sub(b"1735689600", b"yesterday"), "malformed author line"),
    "negative timestamp": (COMMIT, sub(b"1735689600", b"-1"), "malformed author line"),
    "21-digit timestamp": (COMMIT, sub(b"1735689600", b"1" * 21), "malformed author line"),
    "timestamp > int64": (COMMIT, sub(b"1735689600", b"%d" % 2**63), "author timestamp out of range"),
    "tz without sign": (COMMIT, sub(b"+0100", b"0100"), "malformed author line"),
    "tz three digits": (COMMIT, sub(b"-0230", b"-230"), "malformed committer line"),
    "no timezone": (COMMIT, sub(b" -0230", b""), "malformed committer line"),
    "CR line end": (COMMIT, sub(b"+0100\n", b"+0100\r\n"), "malformed author line"),
    # header as a whole and extra headers
    "NUL in header": (COMMIT, sub(b"A U Thor", b"A\0Thor") + b"\nx", "commit: NUL byte in header"),
    "non-utf8 header": (COMMIT, sub(b"A U Thor", b"A \xff Thor") + b"\nx", "header is not valid UTF-8"),
    "header unterminated": (COMMIT, HEAD[:-1], "commit: header does not end with a newline"),
    "bare header word": (COMMIT, HEAD + b"junk\n\nx", "commit: malformed header line 5"),
    "parent after committer": (COMMIT, HEAD + PARENT_LINE + b"\nx", "misplaced 'parent' line"),
    "tree after committer": (COMMIT, HEAD + TREE_LINE, "misplaced 'tree' line"),
    "unknown encoding": (COMMIT, HEAD + b"encoding foo\n\nx", "commit: unsupported encoding 'foo'"),
    "non-text codec": (COMMIT, HEAD + b"encoding rot13\n\nx", "unsupported encoding"),
    "two encodings": (COMMIT, HEAD + b"encoding utf-8\nencoding utf-8\n\nx", "duplicate encoding header"),
    "bad utf-8 message": (COMMIT, HEAD + b"encoding UTF-8\n\n\xff\n", "message does not decode as declared"),
    # tree entries: modes
    "submodule": (TREE, entry(b"100644", b"a") + entry(b"160000", b"s"), "entry 1 has mode 160000 (sub"),
    "group-writable mode": (TREE, entry(b"100664", b"a"), "tree: entry 0 has unsupported mode b'100664'"),
    "zero-padded dir mode": (TREE, entry(b"040000", b"d"), "unsupported mode b'040000'"),
    "short mode": (TREE, entry(b"644", b"a"), "unsupported mode"),
    "empty mode": (TREE, entry(b"", b"a"), "unsupported mode b''"),
    "no space": (TREE, b"100644a\0" + HASHY, "tree: entry 0 has no space between mode and name"),
    # tree entries: names
    "empty name": (TREE, entry(b"100644", b""), "tree: entry 0 has an empty name"),
    "slash in name": (TREE, entry(b"100644", b"a/b"), "name contains '/'"),
    "dot": (TREE, entry(b"40000", b"."), "forbidden name '.'"),
    "dot dot": (TREE, entry(b"40000", b".."), "forbidden name '..'"),
    ".git": (TREE, entry(b"40000", b".git"), "forbidden name '.git'"),
    ".GIT file": (TREE, entry(b"100644", b".GIT"), "forbidden name '.GIT'"),
    ".Git": (TREE, entry(b"40000", b".Git"), "forbidden name '.Git'"),
    "non-utf8 name": (TREE, entry(b"100644", b"\xff"), "name is not valid UTF-8"),
    "256-byte name": (TREE, entry(b"100644", b"n" * 256), "name is 256 bytes"),
    # tree entries: order, duplicates, truncation, count
    "duplicate name": (TREE, entry(b"100644", b"a") + entry(b"100644", b"a"), "duplicate entry name 'a'"),
    "file and dir same name": (TREE, entry(b"100644", b"a") + entry(b"40000", b"a"), "duplicate entry name"),
    "unsorted": (TREE, entry(b"100644", b"b") + entry(b"100644", b"a"), "entries not in git order at 'a'"),
    "dir sorts as name/": (TREE, entry(b"40000", b"a") + entry(b"100644", b"a-b"), "git order at 'a-b'"),
    "missing NUL": (TREE, b"100644 a", "tree: entry 0 is truncated"),
    "short oid": (TREE, entry(b"100644", b"a", HASHY[:19]), "tree: entry 0 is truncated"),
    "trailing byte": (TREE, GOOD_TREE + b"1", "tree: entry 4 is truncated"),
    "too many entries": (TREE, many_entries(MAX_TREE_ENTRIES + 1), "tree: more than 4096 entries"),
}


@pytest.mark.parametrize(("kind", "data", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_malformed_objects_rejected(kind: int, data: bytes, reason: str) -> None:
    with pytest.raises(ObjectFormatError) as err:
        check_object(kind, data)
    assert reason in err.value.reason
    assert str(err.value) == err.value.reason and "\n" not in err.value.reason
    assert isinstance(err.value, ValueError)
    with pytest.raises(ObjectFormatError):
        references(kind, data)


def test_references_and_constants() -> None:
    assert ALLOWED_KINDS == {COMMIT, TREE, BLOB}
    assert references(COMMIT, GOOD_COMMIT) == [(HEX_T, TREE), (HEX_P, COMMIT)]
    h = HASHY.hex()
    assert references(TREE, GOOD_TREE) == [(h, BLOB), (h, TREE), (h, BLOB), (h, BLOB)]
    assert references(BLOB, b"tree x") == []
    assert parse_tree(GOOD_TREE)[1] == TreeEntry(0o40000, "lib", h)


def test_error_reasons_stay_one_line_and_short() -> None:
    with pytest.raises(ObjectFormatError) as err:
        check_object(TREE, entry(b"100644", b"x\n" * 100 + b"/"))
    assert "\n" not in err.value.reason and len(err.value.reason) < 120
    with pytest.raises(ObjectFormatError) as err:
        check_object(COMMIT, HEAD + b"encoding " + b"\r\x1b" * 200 + b"\n")
    assert "\n" not in err.value.reason and "\r" not in err.value.reason and len(err.value.reason) < 120


# --- 4. properties: never another exception; whatever is accepted, pygit2 reads ------------------------

def check_against_pygit2(repo: pygit2.Repository, kind: int, data: bytes) -> bool:
    """check_object raises only ObjectFormatError; if it accepts, pygit2 reads the same. True if accepted."""
    try:
        parsed = check_object(kind, data)
    except ObjectFormatError as e:
        assert e.reason and "\n" not in e.reason
        return False
    if kind in (COMMIT, TREE):
        assert pygit2_view(repo, kind, data) == parsed
    return True


def tally(accepted: bool) -> None:
    event("accepted" if accepted else "rejected")  # shown by --hypothesis-show-statistics


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(kind=st.integers(-1, 6), data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_object_format_error(scratch, kind: int, data: bytes) -> None:
    check_against_pygit2(scratch, kind, data)


hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` most of the time, so that generated objects are often valid and reach pygit2."""
    return st.integers(0, 8).flatmap(lambda n: bad if n == 4 else good)  # hypothesis favours the ends


@st.composite
def near_trees(draw: st.DrawFn) -> bytes:
    """Trees built from mostly plausible parts, mostly sorted, so that many get accepted."""
    mode = mostly(st.sampled_from([b"100644", b"100755", b"120000", b"40000"]),
                  st.sampled_from([b"160000", b"040000", b"644", b"", b"100664"]))
    name = mostly(st.text(min_size=1, max_size=6).map(str.encode),
                  st.one_of(st.binary(max_size=4), st.sampled_from([b".git", b".GIT", b"..", b".", b"a/b"])))
    entries = draw(st.lists(st.tuples(mode, name, st.binary(min_size=20, max_size=20)), max_size=6))
    if draw(mostly(st.just(True), st.just(False))):
        entries.sort(key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
    trailer = draw(mostly(st.just(b""), st.sampled_from([b"x", b"\0", b"1 "])))
    return b"".join(entry(*e) for e in entries) + trailer


@st.composite
def near_commits(draw: st.DrawFn) -> bytes:
    """Commits built from mostly plausible header lines (signatures, encodings, continuations)."""
    def sig(role: str) -> bytes:
        plain = st.characters(codec="utf-8", exclude_characters="<>\n\0")
        text = mostly(st.text(plain, max_size=8), st.text(st.characters(codec="utf-8"), max_size=8))
        name, email = draw(text), draw(text)
        ts = draw(mostly(st.integers(0, 2**63 - 1), st.integers(2**63 - 2, 10**21)))
        tz = draw(mostly(st.sampled_from(["+0000", "-0130", "+9999"]), st.sampled_from(["0000", "+00"])))
        return f"{role} {name} <{email}> {ts} {tz}\n".encode()

    parents = draw(mostly(st.lists(hex40, max_size=3), st.lists(hex40, min_size=MAX_PARENTS, max_size=9)))
    lines = [b"tree " + draw(mostly(hex40, st.text(max_size=41))).encode() + b"\n"]
    lines += [b"parent " + p.encode() + b"\n" for p in parents]
    lines += [sig(draw(mostly(st.just("author"), st.just("committer"))))]
    lines += [sig(draw(mostly(st.just("committer"), st.just("author"))))]
    extras = [b"encoding UTF-8\n", b"encoding latin1\n", b"encoding utf8\n", b"encoding Shift_JIS\n", GPGSIG,
              b" stray continuation\n", b"x-custom value\n", b"mergetag object " + HEX_P.encode() + b"\n"]
    lines += draw(st.lists(st.sampled_from(extras), max_size=3))
    message = draw(st.one_of(st.binary(max_size=20), st.text(max_size=10).map(str.encode)))
    return b"".join(lines) + draw(mostly(st.just(b"\n"), st.just(b""))) + message


@PROPERTY
@given(data=near_trees())
def test_generated_trees_accepted_only_if_pygit2_reads_them(scratch, data: bytes) -> None:
    tally(check_against_pygit2(scratch, TREE, data))


@PROPERTY
@given(data=near_commits())
def test_generated_commits_accepted_only_if_pygit2_reads_them(scratch, data: bytes) -> None:
    tally(check_against_pygit2(scratch, COMMIT, data))


@PROPERTY
@given(ts=st.one_of(st.integers(0, 10**20), st.sampled_from([2**63 - 1, 2**63])),
       tz=st.sampled_from([b"+0000", b"-1260", b"+9999", b"+000", b"0000"]),
       encoding=st.sampled_from([b"", b"encoding UTF-8\n", b"encoding utf8\n", b"encoding latin1\n",
                                 b"encoding ISO-8859-1\n", b"encoding UTF-16\n", b"encoding ascii\n"]),
       message=st.one_of(st.binary(max_size=12), st.text(max_size=6).map(str.encode)))
def test_timestamps_and_encodings_agree_with_pygit2(scratch, ts: int, tz: bytes, encoding: bytes,
                                                    message: bytes) -> None:
    """The two places where libgit2/pygit2 fail on otherwise well-formed text: int64 time, named codecs."""
    data = HEAD.replace(b"1735689600 +0100", b"%d %s" % (ts, tz)) + encoding + b"\n" + message
    tally(check_against_pygit2(scratch, COMMIT, data))


VALID = [
    (COMMIT, GOOD_COMMIT),
    (COMMIT, HEAD + GPGSIG + b"encoding UTF-8\n\nsigned \xc3\xa9\n"),
    (COMMIT, ACCEPTED_COMMITS["utf-8 author name"]),
    (TREE, GOOD_TREE),
    (TREE, ACCEPTED_TREES["spaces and unicode"]),
]


def mutate(data: bytes, op: str, pos: int, byte: int) -> bytes:
    pos %= len(data) + (op == "insert")
    if op == "flip":
        return data[:pos] + bytes([data[pos] ^ byte]) + data[pos + 1 :]
    if op == "insert":
        return data[:pos] + bytes([byte]) + data[pos:]
    return data[:pos] + data[pos + 1 :]


@PROPERTY
@given(which=st.sampled_from(VALID), op=st.sampled_from(["flip", "insert", "delete"]),
       pos=st.integers(0, 10_000), byte=st.integers(1, 255))
def test_single_byte_mutations(scratch, which: tuple[int, bytes], op: str, pos: int, byte: int) -> None:
    kind, data = which
    tally(check_against_pygit2(scratch, kind, mutate(data, op, pos, byte)))


@pytest.mark.parametrize(("kind", "data"), VALID[::3], ids=["commit", "tree"])
def test_every_single_byte_substitution_and_deletion(scratch, kind: int, data: bytes) -> None:
    """Exhaustive over positions and byte values for a small commit and tree, not just sampled."""
    accepted = 0
    for pos in range(len(data)):
        accepted += check_against_pygit2(scratch, kind, mutate(data, "delete", pos, 0))
        for byte in range(1, 256):
            accepted += check_against_pygit2(scratch, kind, mutate(data, "flip", pos, byte))
    assert accepted > 0  # sanity: some mutations (message bytes, hex digits) remain valid objects
