"""An autoresearch folder for tests: the fixture with its own interpreter and data, node homes on it,
and what the tests read back (results.tsv rows, local runs). Shared by the autoresearch tests, the code
dedup tests and bench/bench_harness.py."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ROOT, SHARED_ENV, run_cli

from p2p_research.home import NodeHome

FIXTURE = ROOT / "tests" / "fixtures" / "autoresearch"
KERNELS = ROOT / "tests" / "fixtures" / "autoresearch_env" / "kernels"
FAKES = ROOT / "tests" / "fake_agents"
ADAPTERS = ROOT / "examples" / "proposers"


def autoresearch_folder(dest: Path | None = None) -> Path:
    """The fixture with its own interpreter in `.venv`: torch through a .pth file to this interpreter's
    packages, plus a `kernels` module that only it has (as autoresearch's env does).

    With no `dest`: one copy for the whole test session, made by the first test that asks
    (under a lock, on whichever worker). The tests only read the folder (`test_init_takes_the_folder_as_it_is`
    checks that a node leaves it as it is), and one folder means one interpreter path: a warm interpreter
    is one per interpreter (research/io/warmstart.py `key_of`), so the session's runs fork from one pair
    (torch, torch with TorchDynamo) instead of one pair per test, 3-5 CPU-s of imports each
    (docs/testing.md)."""
    if dest is not None:
        return _make_folder(dest)
    shared = os.environ[SHARED_ENV]  # set by conftest, which this module imports
    dest = Path(shared) / "autoresearch"
    with open(Path(shared) / "autoresearch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        ready = Path(shared) / "autoresearch.ready"
        if not ready.exists():
            shutil.rmtree(dest, ignore_errors=True)  # a copy a failed test process left half made
            _make_folder(dest)
            ready.touch()
    return dest


def _make_folder(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    venv = dest / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_node_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(KERNELS, Path(site, "kernels"))
    # its data, as `uv run prepare.py` writes it (~/.cache/autoresearch-fixture: generated, no network),
    # once per test process: every copy reads the one cache, and each run of prepare.py (torch imported,
    # both splits tokenized) cost about 2 CPU-s
    if not _prepared:
        subprocess.run([str(venv / "bin" / "python"), "prepare.py"], cwd=dest, check=True, capture_output=True)
        _prepared.append(dest)
    return dest


_prepared: list[Path] = []  # the copy whose prepare.py wrote this process's data


def cli(*args, env=None, timeout=300, check=False) -> subprocess.CompletedProcess:
    r = run_cli(args, timeout=timeout, env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: {r.stderr[-3000:]}")
    return r


def init_node(tmp_path: Path, name: str, folder: Path, tolerance: float | None = None, **research) -> Path:
    home = tmp_path / name
    out = cli("init", "--home", home, "--target", folder, check=True).stdout
    assert "TIME_BUDGET = 2 in prepare.py" in out, out
    h = NodeHome(home)
    cfg = h.load_config()
    if shutil.which("uv"):  # the fixture's uv.lock is not installable here: use its interpreter
        cfg.research.train_command = f"{folder / '.venv' / 'bin' / 'python'} train.py"
    research.setdefault("threads", 1)
    research.setdefault("noise_runs", 0)
    for key, value in research.items():
        setattr(cfg.research, key, value)
    if tolerance is not None:
        cfg.verification.tolerance = tolerance
    h.write_config(cfg.validate())
    return home


def tsv_rows(home: Path) -> list[dict]:
    lines = (home / "results.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def local_runs(home: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{home / 'ledger.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM runs WHERE origin='local' ORDER BY run_id")]
    db.close()
    return rows


def agent_env(**extra) -> dict:
    return {"PATH": f"{FAKES}{os.pathsep}{os.environ['PATH']}", **extra}
