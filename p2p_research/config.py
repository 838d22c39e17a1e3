"""node.toml: a node's configuration, validated into dataclasses.

Every key is known and typed: an unknown key, a wrong type or an out-of-range value is a one-line
`ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.errors import P2PResearchError


class ConfigError(P2PResearchError, ValueError):
    pass


@dataclass
class NodeSection:
    name: str = ""              # display name; empty: derived from the peer id


@dataclass
class ResearchSection:
    enabled: bool = True
    data: str = ""              # "" = the harness's generated corpus; else a text file or folder
    budget_tokens: int = 0      # 0 = the harness's default token budget
    budget_seconds: float = 0.0  # > 0 = a wall-clock budget instead (the hardware class joins the protocol)
    seed: int = 0
    proposer: str = "builtin"   # builtin | command
    proposer_command: str = ""  # shell command run in the workspace for proposer = command
    proposer_timeout_s: float = 900.0
    margin: float = -1.0        # keep threshold in val_bpb; < 0 = 2 sigma of the measured noise, else 0.002
    # with an automatic margin, a node that measured the genesis itself runs it this many more times at
    # other seeds (its first runs, once per protocol) and keeps 2 sigma of the spread; 0 = only `noise`
    noise_runs: int = 2
    train_command: str = ""     # how train.py runs: "" = this node's python; e.g. "uv run train.py", a target's interpreter
    run_timeout_s: float = 0.0  # 0 = automatic (from the baseline's duration)
    memory_limit_mb: int = 8192
    threads: int = 0            # torch threads in training; 0 = torch's default (split between CPU workers)
    workers: int = 0            # experiments at once; 0 = one per visible GPU, else one
    device: str = "auto"        # auto | cpu | cuda
    cache_dir: str = ""         # "" = ~/.cache/p2p-research
    objective: str = "torch"    # torch | surrogate (scores the constants without training; simulations)
    surrogate_cost_s: float = 20.0  # simulated seconds per surrogate run
    combine: bool = True        # propose kept results that branched off the baseline's lineage, merged onto it
    # follow sibling protocols (the same genesis, another budget or hardware class) and propose their kept
    # changes as ideas, measured and judged here (research/ideas.py)
    ideas: bool = True
    # who measures the genesis before experimenting: shared (about a quarter of a fresh swarm; the
    # others experiment at once, research/genesis.py) | each (every node, as a solo node does)
    genesis: str = "shared"


@dataclass
class NetworkSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    target_peers: int = 6
    rate_limit_per_s: float = 20.0
    nat: str = "auto"             # auto (AutoNAT, relay reservations, hole punching off loopback) | off
    relay_service: str = "auto"   # auto (relays, and nodes AutoNAT finds public) | on | off: relay others' connections
    dashboard: str = ""           # "" off; HOST:PORT serves the web dashboard and /metrics (127.0.0.1:8642)
    # what is flooded to the swarm: all (claims and every result) | kept (kept results, the
    # replicas' confirmations, refutations, presence; claims and other results go to the DHT) | auto (all
    # until more than 100 peers were heard in 10 minutes, then kept): per-node load stops growing with N
    announce: str = "auto"


@dataclass
class TrustSection:
    policy: str = "sandboxed"   # sandboxed (any train.py change, run only in the sandbox) | constants | any
    trusted_peers: list[str] = field(default_factory=list)


@dataclass
class SandboxSection:
    mode: str = "auto"          # auto (bubblewrap, else namespaces, else none) | bwrap | namespaces | off
    scratch_mb: int = 2048      # the run's writable scratch (a tmpfs)
    max_processes: int = 2048   # processes and threads the run may have (a fork bomb stops there)
    read_only: list[str] = field(default_factory=list)  # more paths a run may read (data kept elsewhere)


@dataclass
class VerificationSection:
    policy: str = "adaptive"    # always | adaptive | never
    tolerance: float = 0.0      # |re-run - claim| allowed; 0 = 2 x margin
    refuted_threshold: int = 2  # a peer refuted this often (net of confirmations) is ignored
    quorum: int = 2             # adaptive: other nodes' confirmations that stand in for a local re-run (0: off)
    replicas: int = 3           # adaptive: nodes designated (by hash) to re-run each result at once (0: all)
    defer_s: float = 0.0        # adaptive: how long the others wait for their evidence; 0 = 4 runs, >= 60 s
    vouch_after: int = 1        # own confirmations of a peer's results before its votes count (>= 1)


@dataclass
class SimulationSection:
    liar: bool = False          # announce fabricated improvements (simulates a dishonest node)


@dataclass
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    research: ResearchSection = field(default_factory=ResearchSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    trust: TrustSection = field(default_factory=TrustSection)
    verification: VerificationSection = field(default_factory=VerificationSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)

    def validate(self) -> NodeConfig:
        r = self.research
        if r.proposer not in ("builtin", "command"):
            raise ConfigError(f"research.proposer must be 'builtin' or 'command', got {r.proposer!r}")
        if r.proposer == "command" and not r.proposer_command.strip():
            raise ConfigError("research.proposer = 'command' needs research.proposer_command")
        if r.budget_tokens < 0:
            raise ConfigError(f"research.budget_tokens must be >= 0, got {r.budget_tokens}")
        if r.budget_seconds < 0:
            raise ConfigError(f"research.budget_seconds must be >= 0, got {r.budget_seconds}")
        if r.budget_tokens and r.budget_seconds:
            raise ConfigError("set research.budget_tokens or research.budget_seconds, not both")
        if r.memory_limit_mb < 256:
            raise ConfigError(f"research.memory_limit_mb must be at least 256, got {r.memory_limit_mb}")
        if r.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"research.device must be auto, cpu or cuda, got {r.device!r}")
        if r.objective not in ("torch", "surrogate"):
            raise ConfigError(f"research.objective must be torch or surrogate, got {r.objective!r}")
        if r.surrogate_cost_s < 0:
            raise ConfigError("research.surrogate_cost_s must be >= 0")
        v = self.verification
        if v.tolerance < 0 or v.refuted_threshold < 1 or v.quorum < 0 or v.replicas < 0 or v.defer_s < 0:
            raise ConfigError("verification: tolerance, quorum, replicas and defer_s must be >= 0, refuted_threshold >= 1")
        if v.vouch_after < 1:
            raise ConfigError("verification.vouch_after must be >= 1: a vote counts only from a peer this node verified")
        if r.train_command.strip():
            import shlex

            try:
                if not shlex.split(r.train_command):
                    raise ValueError("empty")
            except ValueError as e:
                raise ConfigError(f"research.train_command is not a valid command line: {e}") from None
        if r.run_timeout_s < 0 or r.proposer_timeout_s <= 0 or r.threads < 0:
            raise ConfigError("research timeouts must be positive and threads >= 0")
        if not 0 <= r.workers <= 64:
            raise ConfigError(f"research.workers must be 0 (one per GPU) to 64, got {r.workers}")
        if self.trust.policy not in ("sandboxed", "constants", "any"):
            raise ConfigError(f"trust.policy must be sandboxed, constants or any, got {self.trust.policy!r}")
        sb = self.sandbox
        if sb.mode not in ("auto", "bwrap", "namespaces", "off"):
            raise ConfigError(f"sandbox.mode must be auto, bwrap, namespaces or off, got {sb.mode!r}")
        if sb.scratch_mb < 16 or sb.max_processes < 16:
            raise ConfigError("sandbox.scratch_mb and sandbox.max_processes must be at least 16")
        if self.verification.policy not in ("always", "adaptive", "never"):
            raise ConfigError(f"verification.policy must be always, adaptive or never, got {self.verification.policy!r}")
        if self.network.target_peers < 1:
            raise ConfigError("network.target_peers must be at least 1")
        if self.network.rate_limit_per_s <= 0:
            raise ConfigError("network.rate_limit_per_s must be positive")
        if self.network.nat not in ("auto", "off"):
            raise ConfigError(f"network.nat must be auto or off, got {self.network.nat!r}")
        if self.network.dashboard:
            from p2p_research.dashboard.serve import parse_addr

            try:
                parse_addr(self.network.dashboard)
            except ValueError as e:
                raise ConfigError(f"network.dashboard: {e}") from None
        if self.research.genesis not in ("shared", "each"):
            raise ConfigError(f"research.genesis must be shared or each, got {self.research.genesis!r}")
        if self.network.announce not in ("auto", "all", "kept"):
            raise ConfigError(f"network.announce must be auto, all or kept, got {self.network.announce!r}")
        if self.network.relay_service not in ("auto", "on", "off"):
            raise ConfigError(f"network.relay_service must be auto, on or off, got {self.network.relay_service!r}")
        return self


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return list(value)
    raise ConfigError(f"{where}: unsupported type")


def config_from_dict(data: dict[str, Any]) -> NodeConfig:
    cfg = NodeConfig()
    for section, values in data.items():
        if section not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        obj = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"unknown key {section}.{key}")
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key)))
    return cfg.validate()


def load_config(path: Path) -> NodeConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no node.toml at {path}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump_config(cfg: NodeConfig) -> str:
    out = ["# p2p-research node configuration (see README.md for every key)\n"]
    for f in dataclasses.fields(cfg):
        out.append(f"\n[{f.name}]\n")
        section = getattr(cfg, f.name)
        for sf in dataclasses.fields(section):
            out.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}\n")
    return "".join(out)
