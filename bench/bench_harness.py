"""Benchmark of the harness's own measurement: what the hand-over and the separate evaluation add to a run.

Usage:
    .venv/bin/python bench/bench_harness.py [--repeats 3] [--budget-tokens N] [--skip-default | --skip-autoresearch]
                                            [--private]

For the default target (its default budget unless --budget-tokens) and for the autoresearch-shaped test
fixture, each run goes once through the plain runner (train.py prints its value) and once through
`HarnessTrainer` (train.py hands its model over, a child of the warm evaluator measures it), alternating,
in the sandbox a node builds, `--repeats` times. Prints the median wall time of each, the median
overhead with its spread, the parts of the overhead (export, evaluator), and whether the harness's value
equals the printed one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2p_research.harness.measure import PRIVATE_BELOW  # noqa: E402
from p2p_research.research.io.context import open_context  # noqa: E402
from p2p_research.research.io.engine import ResearchEngine  # noqa: E402
from p2p_research.research.io.home_init import init_home  # noqa: E402
from p2p_research.research.io.proposers import BuiltinProposer  # noqa: E402
from p2p_research.research.io.runner import RunLimits, run_training, train_argv  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from autoresearch_helpers import autoresearch_folder  # noqa: E402  (the fixture with its own interpreter)


def engine_for(home_dir: Path, target: Path | None, budget_tokens: int) -> ResearchEngine:
    home = init_home(home_dir, target=target)
    cfg = home.load_config()
    if budget_tokens:
        cfg.research.budget_tokens = budget_tokens
    if target is not None:
        cfg.research.train_command = str(target / ".venv" / "bin" / "python")
    home.write_config(cfg)
    ctx = open_context(home, cfg)
    return ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))


def one(engine: ResearchEngine, measured: bool, private: bool) -> tuple[float, object]:
    ctx = engine.ctx
    run_dir = Path(tempfile.mkdtemp(dir=ctx.home.runs))
    ctx.workspace.materialize(ctx.workspace.genesis, run_dir)
    trio.run(engine.prepare_data)
    limits = RunLimits(3600, 8192, not ctx.config.research.train_command)
    if measured:
        trainer = engine.trainer  # with the training split prepare_data wrote, as a node runs it
    else:
        cmd = train_argv(ctx.config.research.train_command)

        async def trainer(*a, **k):
            return await run_training(*a, command=cmd, **k)

    env = engine.run_env(0)
    if measured and not private:  # most runs: an experiment whose value decides no gain (engine._measure_env)
        env[PRIVATE_BELOW] = "-inf"
    t0 = time.perf_counter()
    outcome = trio.run(lambda: trainer(run_dir, env, limits, run_dir / "run.log",
                                       sandbox=engine.sandbox_spec(run_dir)))
    wall = time.perf_counter() - t0
    if not outcome.ok:
        raise SystemExit(f"run failed: {outcome.reason}")
    return wall, outcome


def bench(name: str, engine: ResearchEngine, repeats: int, private: bool) -> dict:
    plain, harness, same, evals = [], [], [], []
    for i in range(repeats):
        for measured in (False, True) if i % 2 == 0 else (True, False):
            wall, o = one(engine, measured, private)
            (harness if measured else plain).append(wall)
            if measured:
                same.append(abs(o.summary.val_bpb - o.reported_val_bpb))
                log = Path(o.log_path).parent / "evaluate.log"
                if log.exists():
                    doc = json.loads(log.read_text().splitlines()[-1].split(" ", 1)[1])
                    evals.append(doc.get("seconds", 0.0))
            print(f"  {name} run {i + 1} {'harness' if measured else 'plain  '}: {wall:6.1f} s", flush=True)
    overheads = [h / p - 1 for p, h in zip(plain, harness, strict=True)]
    engine.close()  # the warm evaluator (harness/warm.py): one per engine, started by its first measured run
    return {"target": name, "repeats": repeats, "plain_s": statistics.median(plain),
            "added_s": statistics.median(h - p for p, h in zip(plain, harness, strict=True)),
            "evaluator_starts": getattr(engine.trainer, "warm", None) and engine.trainer.warm.starts,
            "harness_s": statistics.median(harness), "overhead_pct": 100 * statistics.median(overheads),
            "overhead_min_pct": 100 * min(overheads), "overhead_max_pct": 100 * max(overheads),
            "evaluator_s": statistics.median(evals) if evals else None, "max_value_difference": max(same)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-tokens", type=int, default=0)
    ap.add_argument("--skip-default", action="store_true")
    ap.add_argument("--skip-autoresearch", action="store_true")
    ap.add_argument("--private", action="store_true",
                    help="measure the private split on every run, as for a baseline or a gain (default: as "
                         "for an experiment that gains nothing, where it decides nothing)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_default:
            rows.append(bench("default target", engine_for(Path(tmp) / "node", None, args.budget_tokens),
                              args.repeats, args.private))
        if not args.skip_autoresearch:
            folder = autoresearch_folder(Path(tmp) / "autoresearch")
            rows.append(bench("autoresearch fixture", engine_for(Path(tmp) / "ar", folder, 0), args.repeats, args.private))
    print()
    print("| target | runs | plain run (median) | measured run (median) | overhead median [min, max] | added per pair (median) "
          "| evaluator (from the hand-over) | evaluator processes started | harness vs printed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['repeats']} + {r['repeats']} | {r['plain_s']:.2f} s | {r['harness_s']:.2f} s | "
              f"{r['overhead_pct']:+.1f} % [{r['overhead_min_pct']:+.1f}, {r['overhead_max_pct']:+.1f}] | "
              f"{r['added_s']:+.2f} s | {r['evaluator_s']:.2f} s | {r['evaluator_starts']} | {r['max_value_difference']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
