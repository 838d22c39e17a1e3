"""A node's home folder: where each file lives, its creation (`init`) and its single-daemon lock.

    identity.key  node.toml  repo/  ledger.sqlite  results.tsv  SWARM.md  runs/  control.sock  node.lock  logs/
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from p2p_research.config import ConfigError, NodeConfig, dump_config, load_config
from p2p_research.errors import P2PResearchError

ENV_HOME = "P2P_RESEARCH_HOME"


class HomeError(P2PResearchError):
    pass


def default_home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".p2p-research").expanduser()


@dataclass(frozen=True)
class NodeHome:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "node.toml"

    @property
    def repo(self) -> Path:
        return self.path / "repo"

    @property
    def ledger(self) -> Path:
        return self.path / "ledger.sqlite"

    @property
    def results_tsv(self) -> Path:
        return self.path / "results.tsv"

    @property
    def identity(self) -> Path:
        return self.path / "identity.key"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def control_socket(self) -> Path:
        return self.path / "control.sock"

    @property
    def lock_path(self) -> Path:
        return self.path / "node.lock"

    @property
    def swarm_md(self) -> Path:
        return self.repo / "SWARM.md"

    def exists(self) -> bool:
        return self.config_path.is_file() and (self.repo / ".git").is_dir()

    def require(self) -> NodeHome:
        if not self.path.exists():
            raise HomeError(f"no node home at {self.path} (create one with: p2p-research init --home {self.path})")
        if not self.exists():
            raise HomeError(f"{self.path} is not a node home (missing node.toml or repo/); run p2p-research init --home {self.path}")
        return self

    def load_config(self) -> NodeConfig:
        try:
            return load_config(self.config_path)
        except ConfigError as e:
            raise HomeError(str(e)) from None

    def write_config(self, cfg: NodeConfig) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(dump_config(cfg))
        os.replace(tmp, self.config_path)


class HomeLock:
    """An exclusive lock on node.lock: one process works in a home at a time (flock dies with the process)."""

    def __init__(self, home: NodeHome, what: str = "a node") -> None:
        self.home = home
        self.what = what
        self.fd: int | None = None

    def __enter__(self) -> HomeLock:
        self.home.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise HomeError(f"{self.home.path} is in use by another process (pid {holder or '?'}); "
                            f"stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
