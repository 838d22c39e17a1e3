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


def _choice(default: str, *others: str) -> Any:
    """A string key with its allowed values declared beside it (the first is the default)."""
    return field(default=default, metadata={"choices": (default, *others)})


def _bounded(default: float, low: float | None = None, high: float | None = None, *, above: bool = False,
             why: str = "") -> Any:
    """A number with its range declared beside it: at least `low` (more than `low` with `above`), at
    most `high`; `why` joins the error where the bound is not obvious."""
    return field(default=default, metadata={"low": low, "high": high, "above": above, "why": why})


def _mode(mode: str, kind: type, low: float | None = None, high: float | None = None, *, above: bool = False,
          legacy_below: float | None = None, default: float | None = None) -> Any:
    """A number, or the named `mode` it has where none is given: None in Python, the mode's name in
    node.toml ("auto", "off", "all", "default"). node.toml files written before the modes had names
    said 0 (or a negative margin) for them: those values still read as the mode (`legacy_below`: every
    value under it; otherwise 0)."""
    return field(default=default, metadata={"mode": mode, "kind": kind, "low": low, "high": high, "above": above,
                                         "legacy_below": legacy_below, "why": ""})


def _range_error(where: str, value: Any, meta: dict[str, Any]) -> str | None:
    low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
    if low is not None and (value <= low if above else value < low) or high is not None and value > high:
        if low is not None and high is not None:
            bound = f"from {low} to {high}"
        elif low is not None:
            bound = f"more than {low}" if above else f"at least {low}"
        else:
            bound = f"at most {high}"
        why = f": {meta['why']}" if meta.get("why") else ""
        return f"{where} must be {bound}, got {value}{why}"
    return None


def _declared_errors(section_name: str, section: Any) -> str | None:
    """The first value outside what its field declares (choices or range), as one line."""
    for f in dataclasses.fields(section):
        value, where = getattr(section, f.name), f"{section_name}.{f.name}"
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            names = ", ".join(choices[:-1]) + f" or {choices[-1]}"
            return f"{where} must be {names}, got {value!r}"
        if "low" in f.metadata and value is not None:
            error = _range_error(where, value, f.metadata)
            if error:
                return error
    return None


@dataclass
class NodeSection:
    name: str = ""              # display name; empty: derived from the peer id


@dataclass
class ResearchSection:
    enabled: bool = True
    data: str = ""              # "" = the harness's generated corpus; else a text file or folder
    budget_tokens: int | None = _mode("default", int, 1)  # "default": the harness's default token budget
    budget_seconds: float | None = _mode("off", float, 0, above=True)  # a wall-clock budget instead (the hardware class joins the protocol)
    seed: int = 0
    proposer: str = _choice("builtin", "command")
    proposer_command: str = ""  # shell command run in the workspace for proposer = command
    proposer_timeout_s: float = _bounded(900.0, 0, above=True)
    margin: float | None = _mode("auto", float, 0, legacy_below=0)  # keep threshold in val_bpb; auto: 2 sigma of the measured noise, else 0.002
    # with an automatic margin, a node that measured the genesis itself runs it this many more times at
    # other seeds (its first runs, once per protocol) and keeps 2 sigma of the spread; 0 = only `noise`
    noise_runs: int = 2
    train_command: str = ""     # how train.py runs: "" = this node's python; e.g. "uv run train.py", a target's interpreter
    run_timeout_s: float | None = _mode("auto", float, 0, above=True)  # auto: from the baseline's duration
    memory_limit_mb: int = _bounded(8192, 256)
    threads: int | None = _mode("auto", int, 1)  # torch threads in training; auto: the cores split between CPU workers
    workers: int | None = _mode("auto", int, 1, 64)  # experiments at once; auto: one per visible GPU, else one
    device: str = _choice("auto", "cpu", "cuda")
    cache_dir: str = ""         # "" = ~/.cache/p2p-research
    objective: str = _choice("torch", "surrogate")  # surrogate: scores the constants without training (simulations)
    surrogate_cost_s: float = _bounded(20.0, 0)  # simulated seconds per surrogate run
    # the surrogate's landscape (research/io/surrogate.py FAMILIES); part of the protocol when not default
    surrogate: str = _choice("default", "separable", "interacting", "noisy", "deceptive")
    combine: bool = True        # propose kept results that branched off the baseline's lineage, merged onto it
    # follow sibling protocols (the same genesis, another budget or hardware class) and propose their kept
    # changes as ideas, measured and judged here (research/io/ideas.py)
    ideas: bool = True
    # who measures the genesis before experimenting: shared (about a quarter of a fresh swarm; the
    # others experiment at once, research/genesis.py) | each (every node, as a solo node does)
    genesis: str = _choice("shared", "each")


@dataclass
class NetworkSection:
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = field(default_factory=list)
    target_peers: int = _bounded(6, 1)
    rate_limit_per_s: float = _bounded(20.0, 0, above=True)
    nat: str = _choice("auto", "off")  # auto (AutoNAT, relay reservations, hole punching off loopback) | off
    relay_service: str = _choice("auto", "on", "off")  # auto (relays, and nodes AutoNAT finds public) | on | off: relay others' connections
    dashboard: str = ""           # "" off; HOST:PORT serves the web dashboard and /metrics (127.0.0.1:8642)
    # what is flooded to the swarm: all (claims and every result) | kept (kept results, the
    # replicas' confirmations, refutations, presence; claims and other results go to the DHT) | auto (all
    # until more than 100 peers were heard in 10 minutes, then kept): per-node load stops growing with N
    announce: str = _choice("auto", "all", "kept")
    # addresses that the limits per address and per /24 treat like 127.0.0.1: the machines of your own
    # cluster, where many daemons share an address and a subnet (`simulate --cluster` sets them; never a
    # stranger's address: net/addresses.py)
    exempt_addresses: list[str] = field(default_factory=list)


@dataclass
class TrustSection:
    policy: str = _choice("sandboxed", "constants", "any")  # sandboxed (any train.py change, run only in the sandbox) | constants | any
    trusted_peers: list[str] = field(default_factory=list)


@dataclass
class SandboxSection:
    mode: str = _choice("auto", "bwrap", "namespaces", "off")  # auto (bubblewrap, else namespaces, else none) | bwrap | namespaces | off
    scratch_mb: int = _bounded(2048, 16)  # the run's writable scratch (a tmpfs)
    max_processes: int = _bounded(2048, 16)  # processes and threads the run may have (a fork bomb stops there)
    read_only: list[str] = field(default_factory=list)  # more paths a run may read (data kept elsewhere)
    # a run of a Python train command starts as a fork of a warm interpreter that imported torch once,
    # its sandbox made from inside as `namespaces` makes it (research/io/warmbox.py); false: every run cold
    warm_start: bool = True


@dataclass
class VerificationSection:
    policy: str = _choice("adaptive", "always", "never")
    tolerance: float | None = _mode("auto", float, 0, above=True)  # |re-run - claim| allowed; auto: 2 x margin
    refuted_threshold: int = _bounded(2, 1)  # a peer refuted this often (net of confirmations) is ignored; once, if never confirmed
    quorum: int | None = _mode("off", int, 1, default=2)  # adaptive: other nodes' confirmations that stand in for a local re-run
    replicas: int | None = _mode("all", int, 1, default=3)  # adaptive: nodes designated (by hash) to re-run each result at once
    defer_s: float | None = _mode("auto", float, 0, above=True)  # adaptive: how long the others wait for their evidence; auto: 4 runs, >= 60 s
    vouch_after: int = _bounded(1, 1, why="a vote counts only from a peer this node verified")  # own confirmations of a peer's results before its votes count


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
        """Each key's declared choices and range (beside its field), then the rules that join keys."""
        for f in dataclasses.fields(self):
            error = _declared_errors(f.name, getattr(self, f.name))
            if error:
                raise ConfigError(error)
        r = self.research
        if r.proposer == "command" and not r.proposer_command.strip():
            raise ConfigError("research.proposer = 'command' needs research.proposer_command")
        if r.budget_tokens and r.budget_seconds:
            raise ConfigError("set research.budget_tokens or research.budget_seconds, not both")
        if r.train_command.strip():
            import shlex

            try:
                if not shlex.split(r.train_command):
                    raise ValueError("empty")
            except ValueError as e:
                raise ConfigError(f"research.train_command is not a valid command line: {e}") from None
        if self.network.exempt_addresses:
            from p2p_research.net.addresses import exempt_set

            try:
                exempt_set(self.network.exempt_addresses)
            except ValueError as e:
                raise ConfigError(f"network.exempt_addresses: {e}") from None
        if self.network.dashboard:
            from p2p_research.dashboard.serve import parse_addr

            try:
                parse_addr(self.network.dashboard)
            except ValueError as e:
                raise ConfigError(f"network.dashboard: {e}") from None
        return self


def _coerce_mode(where: str, value: Any, meta: dict[str, Any]) -> Any:
    """A key with a named mode (`_mode`): the mode's name is None; a number of the key's kind, or an
    old file's 0 (or negative margin) for the mode."""
    mode, kind = meta["mode"], meta["kind"]
    if value == mode:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and not isinstance(value, int):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where} must be {what} or \"{mode}\", got {value!r}")
    legacy = meta["legacy_below"]
    if value == 0 and legacy is None or legacy is not None and value < legacy:
        return None
    return kind(value)


def _coerce(section: str, key: str, value: Any, default: Any, meta: Any = None) -> Any:
    where = f"{section}.{key}"
    if meta is not None and "mode" in meta:
        return _coerce_mode(where, value, meta)
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
        meta = {f.name: f.metadata for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in meta:
                raise ConfigError(f"unknown key {section}.{key}")
            setattr(obj, key, _coerce(section, key, value, getattr(obj, key), meta[key]))
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
            value = getattr(section, sf.name)
            if value is None and "mode" in sf.metadata:
                value = sf.metadata["mode"]
            out.append(f"{sf.name} = {_toml_value(value)}\n")
    return "".join(out)
