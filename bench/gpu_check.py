"""The GPU path in one command, for a machine with one GPU (an H200, no network needed).

Usage:
    .venv/bin/python bench/gpu_check.py [--budget-tokens N] [--swarm-budget-tokens N] [--swarm-target FOLDER]
                                        [--skip-swarm]

Each step prints one verdict line (`ok`, `FAIL` or `skip`, the step, the figures):
1. the default target on CUDA (bf16 autocast), in the sandbox a node builds: tokens/s, model FLOPs
   utilisation against the GPU's bf16 peak, peak memory;
2. the sandbox's GPU pass-through (the run above ran inside it, /dev/nvidia* bound);
3. two workers on one GPU at once: both finish, the throughput of each;
4. the harness's separate evaluation on CUDA: the run hands its model over, the sandboxed evaluator
   measures it, and the run prints the harness's value;
5. a 2-node swarm on loopback (CUDA where there is one, else CPU): the second node gets the first's
   results.
Without a CUDA device (this project's CI) steps 1-4 are skipped with the reason and step 5 runs on
the CPU, so the script itself is tested everywhere. The exit code is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_research.daemon.control_call import call  # noqa: E402
from p2p_research.research.io.context import open_context  # noqa: E402
from p2p_research.research.io.engine import ResearchEngine  # noqa: E402
from p2p_research.research.io.home_init import init_home  # noqa: E402
from p2p_research.research.io.proposers import BuiltinProposer  # noqa: E402
from p2p_research.research.io.runner import RunLimits, run_training, train_argv  # noqa: E402

CLI = [sys.executable, "-m", "p2p_research"]
# dense bf16 tensor-core peaks, TFLOP/s (vendors' datasheets; sparsity excluded)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
                    "A10G": 125.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def say(status: str, step: str, detail: str) -> bool:
    print(f"{status:4s}  {step}: {detail}", flush=True)
    return status != "FAIL"


def gpu() -> tuple[str | None, str]:
    try:
        import torch
    except ImportError as e:
        return None, f"torch does not import ({e})"
    if not torch.cuda.is_available():
        return None, "no CUDA device (torch.cuda.is_available() is False)"
    return torch.cuda.get_device_name(0), ""


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def engine_for(home_dir: Path, budget_tokens: int, device: str) -> ResearchEngine:
    home = init_home(home_dir)
    cfg = home.load_config()
    cfg.research.budget_tokens = budget_tokens
    cfg.research.device = device
    home.write_config(cfg)
    ctx = open_context(home, cfg)
    return ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))


async def one_run(engine: ResearchEngine, tag: str, extra_env: dict[str, str], measured: bool = False):
    ctx = engine.ctx
    run_dir = ctx.home.runs / f"gpu-check-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx.workspace.materialize(ctx.workspace.genesis, run_dir)
    await engine.prepare_data()
    env = {**engine.run_env(0), **extra_env}
    limits = RunLimits(1800, 64_000, False)
    started = time.monotonic()
    if measured:
        o = await engine.trainer(run_dir, env, limits, run_dir / "run.log", sandbox=engine.sandbox_spec(run_dir))
    else:
        o = await run_training(run_dir, env, limits, run_dir / "run.log", command=train_argv(""),
                               sandbox=engine.sandbox_spec(run_dir))
    return o, time.monotonic() - started


def figures(o, name: str) -> str:
    s = o.summary
    tps = s.tokens / s.training_seconds if s.tokens and s.training_seconds else None
    peak = peak_tflops(name)
    mfu = (6 * s.num_params * tps / (peak * 1e12)) if (tps and s.num_params and peak) else None
    mem = s.metrics.get("peak_memory_mb") or (f"{s.memory_gb * 1024:.0f}" if s.memory_gb else "?")
    return (f"val_bpb {s.val_bpb:.4f}, {tps:,.0f} tokens/s" if tps else f"val_bpb {s.val_bpb:.4f}") + \
        (f", MFU {100 * mfu:.1f} % of {peak:.0f} TFLOP/s bf16" if mfu is not None else ", MFU ? (peak unknown)") + \
        f", peak memory {mem} MB, {s.num_params:,} params"


def swarm_step(tmp: Path, budget_tokens: int, device: str, target: Path | None = None, timeout_s: float = 300) -> bool:
    """Two real daemons on loopback: B bootstraps from A and receives A's results. Their genesis is the
    embedded default target, or `target` (a target folder, as `init --target` takes)."""
    procs = []
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        homes = []
        for name in ("a", "b"):
            home = init_home(tmp / f"swarm-{name}", target=target)
            cfg = home.load_config()
            cfg.research.budget_tokens = budget_tokens
            cfg.research.device = device
            cfg.research.noise_runs = 0  # a check of the swarm, not of the noise: no extra runs
            home.write_config(cfg)
            homes.append(home.path)
        # one experiment each (A's is what B must receive): the check needs no more runs than that
        a = subprocess.Popen([*CLI, "node", "start", "--home", str(homes[0]), "-n", "1",
                              "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        procs.append(a)
        addr = ""
        deadline = time.monotonic() + 120
        while not addr and time.monotonic() < deadline:
            line = a.stdout.readline() if a.stdout else ""
            m = re.match(r"address: (\S+)", line)
            addr = m.group(1) if m else addr
            if not line and a.poll() is not None:
                break
        if not addr:
            return say("FAIL", "2-node swarm", "node A printed no address")
        # B runs nothing of its own (-n 0): it measures the genesis and takes in A's result
        b = subprocess.Popen([*CLI, "node", "start", "--home", str(homes[1]), "-n", "0", "--bootstrap", addr],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        procs.append(b)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            # `status --json`'s answer, asked of the control socket directly (a CLI process per poll cost
            # as much CPU as the poll's wait)
            try:
                resp = call(homes[1] / "control.sock", "status", {}, timeout=30)
            except OSError:  # not up yet
                resp = None
            if resp and resp.get("ok"):
                st = resp["data"]
                if st["experiments"]["from_peers"] > 0 and st["peers_connected"] >= 1:
                    return say("ok", "2-node swarm", f"on {device}: B connected to A and holds "
                               f"{st['experiments']['from_peers']} of A's result(s) after {time.monotonic() - started:.0f} s")
            time.sleep(2)
        return say("FAIL", "2-node swarm", f"B had none of A's results after {timeout_s:.0f} s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-tokens", type=int, default=20_000_000, help="the GPU runs' budget")
    ap.add_argument("--swarm-budget-tokens", type=int, default=0, help="[default: --budget-tokens on a GPU, 20000 on a CPU]")
    ap.add_argument("--swarm-target", type=Path, default=None,
                    help="a target folder for the swarm's genesis [default: the embedded default target]")
    ap.add_argument("--skip-swarm", action="store_true")
    args = ap.parse_args()
    name, why = gpu()
    ok = True
    print(f"gpu check: {name or 'no GPU'}; torch {__import__('torch').__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if name is None:
            for step in ("default target on CUDA", "sandbox GPU pass-through", "two workers on one GPU",
                         "harness evaluation on CUDA"):
                say("skip", step, why)
        else:
            engine = engine_for(tmp / "node", args.budget_tokens, "cuda")
            try:
                o, wall = trio.run(one_run, engine, "single", {"P2P_DEVICE": "cuda"})
                ok &= say("ok" if o.ok else "FAIL", "default target on CUDA",
                          figures(o, name) + f", {wall:.0f} s" if o.ok else o.reason)
                spec = engine.sandbox_spec(engine.ctx.home.runs)
                if spec is None:
                    say("skip", "sandbox GPU pass-through", f"no sandbox: {engine.ctx.sandbox.reason}")
                else:
                    ok &= say("ok" if (spec.gpu and o.ok) else "FAIL", "sandbox GPU pass-through",
                              f"{spec.kind}, /dev/nvidia* bound: {spec.gpu}; the run above ran inside it")

                async def two():
                    results = {}

                    async def worker(i):
                        results[i] = await one_run(engine, f"worker{i}", {"P2P_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "0"})

                    async with trio.open_nursery() as n:
                        for i in range(2):
                            n.start_soon(worker, i)
                    return results

                both = trio.run(two)
                good = all(r[0].ok for r in both.values())
                ok &= say("ok" if good else "FAIL", "two workers on one GPU", "; ".join(
                    (figures(r[0], name) if r[0].ok else r[0].reason) for r in both.values()))
                o, wall = trio.run(lambda: one_run(engine, "harness", {"P2P_DEVICE": "cuda"}, measured=True))
                good = o.ok and o.measured_by == "harness"
                ok &= say("ok" if good else "FAIL", "harness evaluation on CUDA",
                          (f"measured by the harness: {o.summary.val_bpb:.6f} (printed {o.reported_val_bpb}), "
                           f"{wall:.0f} s") if o.ok else o.reason)
            finally:
                engine.ctx.close()
        if args.skip_swarm:
            say("skip", "2-node swarm", "--skip-swarm")
        else:
            tokens = args.swarm_budget_tokens or (args.budget_tokens if name else 20_000)
            ok &= swarm_step(tmp, tokens, "cuda" if name else "cpu", args.swarm_target)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
