"""Creating a node home: node.toml and the workspace with its deterministic genesis commit.

`init --target DIR` takes a folder as it is, autoresearch's included: its prepare.py, train.py and
program.md, plus its environment files (pyproject.toml, uv.lock, .python-version) where present. How
train.py runs is detected once and written to node.toml (`research.train_command`), where the user
sees and can change it: the folder's own `.venv` interpreter (what `uv run` runs once the project
is synced), else `uv run` for a uv project when uv is installed, else this node's interpreter.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from p2p_research.config import ConfigError, NodeConfig, config_from_dict
from p2p_research.home import HomeError, NodeHome
from p2p_research.research.io.context import ENV_FILES
from p2p_research.research.io.workspace import Workspace

TARGET_FILES = ("prepare.py", "train.py", "program.md")


def profiles_dir() -> Path:
    """The ready profiles, shipped inside the package (so `init --profile laptop` works from a wheel)."""
    return Path(__file__).resolve().parents[2] / "profiles"


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
    names = [*TARGET_FILES, *(f for f in ENV_FILES if (target / f).is_file())]
    return {f: (target / f).read_bytes() for f in names}


@dataclass(frozen=True)
class TrainCommand:
    command: str          # "" = this node's interpreter
    why: str


def detect_train_command(target: Path | None, which=shutil.which) -> TrainCommand:
    """How a target's train.py should run (see the module docstring)."""
    if target is None:
        return TrainCommand("", "the embedded target runs under this node's interpreter")
    target = Path(target).expanduser().resolve()
    uv_project = (target / "pyproject.toml").is_file() or (target / "uv.lock").is_file()
    venv_python = target / ".venv" / "bin" / "python"
    if venv_python.exists():  # what `uv run` runs once synced, without uv's own checks in the sandbox
        return TrainCommand(f"{shlex.quote(str(venv_python))} train.py", "the target's own .venv")
    if uv_project and which("uv"):
        frozen = " --frozen" if (target / "uv.lock").is_file() else ""
        return TrainCommand(f"uv run{frozen} --project {shlex.quote(str(target))} train.py",
                            "a uv project (pyproject.toml/uv.lock) with no .venv yet, and uv is on PATH")
    if uv_project:
        return TrainCommand("", "a uv project, but uv is not on PATH and the folder has no .venv: train.py runs "
                                "under this node's interpreter (install uv, or set research.train_command)")
    return TrainCommand("", "no environment of its own: train.py runs under this node's interpreter")


CACHE_DIR_RE = re.compile(r"""["']\.cache["']\s*,\s*["']([\w.-]+)["']""")


def harness_data_dirs(prepare_source: bytes) -> list[str]:
    """Folders under ~/.cache a harness keeps its data in (autoresearch: `os.path.join(...expanduser("~"),
    ".cache", "autoresearch")`): runs read them inside the sandbox, where the home is not visible."""
    names = CACHE_DIR_RE.findall(prepare_source.decode(errors="replace"))
    return [f"~/.cache/{n}" for n in dict.fromkeys(names) if n != "p2p-research"]


def init_home(path: Path, profile: str | None = None, target: Path | None = None,
              config: NodeConfig | None = None) -> NodeHome:
    home = NodeHome(Path(path).expanduser().resolve())
    if home.exists():
        raise HomeError(f"{home.path} is already a node home")
    if home.path.exists() and any(home.path.iterdir()):
        raise HomeError(f"{home.path} exists and is not empty; choose another --home")
    cfg = config or (load_profile(profile) if profile else NodeConfig())
    files = read_target(target)
    if not cfg.research.train_command:
        cfg.research.train_command = detect_train_command(target).command
    for d in harness_data_dirs(files["prepare.py"]):
        if d not in cfg.sandbox.read_only:
            cfg.sandbox.read_only.append(d)
    home.path.mkdir(parents=True, exist_ok=True)
    home.write_config(cfg)
    Workspace.create(home.repo, files)
    home.runs.mkdir(exist_ok=True)
    home.logs.mkdir(exist_ok=True)
    return home
