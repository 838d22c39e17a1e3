"""What a `pip install` of the built wheel gets: the embedded target and the ready profiles."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_wheel_ships_the_profiles_and_init_profile_works_from_it(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                        str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = dist.glob("p2p_research-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("laptop.toml", "relay.toml", "research.toml"):
        assert f"p2p_research/profiles/{f}" in names
    for f in ("prepare.py", "train.py", "program.md"):
        assert f"p2p_research/target/{f}" in names
    for f in ("index.html", "app.js", "style.css"):  # the dashboard works offline from the wheel
        assert f"p2p_research/dashboard/static/{f}" in names
    # installed as a wheel installs it (unpacked, no checkout beside it), the profile is found
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "p2p_research", "init", "--home", str(tmp_path / "home"), "--profile",
                        "laptop", "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    toml = (tmp_path / "home" / "node.toml").read_text()
    assert "threads = 1" in toml and "budget_tokens = 250000" in toml
    r = subprocess.run([sys.executable, "-c", "import p2p_research; print(p2p_research.__file__)"], capture_output=True,
                       text=True, cwd=tmp_path, env=env)
    assert r.stdout.startswith(str(site))


def test_every_error_of_the_package_derives_from_its_one_root():
    """One `except P2PResearchError` (the CLI's one-line errors, fault boundaries) tells the project's
    own refusals from bugs: every public exception class the package defines derives from it (a
    private one is a signal that never leaves its module; the two sandbox scripts import nothing of
    the package)."""
    import importlib
    import inspect
    import pkgutil

    import p2p_research
    from p2p_research.errors import P2PResearchError

    outside = []
    for m in pkgutil.walk_packages(p2p_research.__path__, "p2p_research."):
        if m.name in ("p2p_research.harness.handover", "p2p_research.harness.evaluate", "p2p_research.__main__") \
                or m.name.startswith("p2p_research.target."):
            continue
        module = importlib.import_module(m.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == m.name and issubclass(cls, BaseException) and not name.startswith("_")
                    and not issubclass(cls, P2PResearchError)):
                outside.append(f"{m.name}.{name}")
    assert not outside, outside


def test_every_broad_except_that_swallows_says_why_it_is_a_fault_boundary():
    """`except Exception` (or BaseException) that does not raise again is a fault boundary: a peer's
    stream, a libp2p internal, untrusted code's output, best-effort cleanup. Each says which, in the
    form `# noqa: BLE001 - <why>` on its line, so a new one without a reason fails here."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "p2p_research"
    silent = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.ExceptHandler) or node.type is None:
                continue
            if not {"Exception", "BaseException"} & {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}:
                continue
            if any(isinstance(n, ast.Raise) for statement in node.body for n in ast.walk(statement)):
                continue  # cleanup, then the same error goes on
            line = lines[node.lineno - 1]
            if "noqa: BLE001 - " not in line or not line.split("noqa: BLE001 - ", 1)[1].strip():
                silent.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not silent, silent
