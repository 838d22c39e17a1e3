import pygit2
import pytest

from p2p_research.research.workspace import RawObject, Workspace, WorkspaceError, git_object_id
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


def test_git_object_id_matches_libgit2():
    assert git_object_id(3, b"hello\n") == str(pygit2.hash(b"hello\n"))


def test_set_baseline_checks_out(tmp_path):
    files = read_target_files()
    a = Workspace.create(tmp_path / "a", files)
    commit = a.commit_experiment(a.baseline, {"train.py": b"X = 1\n"}, "m", "f" * 40)
    a.set_baseline(commit)
    assert (tmp_path / "a" / "train.py").read_bytes() == b"X = 1\n"
    assert a.baseline == commit and a.parent_of(commit) == a.genesis
