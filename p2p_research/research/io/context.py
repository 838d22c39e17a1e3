"""Everything a node's research needs, opened from its home: config, workspace, ledger, protocol.

The protocol is derived from the workspace's genesis harness (not from the installed package), so a
node keeps comparing results under the harness its swarm agreed on even after a software upgrade.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from p2p_research.config import NodeConfig
from p2p_research.home import HomeError, NodeHome
from p2p_research.research.constants import ConstantsError, constant_sites, read_constants
from p2p_research.research.ids import Budget, experiment_id, protocol_id
from p2p_research.research.io.hardware import hardware_class
from p2p_research.research.io.sandbox import SandboxInfo
from p2p_research.research.io.sandbox import detect as detect_sandbox
from p2p_research.research.io.trust import TrustPolicy
from p2p_research.research.io.workspace import Workspace, WorkspaceError
from p2p_research.research.searchspace import (
    SearchSpace,
    SearchSpaceError,
    check_against,
    has_search_space,
    infer_search_space,
    parse_search_space,
)
from p2p_research.store.ledger import Ledger

HARNESS_FILES = ("prepare.py",)
# The target's environment, where it has one (autoresearch: pyproject.toml + uv.lock): copied into the
# genesis and hashed into the protocol, since the dependency versions are part of what a result means.
ENV_FILES = ("pyproject.toml", "uv.lock", ".python-version")
EDITABLE_FILE = "train.py"
PROGRAM_FILE = "program.md"
METRIC = "val_bpb"
BUDGET_ENV_MARKER = b"P2P_BUDGET_"  # a harness that reads the node's budget from the environment


@dataclass(frozen=True)
class HarnessBudget:
    """The budget the harness declares, and whether the node may set another one."""

    budget: Budget
    source: str           # e.g. "TIME_BUDGET = 300 in prepare.py"
    overridable: bool     # the harness reads P2P_BUDGET_TOKENS / P2P_BUDGET_SECONDS


def harness_budget(prepare_source: bytes) -> HarnessBudget | None:
    """The harness's declared budget, read on the AST (importing it would import torch):
    `DEFAULT_BUDGET_TOKENS` (tokens) or autoresearch's `TIME_BUDGET` (wall-clock seconds), each a
    positive constant expression. None when it declares neither."""
    try:
        sites = constant_sites(prepare_source.decode())
    except (ConstantsError, UnicodeDecodeError) as e:
        raise HomeError(f"prepare.py does not parse: {e}") from None
    overridable = BUDGET_ENV_MARKER in prepare_source
    tokens, seconds = sites.get("DEFAULT_BUDGET_TOKENS"), sites.get("TIME_BUDGET")
    if tokens is not None and type(tokens.value) is int and tokens.value > 0:
        return HarnessBudget(Budget(tokens=tokens.value), f"DEFAULT_BUDGET_TOKENS = {tokens.text} in prepare.py",
                             overridable)
    if seconds is not None and type(seconds.value) in (int, float) and seconds.value > 0:
        return HarnessBudget(Budget(seconds=float(seconds.value)), f"TIME_BUDGET = {seconds.text} in prepare.py",
                             overridable)
    return None


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


@dataclass
class ResearchContext:
    home: NodeHome
    config: NodeConfig
    workspace: Workspace
    ledger: Ledger
    budget: Budget
    protocol_id: str
    hardware: str
    budget_source: str = ""
    sandbox: SandboxInfo = SandboxInfo("none", "not checked")
    _space: SearchSpace | None = None

    @property
    def trust_policy(self) -> str:
        """The trust policy in force: `sandboxed` needs a working sandbox, else it is `constants`."""
        p = self.config.trust.policy
        return "constants" if p == "sandboxed" and not self.sandbox.available else p

    @functools.cached_property
    def genesis_prepare(self) -> bytes:
        """The pinned harness (the genesis commit's prepare.py): it never changes for a node home."""
        return self.workspace.files_of(self.workspace.genesis).get("prepare.py", b"")

    @property
    def harness_measures(self) -> bool:
        """Whether this node measures every run itself from a handed-over model (`harness/`), so a
        run's printed val_bpb is only its claim: real training, and a pinned harness with the
        `evaluate_bpb` call the hand-over wraps."""
        from p2p_research.harness.measure import supports_handover

        if self.config.research.objective != "torch":
            return False
        return supports_handover(self.genesis_prepare)

    @property
    def has_private_split(self) -> bool:
        """Whether the harness can draw windows no run can have read (harness/evaluate.py): this
        project's generated corpus, or autoresearch's data once the node holds out a private shard
        (harness/shards.py). A user's own data (`research.data`) has none, so a model fitted to its
        validation windows would go unnoticed."""
        from p2p_research.harness import shards
        from p2p_research.harness.measure import supports_private_split

        if not self.harness_measures or self.config.research.data:
            return False
        if supports_private_split(self.genesis_prepare):
            return True
        if not shards.supports_shards(self.genesis_prepare):
            return False
        split = shards.load(self.home.path)
        return split is not None and split.private_dir is not None

    def private_seed(self) -> int:
        """This node's private split (harness/evaluate.py): drawn once, kept in the ledger, never
        given to a training run, so no run can have seen the windows it names."""
        seed = self.ledger.get_meta("private_split_seed")
        if not isinstance(seed, int):
            import secrets

            seed = secrets.randbits(62)
            self.ledger.set_meta("private_split_seed", seed)
        return seed

    def trust(self) -> TrustPolicy:
        """The trust policy in force, with what this node's harness can check."""
        return TrustPolicy(self.trust_policy, frozenset(self.config.trust.trusted_peers), self.harness_measures,
                           self.has_private_split)

    @property
    def space(self) -> SearchSpace:
        """The built-in proposer's search space (only it needs one): program.md's block, else inferred
        from the genesis train.py's constants. HomeError when the block is malformed."""
        if self._space is None:
            self._space = search_space_of(self.workspace)
        return self._space

    def experiment_id_of(self, commit: str) -> str:
        return experiment_id(self.protocol_id, self.workspace.tree_of(commit))

    def close(self) -> None:
        self.ledger.close()


def resolve_budget(cfg: NodeConfig, prepare_source: bytes) -> tuple[Budget, str]:
    """The run budget and where it comes from: node.toml where the harness lets the node set it,
    else the harness's own declaration."""
    r = cfg.research
    declared = harness_budget(prepare_source)
    wanted = Budget(seconds=r.budget_seconds) if r.budget_seconds else Budget(tokens=r.budget_tokens) if r.budget_tokens else None
    if wanted is None:
        if declared is None:
            raise HomeError("prepare.py declares no budget (DEFAULT_BUDGET_TOKENS or TIME_BUDGET); "
                            "set research.budget_tokens or research.budget_seconds")
        return declared.budget, declared.source
    if declared is not None and not declared.overridable and wanted != declared.budget:
        raise HomeError(f"this harness fixes its budget ({declared.source}) and does not read the node's; "
                        f"remove the budget setting ({wanted.describe()}) or change prepare.py")
    return wanted, "node.toml / command line"


def search_space_of(ws: Workspace) -> SearchSpace:
    try:
        genesis = ws.files_of(ws.genesis)
        program = genesis[PROGRAM_FILE].decode()
        if has_search_space(program):
            space = parse_search_space(program)
            check_against(space, read_constants(ws.files_of(ws.baseline)[EDITABLE_FILE].decode()))
            return space
        return infer_search_space(genesis[EDITABLE_FILE].decode())
    except (SearchSpaceError, ConstantsError, UnicodeDecodeError, WorkspaceError) as e:
        raise HomeError(f"search space: {e}") from None


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
    harness = {name: genesis_files[name] for name in (*HARNESS_FILES, *ENV_FILES) if name in genesis_files}
    budget, budget_source = resolve_budget(cfg, harness["prepare.py"])
    hardware = hardware_class(cfg.research.device)
    metric = METRIC
    if cfg.research.objective == "surrogate" and cfg.research.surrogate != "default":
        metric = f"{METRIC}@surrogate:{cfg.research.surrogate}"  # another landscape: values never compare
    pid = protocol_id(harness, budget, metric, data_digest(cfg.research.data), hardware if budget.is_wall_clock else "")
    sandbox = sandbox_of(cfg)
    home.runs.mkdir(exist_ok=True)
    ledger = Ledger(home.ledger)
    return ResearchContext(home, cfg, ws, ledger, budget, pid, hardware, budget_source, sandbox)


def sandbox_of(cfg: NodeConfig) -> SandboxInfo:
    """The sandbox runs get; sandbox.mode = bwrap makes its absence an error instead of a fallback."""
    if cfg.research.objective == "surrogate":
        return SandboxInfo("none", "the surrogate objective runs no code")
    info = detect_sandbox(cfg.sandbox.mode)
    if cfg.sandbox.mode in ("bwrap", "namespaces") and not info.available:
        raise HomeError(f"sandbox.mode = {cfg.sandbox.mode}, but {info.reason}")
    return info
