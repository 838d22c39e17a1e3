"""`p2p-research doctor`: what stands between this machine and a useful node, each with a fix.

Every check returns a `Check` (ok | warn | fail, what it found, and for a problem a one-line hint).
The checks read the node home, this machine and, when a daemon runs, its status over the control
socket; none of them changes anything.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FREE_DISK_WARN_GB = 5.0
SKEW_WARN_S = 30.0
BOOTSTRAP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str          # ok | warn | fail
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def classify_address(addr: str) -> str:
    """public | private | local, from a multiaddr's IP (`/ip4/10.0.0.2/tcp/4001/...` -> private)."""
    parts = addr.split("/")
    try:
        ip = ipaddress.ip_address(parts[2])
    except (IndexError, ValueError):
        return "unknown"
    if ip.is_loopback:
        return "local"
    if ip.is_unspecified:
        return "all interfaces"
    return "private" if ip.is_private or ip.is_link_local else "public"


def reachability(addrs: list[str], nat: dict[str, Any] | None = None) -> Check:
    """From the daemon's AutoNAT verdicts when it has them (peers dialing it back), else from its addresses."""
    nat = nat or {}
    listen = [a for a in addrs if "/p2p-circuit" not in a]
    kinds = {classify_address(a) for a in listen}
    shown = ", ".join(listen[:3]) or "none"
    if not addrs:
        return Check("reachability", "warn", "no daemon running: its addresses are unknown",
                     "start the node: p2p-research node start")
    status = nat.get("status")
    port = next((a.split("/tcp/")[1].split("/")[0] for a in listen if "/tcp/" in a), "?")
    if status == "public":
        return Check("reachability", "ok", f"public: {nat.get('reachable_by', 0)} peer(s) dialed back {shown}")
    if status == "private" and nat.get("relayed"):
        relayed = nat.get("relayed_addrs", [])
        return Check("reachability", "ok", f"relayed: behind NAT, reachable through {len(relayed)} relay(s): "
                     f"{', '.join(relayed[:2])}; direct connections are tried by hole punching",
                     f"for direct connections from anywhere, forward TCP port {port} on your router")
    if status == "private":
        return Check("reachability", "warn", f"private: no peer could dial back {shown}, and no relay holds a slot "
                     "for this node yet", f"forward TCP port {port} on your router, or bootstrap from a relay "
                     "(a node on a public address started with --no-research)")
    if kinds <= {"local"}:
        return Check("reachability", "warn", f"local only: {shown} (other machines cannot connect)",
                     "listen on all interfaces: network.listen = [\"/ip4/0.0.0.0/tcp/4001\"] in node.toml")
    if status == "unknown":
        return Check("reachability", "warn", f"not known yet: no peer has answered a dial-back request ({shown})",
                     "connect to peers (--bootstrap); the node asks them to dial it back")
    if "public" in kinds:
        return Check("reachability", "ok", f"public: {shown}")
    return Check("reachability", "warn", f"private: {shown} (reachable inside this network; from outside only "
                 "through a forwarded port)", "forward the TCP port on your router, or join through a public node")


def bootstrap_reachable(addrs: list[str], connect: Callable[[str, int], None] | None = None) -> list[Check]:
    """A TCP connection to each bootstrap address (the handshake and peer id are the daemon's job)."""
    def tcp(host: str, port: int) -> None:
        with socket.create_connection((host, port), timeout=BOOTSTRAP_TIMEOUT_S):
            pass

    connect = connect or tcp
    out = []
    for a in addrs:
        parts = a.split("/")
        try:
            host, port = parts[2], int(parts[4])
        except (IndexError, ValueError):
            out.append(Check("bootstrap", "fail", f"{a}: not /ip4/<host>/tcp/<port>/p2p/<id>",
                             "fix network.bootstrap in node.toml"))
            continue
        try:
            connect(host, port)
            out.append(Check("bootstrap", "ok", f"{host}:{port} accepts connections"))
        except ConnectionRefusedError:
            out.append(Check("bootstrap", "fail", f"{host}:{port} refuses connections: the host answers, but "
                             "nothing listens on that port",
                             "that node is not running there, or listens on another port: ask its owner for "
                             "`p2p-research id`"))
        except OSError as e:
            why = "no answer within the timeout" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
            out.append(Check("bootstrap", "fail", f"{host}:{port} unreachable: {why}",
                             "is that node running, and its address current? ask its owner for `p2p-research id`"))
    return out


def clock_skew(samples: list[tuple[str, float]]) -> Check:
    """Median (received - sent) per peer from recent results; beyond 30 s this node's clock (or the
    peer's) is off, and claims are clamped to this node's clock."""
    by_peer: dict[str, list[float]] = {}
    for peer, d in samples:
        by_peer.setdefault(peer, []).append(d)
    if not by_peer:
        return Check("clock", "ok", "no results from peers yet to compare clocks with")
    skews = {p: statistics.median(v) for p, v in by_peer.items()}
    overall = statistics.median(skews.values())
    off = {p: s for p, s in skews.items() if abs(s) > SKEW_WARN_S}
    if abs(overall) > SKEW_WARN_S:
        return Check("clock", "warn", f"this clock differs from most peers' by {overall:+.0f} s",
                     "enable time sync: timedatectl set-ntp true")
    if off:
        p, s = max(off.items(), key=lambda kv: abs(kv[1]))
        return Check("clock", "ok", f"{len(off)} peer(s) off by more than {SKEW_WARN_S:.0f} s (e.g. {p[:16]}: {s:+.0f} s); "
                     "this clock agrees with the others")
    return Check("clock", "ok", f"within {max(abs(s) for s in skews.values()):.1f} s of {len(skews)} peer(s)")


def free_disk(path: Path) -> Check:
    free = shutil.disk_usage(path).free / 2**30
    if free < FREE_DISK_WARN_GB:
        return Check("disk", "warn", f"{free:.1f} GB free at {path}", "free some space: run logs live in <home>/runs")
    return Check("disk", "ok", f"{free:.1f} GB free at {path}")


TORCH_PROBE = ("import json, torch\n"
               "cuda = torch.cuda.is_available()\n"
               "print(json.dumps({'torch': torch.__version__, 'cuda': cuda, "
               "'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}))\n")


def torch_devices(python: str) -> Check:
    """What the train command's interpreter sees (torch there, not in the node's own, matters)."""
    try:
        r = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return Check("torch", "fail", f"{python}: {e}", "check research.train_command in node.toml")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("torch", "fail", f"{python}: {last[:200]}", "install torch for the train command's interpreter")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if info["gpus"]:
        return Check("torch", "ok", f"torch {info['torch']}, CUDA: {', '.join(info['gpus'])}")
    return Check("torch", "ok", f"torch {info['torch']}, CPU only (no CUDA device visible)")


def preflight_checks(train_command: str, files: dict[str, bytes], device: str) -> list[Check]:
    """What the research engine checks before its first run (research/io/preflight.py): the imports of
    train.py and prepare.py, the device train.py asks for, the data its harness caches."""
    from p2p_research.research.io import preflight

    local = {Path(n).stem for n in files if n.endswith(".py")}
    problems = preflight.check(train_command, files, local, device=device)
    if not problems:
        return [Check("pre-flight", "ok", "the train command finds every module train.py and prepare.py import"
                      + ("" if device == "cpu" else ", the device train.py asks for") + " and the harness's data")]
    return [Check(p.what, "fail", p.message, p.fix) for p in problems]


def sandbox_check(info: Any, trust_policy: str, peers_code: str = "") -> Check:
    if info.available:
        return Check("sandbox", "ok", f"{info.describe()}; trust policy {trust_policy}"
                     + (f"; peers' code: {peers_code}" if peers_code else ""))
    hint = ("install bubblewrap (apt-get install bubblewrap), or allow unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)")
    return Check("sandbox", "warn", f"none: {info.reason}; peers' changes limited to constants", hint)


def private_shard_check(home_path: Path, prepare_py: bytes, measures: bool) -> Check | None:
    """autoresearch's data (harness/shards.py): whether the node holds a private shard, without which
    peers' code stays constants-only. None for a harness without shards."""
    from p2p_research.harness import shards

    if not measures or not shards.supports_shards(prepare_py):
        return None
    split = shards.load(home_path)
    if split is not None and split.private_dir is not None:
        return Check("private split", "ok", f"shard {split.index} held out (the evaluator's only; no run sees it); "
                     f"runs of peers' code do not read {split.val_shard.name}")
    return Check("private split", "warn", "no private shard yet: peers' code stays constants-only",
                 "start the node with network access: it downloads one shard you did not (once), with prepare.py's "
                 "own download_single_shard; with every shard downloaded there is none to hold out")


def run_checks(home_path: Path, status: dict[str, Any] | None, bootstrap: list[str] | None = None) -> list[Check]:
    """Every check, for a node home (and its running daemon's `status`, when there is one)."""
    from p2p_research.home import HomeError, NodeHome
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.runner import train_argv

    checks: list[Check] = []
    home = NodeHome(home_path)
    if not home.exists():
        return [Check("home", "fail", f"no node home at {home_path}", f"p2p-research init --home {home_path}")]
    try:
        cfg = home.load_config()
        ctx = open_context(home, cfg)
    except (HomeError, ValueError) as e:
        return [Check("home", "fail", str(e), "fix node.toml (every key is in the README), or init a new home")]
    try:
        checks.append(Check("protocol", "ok", f"{ctx.protocol_id[:12]}: budget {ctx.budget.describe()} "
                            f"({ctx.budget_source}), hardware {ctx.hardware}"))
        checks.append(sandbox_check(ctx.sandbox, ctx.trust_policy, ctx.trust().peers_code()))
        shard = private_shard_check(home.path, ctx.genesis_prepare, ctx.harness_measures and ctx.sandbox.available)
        if shard is not None:
            checks.append(shard)
        argv = train_argv(cfg.research.train_command)
        python = argv[0] if Path(argv[0]).name.startswith("python") else sys.executable
        if cfg.research.enabled and cfg.research.objective == "torch":
            checks.append(torch_devices(python))
            checks += preflight_checks(cfg.research.train_command, ctx.workspace.files_of(ctx.workspace.genesis),
                                       cfg.research.device)
        checks.append(free_disk(home.path))
        samples = ctx.ledger.peer_delays(500)
    finally:
        ctx.close()
    addrs = (status or {}).get("addrs", [])
    checks.append(reachability(addrs, (status or {}).get("reachability")))
    if status is not None:
        n = status.get("peers_connected", 0)
        checks.append(Check("peers", "ok" if n else "warn", f"{n} connected",
                            "" if n else "give a bootstrap address: p2p-research node start --bootstrap /ip4/.../p2p/<id>"))
        if status.get("protocol_note"):  # connected, but their results do not count here
            checks.append(Check("protocol peers", "warn", status["protocol_note"],
                                "give every node the same target, budget and data (node.toml [research])"))
    for c in bootstrap_reachable(bootstrap if bootstrap is not None else cfg.network.bootstrap):
        checks.append(c)
    checks.append(clock_skew(samples))
    return checks
