"""The embedded research target: files, corpus, harness, and real runs of train.py (a few seconds each)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import small_target

from p2p_research import target

ROOT = Path(__file__).resolve().parents[1]

# sha256 of generate_corpus() with the pinned defaults: changes whenever the generator's output does.
# If you change the generator on purpose, bump prepare.CORPUS_VERSION and update this constant.
CORPUS_SHA256 = "d79d8df4403ef23d31f0995a348c3bb48f08f93286cbc23a1bae8e1a661890c9"
CORPUS_LEN = 3_000_074

TINY_BUDGET = 8 * 16 * 128  # eight steps of the default train.py
SUMMARY_KEYS = [
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_memory_mb",
    "num_params",
    "num_steps",
    "tokens",
    "device",
]


def load_prepare(name: str = "prepare_under_test"):
    """A fresh instance of the packaged prepare.py (its module-level data cache starts empty)."""
    spec = importlib.util.spec_from_file_location(name, target.TARGET_DIR / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("p2p-cache")


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name, data in target.read_target_files().items():
        (ws / name).write_bytes(data)
    return ws


def run_train(ws: Path, cache_dir: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("P2P_") and k != "PYTHONPATH"}
    full.update(
        P2P_CACHE_DIR=str(cache_dir), P2P_BUDGET_TOKENS=str(TINY_BUDGET), P2P_DEVICE="cpu", P2P_SEED="0"
    )
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "train.py"],
        cwd=ws,
        env=full,
        capture_output=True,
        text=True,
        timeout=600,  # generous: the machine may be shared
        check=False,
    )


def parse_summary(stdout: str) -> dict[str, str]:
    lines = stdout.splitlines()
    assert "---" in lines, stdout
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1 :]
    out = {}
    for line in block:
        m = re.fullmatch(r"(\w+):\s+(\S+)", line)
        assert m, f"bad summary line {line!r}"
        out[m.group(1)] = m.group(2)
    return out


# --- package layout -------------------------------------------------------------------------------


def test_package_exports():
    assert target.TARGET_FILES == ("prepare.py", "train.py", "program.md")
    assert target.HARNESS_FILES == ("prepare.py",)
    assert target.EDITABLE_FILE == "train.py"
    assert target.PROGRAM_FILE == "program.md"
    files = target.read_target_files()
    assert list(files) == list(target.TARGET_FILES)
    assert all(isinstance(v, bytes) and v for v in files.values())


def test_root_program_md_is_the_packaged_one():
    assert (ROOT / "program.md").read_bytes() == (target.TARGET_DIR / "program.md").read_bytes()


def test_train_does_not_import_p2p_research():
    tree = ast.parse((target.TARGET_DIR / "train.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("p2p_research") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("p2p_research")


def top_level_constants(source: str) -> dict[str, object]:
    out = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
        ):
            assert isinstance(node.value, ast.Constant), f"{node.targets[0].id} is not a plain literal"
            out[node.targets[0].id] = node.value.value
    return out


def test_search_space_matches_train_constants():
    md = (target.TARGET_DIR / "program.md").read_text()
    m = re.search(r"^```toml search-space\n(.*?)^```", md, re.DOTALL | re.MULTILINE)
    assert m, "no ```toml search-space block"
    space = tomllib.loads(m.group(1))
    consts = top_level_constants((target.TARGET_DIR / "train.py").read_text())
    assert 15 <= len(consts) <= 25
    assert space
    for name, spec in space.items():
        assert name in consts, name
        value = consts[name]
        kind = spec["kind"]
        if kind == "choice":
            assert value in spec["choices"], (name, value)
        elif kind == "bool":
            assert isinstance(value, bool), name
        else:
            assert kind in ("int", "float"), name
            assert type(value) is (int if kind == "int" else float), name
            assert spec["low"] <= value <= spec["high"], (name, value)
            if spec.get("log"):
                assert spec["low"] > 0
    # every N_EMBD choice is divisible by every N_HEAD choice, with an even head size (RoPE)
    for e in space["N_EMBD"]["choices"]:
        for h in space["N_HEAD"]["choices"]:
            assert e % h == 0 and (e // h) % 2 == 0


# --- harness --------------------------------------------------------------------------------------


def test_corpus_is_deterministic(cache_dir, monkeypatch):
    prep = load_prepare()
    a = prep.generate_corpus()
    b = load_prepare("prepare_again").generate_corpus()
    assert a == b
    assert len(a) == CORPUS_LEN
    assert hashlib.sha256(a).hexdigest() == CORPUS_SHA256
    assert a.isascii()
    # the cache: written atomically on first use, read back later
    monkeypatch.setenv("P2P_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("P2P_DATA", raising=False)
    assert prep.default_corpus() == a
    path = prep.corpus_cache_path()
    assert path.parent == cache_dir and path.read_bytes() == a
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_unigram_and_split(cache_dir, monkeypatch):
    monkeypatch.setenv("P2P_CACHE_DIR", str(cache_dir))
    monkeypatch.delenv("P2P_DATA", raising=False)
    prep = load_prepare()
    train, val = prep.split_bytes()
    assert len(train) + len(val) == CORPUS_LEN
    assert len(val) == int(CORPUS_LEN * prep.VAL_FRACTION)
    starts = prep.eval_window_starts(len(val))
    assert len(starts) == prep.EVAL_WINDOWS and starts[-1] + prep.EVAL_CONTEXT + 1 == len(val)
    u = prep.unigram_bpb()
    assert 3.5 < u < 6.0


def test_budget_env(monkeypatch):
    prep = load_prepare()
    monkeypatch.delenv("P2P_BUDGET_TOKENS", raising=False)
    monkeypatch.delenv("P2P_BUDGET_SECONDS", raising=False)
    assert prep.get_budget() == prep.Budget(tokens=prep.DEFAULT_BUDGET_TOKENS, seconds=None)
    monkeypatch.setenv("P2P_BUDGET_SECONDS", "2.5")
    b = prep.get_budget()
    assert b == prep.Budget(tokens=None, seconds=2.5)
    assert b.progress(10**9, 1.25) == 0.5
    monkeypatch.setenv("P2P_BUDGET_TOKENS", "1000")
    b = prep.get_budget()
    assert b.progress(500, 2.0) == 0.8 and b.progress(900, 0.0) == 0.9
    monkeypatch.setenv("P2P_BUDGET_TOKENS", "lots")
    with pytest.raises(SystemExit):
        prep.get_budget()


def test_user_data_folder(tmp_path, monkeypatch):
    folder = tmp_path / "texts"
    (folder / "b").mkdir(parents=True)
    (folder / "b" / "z.txt").write_bytes(b"3" * 1000)
    (folder / "a.txt").write_bytes(b"1" * 1000)
    (folder / "b" / "a.txt").write_bytes(b"2" * 1000)
    monkeypatch.setenv("P2P_DATA", str(folder))
    prep = load_prepare()
    assert prep.load_text() == b"1" * 1000 + b"2" * 1000 + b"3" * 1000
    (folder / "tiny").mkdir()
    monkeypatch.setenv("P2P_DATA", str(folder / "tiny"))
    with pytest.raises(SystemExit):
        load_prepare().load_text()


# --- real runs of train.py ------------------------------------------------------------------------


@pytest.mark.slow
def test_train_runs_and_is_deterministic(workspace, cache_dir):
    """On the tests' target (the default train.py with a smaller model, conftest.SMALL_MODEL): two runs of
    the default model here cost 16 CPU-s and said no more; test_train_on_user_data runs the default one."""
    train = workspace / "train.py"
    train.write_bytes((small_target() / "train.py").read_bytes())
    first = run_train(workspace, cache_dir)
    assert first.returncode == 0, first.stderr
    s1 = parse_summary(first.stdout)
    assert list(s1) == SUMMARY_KEYS
    bpb = float(s1["val_bpb"])
    assert math.isfinite(bpb) and 0 < bpb < 8
    assert s1["device"] == "cpu"
    assert int(s1["num_steps"]) == 8 and int(s1["tokens"]) == TINY_BUDGET
    assert int(s1["num_params"]) > 0 and float(s1["peak_memory_mb"]) > 0
    assert float(s1["total_seconds"]) >= float(s1["training_seconds"]) >= 0
    second = run_train(workspace, cache_dir)
    assert second.returncode == 0, second.stderr
    assert parse_summary(second.stdout)["val_bpb"] == s1["val_bpb"]


def test_train_on_user_data(workspace, cache_dir, tmp_path):
    text = tmp_path / "my.txt"
    line = "the quick brown fox jumps over the lazy dog; {} little pigs.\n"
    text.write_text("".join(line.format(i % 7) for i in range(200)))
    res = run_train(workspace, cache_dir, P2P_DATA=text)
    assert res.returncode == 0, res.stderr
    bpb = float(parse_summary(res.stdout)["val_bpb"])
    assert math.isfinite(bpb) and bpb > 0


def test_train_missing_data_path(workspace, cache_dir, tmp_path):
    missing = tmp_path / "nope" / "data.txt"
    res = run_train(workspace, cache_dir, P2P_DATA=missing)
    assert res.returncode != 0
    assert "P2P_DATA" in res.stderr and str(missing) in res.stderr
    assert "---" not in res.stdout.splitlines()


def test_train_divergence_exits_3(workspace, cache_dir):
    src = (workspace / "train.py").read_text()
    src, n = re.subn(r"^LEARNING_RATE = [^#\n]*", "LEARNING_RATE = 1e30 ", src, flags=re.MULTILINE)
    assert n == 1
    src = re.sub(r"^WARMUP_FRAC = [^#\n]*", "WARMUP_FRAC = 0.0 ", src, flags=re.MULTILINE)
    (workspace / "train.py").write_text(src)
    res = run_train(workspace, cache_dir)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert "diverged" in res.stderr
    assert "---" not in res.stdout.splitlines()
