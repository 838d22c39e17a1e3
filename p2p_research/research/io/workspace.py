"""A node's git workspace (pygit2): genesis, experiment commits, the baseline ref, object exchange.

Every node of a swarm starts from the same deterministic genesis commit (fixed author, date and
message), so commit and tree ids agree everywhere and an experiment can be named by its tree.
Experiments are commits whose parent is a baseline commit, kept under `refs/p2p/exp/<id>` whether kept
or discarded (the swarm wants negative results too); `refs/heads/main` is the baseline and advances
on keep or adoption. The working tree always shows the baseline, so an agent edits from there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pygit2

from p2p_research.errors import P2PResearchError
from p2p_research.research.gitparse import ObjectFormatError, check_object, references

log = logging.getLogger("p2p_research.workspace")

GENESIS_SIGNATURE = ("p2p-research", "genesis@p2p-research.invalid", 1735689600, 0)  # 2025-01-01T00:00Z
GENESIS_MESSAGE = "genesis: research target\n"
BASELINE_REF = "refs/heads/main"
EXP_REF_PREFIX = "refs/p2p/exp/"
IGNORED = ("SWARM.md", "__pycache__/", "*.pyc", "run.log")

KIND_NAMES = {1: "commit", 2: "tree", 3: "blob", 4: "tag"}
#: written to .git once every object of the repo has passed gitparse's checks (repos made by versions
#: that only checked ids are scanned once at start)
OBJECTS_CHECKED_MARK = "p2p-objects-checked"
OBJECTS_CHECK_VERSION = "1"
MAX_KNOWN_COMPLETE = 65536  # commits remembered as complete (about 6 MB of ids)


class WorkspaceError(P2PResearchError):
    pass


def git_object_id(kind: int, data: bytes) -> str:
    """Git's id of an object: sha1 over "<type> <size>\\0" and the content."""
    header = f"{KIND_NAMES[kind]} {len(data)}".encode() + b"\0"
    return hashlib.sha1(header + data).hexdigest()


@dataclass(frozen=True)
class RawObject:
    oid: str
    kind: int
    data: bytes


def _sig(name: str, email: str, t: int, offset: int = 0) -> pygit2.Signature:
    return pygit2.Signature(name, email, t, offset)


class Workspace:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.repo = pygit2.Repository(str(self.path))
        except pygit2.GitError as e:
            raise WorkspaceError(f"no git workspace at {self.path}: {e}") from None
        # commits found complete: objects leave the repo only by quarantine_malformed, so a commit stays so
        self._complete: set[str] = set()

    # --- creation ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, files: dict[str, bytes]) -> Workspace:
        """Create the repository with the deterministic genesis commit of `files`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        repo = pygit2.init_repository(str(path), initial_head="main")
        exclude = path / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join(IGNORED) + "\n")
        tree = cls._tree_from_files(repo, files)
        sig = _sig(*GENESIS_SIGNATURE)
        repo.create_commit(BASELINE_REF, sig, sig, GENESIS_MESSAGE, tree, [])
        ws = cls(path)
        ws.checkout_baseline()
        return ws

    @staticmethod
    def _tree_from_files(repo: pygit2.Repository, files: dict[str, bytes]) -> pygit2.Oid:
        tb = repo.TreeBuilder()
        for name in sorted(files):
            if "/" in name:
                raise WorkspaceError(f"target files must be flat, got {name}")
            tb.insert(name, repo.create_blob(files[name]), pygit2.GIT_FILEMODE_BLOB)
        return tb.write()

    # --- reading ----------------------------------------------------------------------------------
    @property
    def genesis(self) -> str:
        walker = self.repo.walk(self.repo.references[BASELINE_REF].target, pygit2.GIT_SORT_TOPOLOGICAL | pygit2.GIT_SORT_REVERSE)
        return str(next(iter(walker)).id)

    @property
    def baseline(self) -> str:
        return str(self.repo.references[BASELINE_REF].target)

    def commit(self, commit_id: str) -> pygit2.Commit:
        try:
            obj = self.repo[commit_id]
        except (KeyError, ValueError):
            raise WorkspaceError(f"unknown commit {commit_id}") from None
        except pygit2.GitError as e:  # a corrupt object; gitparse keeps new ones out, the start scan old ones
            raise WorkspaceError(f"commit {commit_id} cannot be read: {e}") from None
        if not isinstance(obj, pygit2.Commit):
            raise WorkspaceError(f"{commit_id} is not a commit")
        return obj

    def has_object(self, oid: str) -> bool:
        try:
            return pygit2.Oid(hex=oid) in self.repo.odb
        except ValueError:
            return False

    def files_of(self, commit_id: str) -> dict[str, bytes]:
        """The flat files of a commit's tree (WorkspaceError when objects of it are missing)."""
        try:
            tree = self.commit(commit_id).tree
            out = {}
            for entry in tree:
                obj = self.repo[entry.id]
                if isinstance(obj, pygit2.Blob):
                    out[entry.name] = obj.data
        except (pygit2.GitError, KeyError, ValueError) as e:
            raise WorkspaceError(f"commit {commit_id[:10]} is incomplete here: {e}") from None
        return out

    def tree_modes(self, commit_id: str) -> dict[str, int]:
        """Every top-level entry of a commit's tree and its git file mode (subtrees and symlinks included,
        which :meth:`files_of` leaves out)."""
        try:
            return {e.name: int(e.filemode) for e in self.commit(commit_id).tree}
        except (pygit2.GitError, KeyError, ValueError) as e:
            raise WorkspaceError(f"commit {commit_id[:10]} is incomplete here: {e}") from None

    def tree_of(self, commit_id: str) -> str:
        return str(self.commit(commit_id).tree_id)

    def parent_of(self, commit_id: str) -> str | None:
        c = self.commit(commit_id)
        return str(c.parent_ids[0]) if c.parent_ids else None

    def tree_with(self, base_commit: str, changes: dict[str, bytes]) -> str:
        """Tree id of the base commit's files with `changes` applied (writes the objects: cheap, idempotent).

        Where the base tree holds regular files only (every tree this node builds), the changed files
        are inserted into it and the others are not read or hashed again: the built-in proposer asks for
        the id of every candidate it considers (measured: a tenth of a busy node's main thread)."""
        if any(c in name for name in changes for c in "/\0"):
            raise WorkspaceError("target files must be flat")
        try:
            base = self.commit(base_commit).tree
            if all(e.filemode == pygit2.GIT_FILEMODE_BLOB for e in base):
                tb = self.repo.TreeBuilder(base)
                for name, data in changes.items():
                    tb.insert(name, self.repo.create_blob(data), pygit2.GIT_FILEMODE_BLOB)
                return str(tb.write())
        except (pygit2.GitError, KeyError, ValueError) as e:
            raise WorkspaceError(f"commit {base_commit[:10]} is incomplete here: {e}") from None
        files = self.files_of(base_commit)
        files.update(changes)
        return str(self._tree_from_files(self.repo, files))

    def diff(self, commit_id: str) -> str:
        c = self.commit(commit_id)
        if not c.parents:
            return ""
        return self.repo.diff(c.parents[0], c).patch or ""

    # --- writing ----------------------------------------------------------------------------------
    def commit_experiment(self, parent: str, changes: dict[str, bytes], message: str, exp_id: str,
                          author: tuple[str, str] = ("p2p-research node", "node@p2p-research.invalid")) -> str:
        """Commit `changes` on top of `parent` under refs/p2p/exp/<exp_id>; returns the commit id."""
        tree = self.tree_with(parent, changes)
        ref = EXP_REF_PREFIX + exp_id
        if ref in self.repo.references:
            existing = self.commit(str(self.repo.references[ref].target))
            if str(existing.tree_id) == tree and str(existing.parent_ids[0]) == parent:
                return str(existing.id)
        sig = _sig(author[0], author[1], int(time.time()))
        oid = self.repo.create_commit(None, sig, sig, message, pygit2.Oid(hex=tree), [pygit2.Oid(hex=parent)])
        self.repo.references.create(ref, oid, force=True)
        return str(oid)

    def set_experiment_ref(self, exp_id: str, commit_id: str) -> None:
        self.commit(commit_id)
        self.repo.references.create(EXP_REF_PREFIX + exp_id, pygit2.Oid(hex=commit_id), force=True)

    def set_baseline(self, commit_id: str) -> None:
        """Advance the baseline to `commit_id` and show it in the working tree."""
        self.commit(commit_id)
        self.repo.references.create(BASELINE_REF, pygit2.Oid(hex=commit_id), force=True)
        self.checkout_baseline()

    def checkout_baseline(self) -> None:
        self.repo.set_head(BASELINE_REF)
        self.repo.checkout_head(strategy=pygit2.GIT_CHECKOUT_FORCE)

    def worktree_changes(self) -> tuple[dict[str, bytes], list[str]]:
        """Files an agent changed in the working tree against the baseline: (changed/added, deleted)."""
        base = self.files_of(self.baseline)
        changed: dict[str, bytes] = {}
        deleted: list[str] = []
        status = self.repo.status(untracked_files="all")
        for path, flags in status.items():
            if flags & pygit2.GIT_STATUS_IGNORED:
                continue
            p = self.path / path
            if p.exists() and p.is_file():
                data = p.read_bytes()
                if base.get(path) != data:
                    changed[path] = data
            elif path in base:
                deleted.append(path)
        return changed, deleted

    def materialize(self, commit_id: str, dest: Path) -> list[str]:
        """Write a commit's files into `dest` (a run directory), so training never touches the worktree;
        returns their names (the caller removes them after the run)."""
        dest.mkdir(parents=True, exist_ok=True)
        files = self.files_of(commit_id)
        for name, data in files.items():
            (dest / name).write_bytes(data)
        return list(files)

    # --- object exchange ------------------------------------------------------------------------
    def read_object(self, oid: str) -> RawObject | None:
        try:
            kind, data = self.repo.odb.read(pygit2.Oid(hex=oid))
        except (KeyError, ValueError, pygit2.GitError):
            return None
        return RawObject(oid, int(kind), bytes(data))

    def new_objects(self, commit_id: str) -> list[RawObject]:
        """The objects a receiver that has the parent commit lacks: the commit, changed trees and blobs."""
        return [o for o, _ in self.new_objects_with_bases(commit_id)]

    def new_objects_with_bases(self, commit_id: str) -> list[tuple[RawObject, str | None]]:
        """:meth:`new_objects`, each paired with the id of the blob it replaces at the same path in the
        parent commit's tree, or None (the commit, trees, added files, a blob that replaces a tree).

        A receiver that has the parent has that base blob, so a changed blob can travel as a delta
        against it (wire ``DeltaObject``).
        """
        c = self.commit(commit_id)
        parent_tree = c.parents[0].tree if c.parents else None
        out: list[tuple[RawObject | None, str | None]] = [(self.read_object(str(c.id)), None)]
        out += self._tree_delta(c.tree, parent_tree)
        return [(o, base) for o, base in out if o is not None]

    def _tree_delta(self, tree: pygit2.Tree, old: pygit2.Tree | None
                    ) -> list[tuple[RawObject | None, str | None]]:
        if old is not None and tree.id == old.id:
            return []
        out: list[tuple[RawObject | None, str | None]] = [(self.read_object(str(tree.id)), None)]
        old_entries = {e.name: e for e in old} if old is not None else {}
        for e in tree:
            prev = old_entries.get(e.name)
            if prev is not None and prev.id == e.id:
                continue
            obj = self.repo[e.id]
            if isinstance(obj, pygit2.Tree):
                prev_obj = self.repo[prev.id] if prev is not None else None
                out += self._tree_delta(obj, prev_obj if isinstance(prev_obj, pygit2.Tree) else None)
            else:
                base = str(prev.id) if prev is not None and prev.type_str == "blob" else None
                out.append((self.read_object(str(e.id)), base))
        return out

    def kind_of(self, oid: str) -> int | None:
        """The kind of an object present here (None when absent or unreadable), without reading it whole."""
        try:
            return int(self.repo.odb.read_header(pygit2.Oid(hex=oid))[0])
        except (KeyError, ValueError, pygit2.GitError, AttributeError):
            obj = self.read_object(oid)
            return obj.kind if obj is not None else None

    def write_objects(self, objects: list[RawObject]) -> None:
        """Write received objects after checking each one: its id, that it parses as its kind (commit
        with a tree and parents, tree with valid entries, modes and order, blob within the size cap;
        never a tag), and that what it refers to and this repo already holds (or the batch brings)
        has the kind it is referred to as. Nothing of a refused batch is written."""
        batch_kinds = {o.oid: o.kind for o in objects}
        for o in objects:
            if o.kind not in KIND_NAMES:
                raise WorkspaceError(f"object {o.oid}: unknown kind {o.kind}")
            computed = git_object_id(o.kind, o.data)
            if computed != o.oid:
                raise WorkspaceError(f"object {o.oid}: content hashes to {computed}, refused")
            try:
                refs = references(o.kind, o.data)  # parses the object fully (gitparse.check_object)
            except ObjectFormatError as e:
                raise WorkspaceError(f"object {o.oid}: malformed {KIND_NAMES[o.kind]}: {e.reason}") from None
            for ref, want in refs:
                have = batch_kinds.get(ref) or self.kind_of(ref)
                if want is not None and have is not None and have != want:
                    raise WorkspaceError(f"object {o.oid}: refers to {ref[:10]} as a {KIND_NAMES[want]}, "
                                         f"but it is a {KIND_NAMES.get(have, have)}")
        for o in objects:
            self.repo.odb.write(o.kind, o.data)

    def quarantine_malformed(self) -> list[str]:
        """Move objects that fail gitparse's checks (written by a version that only checked ids) out of
        the repo, into .git/quarantine/, and drop experiment refs that point at them. Runs once per
        repo and check version; returns the quarantined ids."""
        git = Path(self.repo.path)
        mark = git / OBJECTS_CHECKED_MARK
        if mark.exists() and mark.read_text().strip() == OBJECTS_CHECK_VERSION:
            return []
        own = self._reachable_from_branches()  # this node's own history: never peer objects' size caps
        bad: list[str] = []
        for oid in list(self.repo.odb):
            if str(oid) in own:
                continue
            try:
                kind, data = self.repo.odb.read(oid)
                check_object(int(kind), bytes(data))
            except (ObjectFormatError, pygit2.GitError, KeyError, ValueError) as e:
                bad.append(str(oid))
                log.warning("quarantined object %s: %s", oid, getattr(e, "reason", e))
        if bad:
            qdir = git / "quarantine"
            qdir.mkdir(exist_ok=True)
            for oid in bad:
                loose = git / "objects" / oid[:2] / oid[2:]
                if loose.exists():
                    loose.replace(qdir / oid)
                else:
                    log.error("object %s is malformed but not loose (packed); it stays, unreferenced", oid)
            self.repo = pygit2.Repository(str(self.path))  # drop libgit2's caches of what moved
            self._complete.clear()  # the one place objects leave the repo
            for name in list(self.repo.references):
                if name.startswith(EXP_REF_PREFIX):
                    target = str(self.repo.references[name].target)
                    if target in bad:
                        self.repo.references.delete(name)
        mark.write_text(OBJECTS_CHECK_VERSION + "\n")
        return bad

    def _reachable_from_branches(self) -> set[str]:
        """Ids of every object reachable from refs/heads/* (the baseline's whole history)."""
        out: set[str] = set()
        for name in list(self.repo.references):
            if not name.startswith("refs/heads/"):
                continue
            try:
                for c in self.repo.walk(self.repo.references[name].target, pygit2.GIT_SORT_NONE):
                    if str(c.id) in out:
                        continue
                    out.add(str(c.id))
                    stack = [c.tree]
                    while stack:
                        t = stack.pop()
                        out.add(str(t.id))
                        for e in t:
                            out.add(str(e.id))
                            if e.type_str == "tree":
                                stack.append(self.repo[e.id])
            except (pygit2.GitError, KeyError, ValueError) as e:
                log.warning("walking %s for the object check: %s", name, e)
        return out

    def is_complete(self, commit_id: str) -> bool:
        """Whether the commit, its tree and every blob under it are present. Remembered once true (up to
        MAX_KNOWN_COMPLETE commits): the builtin proposer asks it of every win and its parent at every
        proposal, and each walk read every blob of the tree (4 % of a busy node's main thread)."""
        if commit_id in self._complete:
            return True
        if self._walk_complete(commit_id):
            if len(self._complete) >= MAX_KNOWN_COMPLETE:
                self._complete.clear()
            self._complete.add(commit_id)
            return True
        return False

    def _walk_complete(self, commit_id: str) -> bool:
        if not self.has_object(commit_id):
            return False
        try:
            c = self.commit(commit_id)
            stack = [c.tree]
            while stack:
                t = stack.pop()
                for e in t:
                    if not self.has_object(str(e.id)):
                        return False
                    obj = self.repo[e.id]
                    if isinstance(obj, pygit2.Tree):
                        stack.append(obj)
            return all(self.has_object(str(p)) for p in c.parent_ids)
        except (KeyError, WorkspaceError):
            return False
