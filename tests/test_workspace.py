import pygit2
import pytest

from p2p_research.research.io.workspace import RawObject, Workspace, WorkspaceError, git_object_id
from p2p_research.target import read_target_files


def test_genesis_is_deterministic(tmp_path):
    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    b = Workspace.create(tmp_path / "b", files)
    assert a.genesis == b.genesis == a.baseline
    assert (tmp_path / "a" / "train.py").read_bytes() == files["train.py"]


def test_experiment_objects_travel_and_verify(tmp_path):
    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    b = Workspace.create(tmp_path / "b", files)
    new_train = files["train.py"] + b"\n# changed\n"
    commit = a.commit_experiment(a.baseline, {"train.py": new_train}, "msg", "e" * 40)
    objs = a.new_objects(commit)
    assert {o.kind for o in objs} == {1, 2, 3} and len(objs) == 3
    assert sum(len(o.data) for o in objs) < 64 * 1024
    assert not b.is_complete(commit)
    b.write_objects(objs)
    assert b.is_complete(commit)
    assert b.files_of(commit)["train.py"] == new_train
    assert "changed" in b.diff(commit)
    # a forged object is refused before anything is written
    bad = RawObject(objs[2].oid, 3, objs[2].data + b"evil")
    c = Workspace.create(tmp_path / "c", files)
    with pytest.raises(WorkspaceError):
        c.write_objects([bad])
    assert not c.has_object(git_object_id(3, bad.data))


def test_a_commit_found_complete_is_remembered_and_one_arriving_is_asked_again(tmp_path, monkeypatch):
    """The builtin proposer asks whether each win and its parent are complete at every proposal: a
    commit found complete is not walked again (objects only leave the repo by quarantine), one whose
    objects are still arriving is asked again until they are here."""
    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    b = Workspace.create(tmp_path / "b", files)
    commit = a.commit_experiment(a.baseline, {"train.py": files["train.py"] + b"\n# changed\n"}, "msg", "e" * 40)
    objs = a.new_objects(commit)
    walks = []
    real = b._walk_complete
    monkeypatch.setattr(b, "_walk_complete", lambda c: walks.append(c) or real(c))
    b.write_objects([o for o in objs if o.kind != 3])  # the commit and its tree, not the new blob yet
    assert not b.is_complete(commit) and not b.is_complete(commit) and len(walks) == 2
    b.write_objects(objs)
    assert all(b.is_complete(commit) for _ in range(5)) and len(walks) == 3


def test_git_object_id_matches_libgit2():
    assert git_object_id(3, b"hello\n") == str(pygit2.hash(b"hello\n"))


def test_set_baseline_checks_out(tmp_path):
    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    commit = a.commit_experiment(a.baseline, {"train.py": b"X = 1\n"}, "m", "f" * 40)
    a.set_baseline(commit)
    assert (tmp_path / "a" / "train.py").read_bytes() == b"X = 1\n"
    assert a.baseline == commit and a.parent_of(commit) == a.genesis


def test_incomplete_ancestry_finds_a_missing_ancestor_tree(tmp_path):
    from p2p_research.research.io.objects import incomplete_ancestry

    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    b = Workspace.create(tmp_path / "b", files)
    c1 = a.commit_experiment(a.baseline, {"train.py": files["train.py"] + b"\n# 1\n"}, "one", "1" * 40)
    c2 = a.commit_experiment(c1, {"train.py": files["train.py"] + b"\n# 2\n"}, "two", "2" * 40)
    objs1, objs2 = a.new_objects(c1), a.new_objects(c2)
    b.write_objects(objs2 + [o for o in objs1 if o.kind == 1])   # c1's commit but not its tree/blob
    tree1 = [o for o in objs1 if o.kind == 2]
    assert incomplete_ancestry(b, c2) == [tree1[0].oid]
    with pytest.raises(WorkspaceError):
        b.files_of(c1)
    b.write_objects(tree1)  # the blob under it is discovered once the tree is there
    assert incomplete_ancestry(b, c2) == [o.oid for o in objs1 if o.kind == 3]
    b.write_objects([o for o in objs1 if o.kind == 3])
    assert incomplete_ancestry(b, c2) == [] and b.files_of(c1)["train.py"].endswith(b"# 1\n")
