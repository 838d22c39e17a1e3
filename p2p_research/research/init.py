"""Creating a node home: node.toml and the workspace with its deterministic genesis commit."""

from __future__ import annotations

import tomllib
from pathlib import Path

from p2p_research.config import ConfigError, NodeConfig, config_from_dict
from p2p_research.home import HomeError, NodeHome
from p2p_research.research.workspace import Workspace

TARGET_FILES = ("prepare.py", "train.py", "program.md")


def profiles_dir() -> Path:
    """The project's `nodes/` folder of ready profiles (next to the package in a checkout)."""
    return Path(__file__).resolve().parents[2] / "nodes"


def list_profiles() -> list[str]:
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_profile(profile: str) -> NodeConfig:
    p = Path(profile)
    if not p.suffix:
        p = profiles_dir() / f"{profile}.toml"
    if not p.is_file():
        known = ", ".join(list_profiles()) or "none found"
        raise HomeError(f"unknown profile {profile!r} (known: {known})")
    try:
        return config_from_dict(tomllib.loads(p.read_text()))
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        raise HomeError(f"profile {p}: {e}") from None


def read_target(target: Path | None) -> dict[str, bytes]:
    if target is None:
        from p2p_research.target import read_target_files

        return read_target_files()
    target = Path(target).expanduser()
    if not target.is_dir():
        raise HomeError(f"--target: {target} is not a folder")
    missing = [f for f in TARGET_FILES if not (target / f).is_file()]
    if missing:
        raise HomeError(f"--target {target} lacks {', '.join(missing)}")
    return {f: (target / f).read_bytes() for f in TARGET_FILES}


def init_home(path: Path, profile: str | None = None, target: Path | None = None,
              config: NodeConfig | None = None) -> NodeHome:
    home = NodeHome(Path(path).expanduser().resolve())
    if home.exists():
        raise HomeError(f"{home.path} is already a node home")
    if home.path.exists() and any(home.path.iterdir()):
        raise HomeError(f"{home.path} exists and is not empty; choose another --home")
    cfg = config or (load_profile(profile) if profile else NodeConfig())
    files = read_target(target)
    home.path.mkdir(parents=True, exist_ok=True)
    home.write_config(cfg)
    Workspace.create(home.repo, files)
    home.runs.mkdir(exist_ok=True)
    home.logs.mkdir(exist_ok=True)
    return home
