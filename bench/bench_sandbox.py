"""Benchmark of the training sandbox: its start-up cost, and whether a seed gives the same val_bpb in it.

Usage:
    .venv/bin/python bench/bench_sandbox.py [--repeats 10] [--budget-tokens N] [--threads N] [--skip-target]
                                            [--backend bwrap|namespaces|warm]

1. Start-up: a trivial train.py (prints a summary, imports nothing) run `--repeats` times with and
   without the sandbox, alternating, through the real runner (`run_training`) with the spec a node
   builds (`ResearchEngine.sandbox_spec`). The median difference is what the sandbox adds to a run.
   Backends: bwrap and namespaces started cold, and warm (a fork of a warm interpreter,
   research/io/warmbox.py).
2. Start-up with torch: a train.py that imports torch and prints a summary, `--repeats` times in each
   backend: wall time and CPU, median [min-max]. CPU twice: the run's own when its exit handlers run
   (getrusage: a warm run's from its fork), and as the node counts it (sampled from /proc every 0.5 s;
   for a warm run plus the warm interpreter's own start, so that it compares with a cold run's).
3. The default target, seed 0, once outside and once inside the sandbox: val_bpb must be identical,
   and the start-up cost is set against that run's wall time (the default budget unless
   `--budget-tokens` says otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_research.research.io.context import open_context  # noqa: E402
from p2p_research.research.io.engine import ResearchEngine  # noqa: E402
from p2p_research.research.io.home_init import init_home  # noqa: E402
from p2p_research.research.io.proposers import BuiltinProposer  # noqa: E402
from p2p_research.research.io.runner import RunLimits, run_training, train_argv  # noqa: E402
from p2p_research.research.io.sandbox import detect, process_limit  # noqa: E402

TRIVIAL = "print('---'); print('val_bpb: 1.0')\n"
# its own CPU (getrusage) when it exits: a warm run's counts from its fork, a cold one's from its start
WITH_TORCH = ("import atexit, resource, torch\n"
              "atexit.register(lambda: print('own cpu', sum(resource.getrusage(resource.RUSAGE_SELF)[:2])))\n"
              "print('---'); print('val_bpb: 1.0')\n")
BACKENDS = ("bwrap", "namespaces", "warm")


def available(backend: str) -> bool:
    return detect("namespaces" if backend == "warm" else backend).available


def run(engine, run_dir: Path, backend: str | None, limit_s: float = 3600) -> tuple[float, object]:
    spec = (dataclasses.replace(engine.sandbox_spec(run_dir), kind="namespaces" if backend == "warm" else backend,
                                warm=backend == "warm") if backend else None)
    t0 = time.perf_counter()
    outcome = trio.run(run_training, run_dir, engine.run_env(0), RunLimits(limit_s, 8192, False),
                       run_dir / "run.log", train_argv(""), spec)
    return time.perf_counter() - t0, outcome


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def _warm_startup(engine) -> float:
    """The warm interpreter's own start (CPU-s), as it reported it (its .info file)."""
    import json

    from p2p_research.research.io.sandbox import clean_env
    from p2p_research.research.io.warmstart import folder, key_of

    info = folder() / f"{key_of(sys.executable, clean_env(engine.run_env(0)))}.sock.info"
    return float(json.loads(info.read_text())["startup_cpu_s"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-tokens", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-target", action="store_true")
    ap.add_argument("--backend", choices=list(BACKENDS), help="for the target run [default: the node's]")
    args = ap.parse_args()
    info = detect()
    if not info.available:
        print(f"no sandbox here: {info.reason}")
        return 1
    print(f"sandbox: {info.describe()}, process limit: {process_limit()}")
    with tempfile.TemporaryDirectory() as tmp:
        home = init_home(Path(tmp) / "home")
        cfg = home.load_config()
        cfg.research.cache_dir = str(Path(tmp) / "cache")
        if args.budget_tokens:
            cfg.research.budget_tokens = args.budget_tokens
        if args.threads:
            cfg.research.threads = args.threads
        home.write_config(cfg)
        ctx = open_context(home)
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
        trio.run(engine.prepare_data)

        trivial = home.runs / "trivial"
        trivial.mkdir(parents=True)
        (trivial / "train.py").write_text(TRIVIAL)
        costs = {}
        for backend in BACKENDS:
            if not available(backend):
                continue
            run(engine, trivial, backend)  # warm the page cache (and start the warm interpreter)
            plain, boxed = [], []
            for _ in range(args.repeats):
                plain.append(run(engine, trivial, None)[0])
                boxed.append(run(engine, trivial, backend)[0])
            p, b = statistics.median(plain), statistics.median(boxed)
            costs[backend] = b - p
            print(f"start-up ({backend}), trivial train.py, median of {args.repeats}: outside {1000 * p:.1f} ms, "
                  f"inside {1000 * b:.1f} ms, sandbox adds {1000 * (b - p):.1f} ms")
        torch_dir = home.runs / "with-torch"
        torch_dir.mkdir(parents=True)
        (torch_dir / "train.py").write_text(WITH_TORCH)
        for backend in BACKENDS:
            if not available(backend):
                continue
            walls, cpus, own = [], [], []
            for _ in range(args.repeats):
                wall, outcome = run(engine, torch_dir, backend)
                assert outcome.ok and outcome.warm == (backend == "warm"), outcome.reason
                walls.append(wall)
                cpus.append(outcome.cpu_seconds)
                own.append(float(outcome.log_path.read_text().split("own cpu")[1].split()[0]))
            print(f"start-up with torch ({backend}), median [min-max] of {args.repeats}: wall {_spread(walls)} s, "
                  f"the run's own CPU at its exit {_spread(own)} s, as the node counts it {_spread(cpus)} s")
            if backend == "warm":
                print(f"  (a warm run's count includes the warm interpreter's own start: {_warm_startup(engine):.2f} CPU-s)")
        backend = args.backend or ("warm" if engine.sandbox_spec(trivial).warm else info.kind)
        if args.skip_target:
            ctx.close()
            return 0

        values = {}
        for label, sandboxed in (("outside", None), (f"inside ({backend})", backend)):
            run_dir = home.runs / f"target-{label.split()[0]}"
            ctx.workspace.materialize(ctx.workspace.genesis, run_dir)
            wall, outcome = run(engine, run_dir, sandboxed)
            if not outcome.ok:
                print(f"{label}: the run failed: {outcome.reason}")
                ctx.close()
                return 1
            values[label] = (outcome.summary.val_bpb, wall)
            print(f"default target ({ctx.budget.describe()}, seed 0) {label} the sandbox: "
                  f"val_bpb {outcome.summary.val_bpb:.6f}, wall {wall:.1f} s")
        ctx.close()
        inside = values[f"inside ({backend})"]
        same = values["outside"][0] == inside[0]
        share = 100 * costs[backend] / values["outside"][1]
        print(f"same val_bpb inside and outside: {'yes' if same else 'NO'}; "
              f"start-up cost = {share:.2f} % of the run's wall time")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
