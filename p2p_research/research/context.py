"""Everything a node's research needs, opened from its home: config, workspace, ledger, protocol.

The protocol is derived from the workspace's genesis harness (not from the installed package), so a
node keeps comparing results under the harness its swarm agreed on even after a software upgrade.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from p2p_research.config import NodeConfig
from p2p_research.home import HomeError, NodeHome
from p2p_research.research.constants import read_constants
from p2p_research.research.ids import Budget, experiment_id, protocol_id
from p2p_research.research.searchspace import SearchSpace, SearchSpaceError, check_against, parse_search_space
from p2p_research.research.workspace import Workspace, WorkspaceError
from p2p_research.store.ledger import Ledger

HARNESS_FILES = ("prepare.py",)
EDITABLE_FILE = "train.py"
PROGRAM_FILE = "program.md"
METRIC = "val_bpb"


def harness_default_budget(prepare_source: bytes) -> int:
    """DEFAULT_BUDGET_TOKENS of the harness, read on the AST (importing it would import torch)."""
    try:
        tree = ast.parse(prepare_source)
    except SyntaxError as e:
        raise HomeError(f"prepare.py does not parse: {e}") from None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DEFAULT_BUDGET_TOKENS"
                                                for t in stmt.targets):
            try:
                value = ast.literal_eval(stmt.value)
            except ValueError:
                break
            if isinstance(value, int) and value > 0:
                return value
    raise HomeError("prepare.py defines no literal DEFAULT_BUDGET_TOKENS; set research.budget_tokens")


def data_digest(path: str) -> str:
    """Content hash of user-supplied data (a file, or every file of a folder in sorted order)."""
    if not path:
        return ""
    p = Path(path).expanduser()
    if not p.exists():
        raise HomeError(f"research.data: no such file or folder: {p}")
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise HomeError(f"research.data: {p} holds no files")
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def hardware_string() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"[:200]


@dataclass
class ResearchContext:
    home: NodeHome
    config: NodeConfig
    workspace: Workspace
    ledger: Ledger
    budget: Budget
    protocol_id: str
    space: SearchSpace
    hardware: str

    def experiment_id_of(self, commit: str) -> str:
        return experiment_id(self.protocol_id, self.workspace.tree_of(commit))

    def close(self) -> None:
        self.ledger.close()


def resolve_budget(cfg: NodeConfig, prepare_source: bytes) -> Budget:
    r = cfg.research
    if r.budget_seconds:
        return Budget(seconds=r.budget_seconds)
    return Budget(tokens=r.budget_tokens or harness_default_budget(prepare_source))


def open_context(home: NodeHome, config: NodeConfig | None = None) -> ResearchContext:
    home.require()
    cfg = config or home.load_config()
    try:
        ws = Workspace(home.repo)
        genesis_files = ws.files_of(ws.genesis)
    except WorkspaceError as e:
        raise HomeError(str(e)) from None
    missing = [f for f in (*HARNESS_FILES, EDITABLE_FILE, PROGRAM_FILE) if f not in genesis_files]
    if missing:
        raise HomeError(f"the workspace's genesis lacks {', '.join(missing)}")
    harness = {name: genesis_files[name] for name in HARNESS_FILES}
    budget = resolve_budget(cfg, harness["prepare.py"])
    hardware = hardware_string()
    pid = protocol_id(harness, budget, METRIC, data_digest(cfg.research.data), hardware if budget.is_wall_clock else "")
    try:
        space = parse_search_space(genesis_files[PROGRAM_FILE].decode())
        check_against(space, read_constants(ws.files_of(ws.baseline)[EDITABLE_FILE].decode()))
    except (SearchSpaceError, UnicodeDecodeError) as e:
        raise HomeError(f"search space: {e}") from None
    home.runs.mkdir(exist_ok=True)
    ledger = Ledger(home.ledger)
    return ResearchContext(home, cfg, ws, ledger, budget, pid, space, hardware)
