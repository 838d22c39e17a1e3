"""`init`, `run` and `noise`: the solo autoresearch loop of one node home."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import trio
import typer
from rich.console import Console

from p2p_research.cli.common import (
    CliError,
    HomeOpt,
    JsonOpt,
    one_line_errors,
    print_json,
    resolve_home,
    setup_logging,
)
from p2p_research.home import HomeError, HomeLock, NodeHome

console = Console(stderr=True)
log = logging.getLogger("p2p_research.cli")


def apply_loop_overrides(cfg, budget_tokens: int | None, budget_seconds: float | None, proposer: str | None,
                         proposer_command: str | None, seed: int | None, margin: float | None):
    from p2p_research.config import ConfigError

    r = cfg.research
    if budget_tokens is not None and budget_seconds is not None:
        raise CliError("give --budget-tokens or --budget-seconds, not both", 2)
    if budget_tokens is not None:
        if budget_tokens <= 0:
            raise CliError("--budget-tokens must be positive", 2)
        r.budget_tokens, r.budget_seconds = budget_tokens, None
    if budget_seconds is not None:
        if budget_seconds <= 0:
            raise CliError("--budget-seconds must be positive", 2)
        r.budget_seconds, r.budget_tokens = budget_seconds, None
    if proposer is not None:
        r.proposer = proposer
    if proposer_command is not None:
        r.proposer_command = proposer_command
    if seed is not None:
        r.seed = seed
    if margin is not None:
        r.margin = margin
    try:
        return cfg.validate()
    except ConfigError as e:
        raise CliError(str(e), 2) from None


def make_proposer(ctx, seed_offset: int = 0, researchers: Callable[[], int] | None = None):
    from p2p_research.research.io.proposers import BuiltinProposer, CommandProposer

    r = ctx.config.research
    if r.proposer == "command":
        return CommandProposer(r.proposer_command, r.proposer_timeout_s)
    # Seeded, but a restart must not replay the same sequence: mix in how many runs the ledger holds.
    # Each node also gets its own interests: seeded weights over the knobs, so nodes of a swarm explore
    # different directions first and seldom propose the same change of the same baseline.
    interests = knob_interests(list(ctx.space.params), r.seed)
    from p2p_research.research.io.combine import Win

    def wins() -> list[Win]:  # kept results to combine with the baseline when they branched off it
        return [Win(**w) for w in ctx.ledger.kept_wins(ctx.protocol_id)]

    from p2p_research.research.ids import experiment_id
    from p2p_research.research.io.ideas import Idea, ideas_of

    def ideas() -> list[Idea]:  # sibling protocols' kept changes (same genesis, other budget or hardware)
        return ideas_of(ctx.ledger, ctx.protocol_id)

    def on_idea(idea: Idea, baseline: str, train_py: bytes) -> None:  # the experiment it becomes, and whence
        exp_id = experiment_id(ctx.protocol_id, ctx.workspace.tree_with(baseline, {"train.py": train_py}))
        ctx.ledger.add_idea(exp_id, idea.exp_id, idea.protocol, idea.peer, idea.label, idea.gain_there)

    trust = ctx.trust()
    return BuiltinProposer(ctx.space, seed=r.seed * 1_000_003 + len(ctx.ledger.runs()) + seed_offset,
                           focus=lambda: interests, wins=wins if r.combine else None, code_from=trust.trusts_code_from,
                           ideas=ideas if r.ideas else None, on_idea=on_idea, researchers=researchers)


def knob_interests(names: list[str], seed: int) -> dict[str, float]:
    """Seeded log-normal weights over the searchable constants (a node's research interests)."""
    import random

    rng = random.Random(f"interests:{seed}")
    return {n: rng.lognormvariate(0.0, 1.2) for n in sorted(names)}


async def watch_stop_signals(cancel_scope: trio.CancelScope) -> None:
    """SIGINT (Ctrl+C) and SIGTERM cancel the work cleanly: the child is killed and the run recorded."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("%s: stopping", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


class ResultLines:
    """The result lines of an engine not printed yet (each experiment, adoption, skip: the last one too)."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.seen = 0

    def take(self) -> list[str]:
        p = self.progress
        n = min(p.results - self.seen, len(p.recent))
        self.seen = p.results
        return list(p.recent)[len(p.recent) - n:] if n > 0 else []


def keep_rule(margin: float | None) -> str:
    """The keep rule in words, where autoresearch users look first (init, the docs); None: automatic."""
    if margin == 0:
        return "any improvement of val_bpb is kept (research.margin = 0: autoresearch's rule)"
    if margin is not None:
        return (f"kept only if val_bpb improves by more than {margin:g} (research.margin); autoresearch keeps "
                "any improvement: research.margin = 0")
    return ("kept only if val_bpb improves by more than the noise margin: 2 sigma of the run-to-run spread, "
            "measured on the node's first runs (the genesis at research.noise_runs more seeds) or by "
            "`p2p-research noise`, 0.002 until then (autoresearch keeps any improvement: research.margin = 0)")


def progress_label(p, now: float | None = None) -> str:
    """`training | LEARNING_RATE 0.002 -> 0.004 | 41 s / 300 s | best 0.991234 | 12 done, 3 kept`."""
    return p.label(now)


async def render_progress(engine, console: Console, lines: ResultLines) -> None:
    """A live line with a progress bar for the current run (elapsed against the budget, or against past
    runs' durations) and every result printed above it as it comes."""
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        while True:
            p = engine.progress
            for line in lines.take():
                bar.console.print(f"[{p.experiments_done}] {line}", markup=False, highlight=False)
            frac = p.fraction()
            bar.update(task, description=progress_label(p), completed=frac if frac is not None else 0.0)
            await trio.sleep(0.5)


def register(app: typer.Typer) -> None:
    @app.command()
    @one_line_errors
    def init(
        home: Path | None = HomeOpt,
        profile: str | None = typer.Option(None, "--profile", help="A ready profile (laptop, relay, research: p2p_research/profiles/) or a path to a node.toml"),
        target: Path | None = typer.Option(None, "--target", help="A folder with prepare.py, train.py, program.md "
                                              "[default: the embedded target]"),
        json_out: bool = JsonOpt,
    ) -> None:
        """Create a node home: node.toml and a workspace with the deterministic genesis commit.

        `--target DIR` takes a folder as it is (an autoresearch checkout works unchanged); how its
        train.py runs (research.train_command), its budget and the hardware class are shown."""
        from p2p_research.research.io.context import open_context
        from p2p_research.research.io.home_init import detect_train_command, init_home
        from p2p_research.research.io.workspace import Workspace

        h = init_home(resolve_home(home), profile, target)
        genesis = Workspace(h.repo).genesis
        cfg = h.load_config()
        detected = detect_train_command(target)
        ctx = open_context(h, cfg)
        try:
            info = {"home": str(h.path), "genesis": genesis, "protocol_id": ctx.protocol_id,
                    "files": sorted(ctx.workspace.files_of(genesis)),
                    "train_command": cfg.research.train_command or "(this node's python) train.py",
                    "train_command_why": detected.why, "budget": ctx.budget.describe(),
                    "budget_source": ctx.budget_source, "hardware": ctx.hardware,
                    "hardware_in_protocol": ctx.budget.is_wall_clock, "sandbox": ctx.sandbox.describe(),
                    "sandbox_read_only": list(cfg.sandbox.read_only), "trust_policy": ctx.trust_policy}
            try:
                space = ctx.space
                info["search_space"] = {"origin": space.origin, "knobs": len(space)}
            except HomeError as e:
                info["search_space"] = {"error": str(e)}
        finally:
            ctx.close()
        info["keep_rule"] = keep_rule(cfg.research.margin)
        if json_out:
            print_json(info)
            return
        typer.echo(f"created node home {h.path}\ngenesis commit {genesis} ({', '.join(info['files'])})")
        typer.echo(f"train command  {info['train_command']}  [{detected.why}]")
        wall = " (wall clock: the hardware class joins the protocol)" if ctx.budget.is_wall_clock else ""
        typer.echo(f"budget         {info['budget']} from {info['budget_source']}{wall}")
        typer.echo(f"hardware       {ctx.hardware}")
        extra = f"; runs also read {', '.join(cfg.sandbox.read_only)}" if cfg.sandbox.read_only else ""
        typer.echo(f"sandbox        {info['sandbox']} (trust policy {ctx.trust_policy}){extra}")
        ss = info["search_space"]
        typer.echo(f"search space   {ss['knobs']} knobs, {ss['origin']} (see `p2p-research knobs`)" if "knobs" in ss
                   else f"search space   {ss['error']} (only the builtin proposer needs one)")
        typer.echo(f"protocol       {ctx.protocol_id}")
        typer.echo(f"keep rule      {keep_rule(cfg.research.margin)}")

    @app.command()
    @one_line_errors
    def run(
        home: Path | None = HomeOpt,
        experiments: int | None = typer.Option(None, "--experiments", "-n", min=0,
                                                  help="Stop after N experiments (0: measure the baseline only) "
                                                       "[default: run forever]"),
        budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Token budget per run"),
        budget_seconds: float | None = typer.Option(None, "--budget-seconds", help="Wall-clock budget per run"),
        proposer: str | None = typer.Option(None, "--proposer", help="builtin | command"),
        proposer_command: str | None = typer.Option(None, "--proposer-command", help="Agent command for --proposer command"),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the training runs and the builtin proposer"),
        margin: float | None = typer.Option(None, "--margin", help="Keep threshold in val_bpb (0: any improvement, "
                                            "autoresearch's rule) [default: 2 sigma of `noise`, else 0.002]"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr"),
    ) -> None:
        """Run the solo autoresearch loop: baseline, then propose, train, keep or discard, repeat."""
        from p2p_research.research.io.context import open_context
        from p2p_research.research.io.engine import ResearchEngine

        h = NodeHome(resolve_home(home)).require()
        cfg = apply_loop_overrides(h.load_config(), budget_tokens, budget_seconds, proposer, proposer_command, seed, margin)
        setup_logging(verbose, h.logs / "run.log")
        with HomeLock(h, "run"):
            ctx = open_context(h, cfg)
            engine = ResearchEngine(ctx, make_proposer(ctx))
            console.print(f"node home {h.path} | protocol {ctx.protocol_id[:12]} | budget {ctx.budget.describe()} "
                          f"| margin {engine.margin:.6f} | proposer {cfg.research.proposer} "
                          f"| sandbox {ctx.sandbox.describe()}", markup=False, highlight=False)

            lines = ResultLines(engine.progress)

            async def main() -> object:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_stop_signals, nursery.cancel_scope)
                    nursery.start_soon(render_progress, engine, console, lines)
                    done = await engine.run(experiments)
                    nursery.cancel_scope.cancel()
                    return done
                return None

            started = time.time()
            try:
                done = trio.run(main)
            finally:
                ctx.close()
                for line in lines.take():  # the last results, which the live line may not have shown
                    console.print(f"[{engine.progress.experiments_done}] {line}", markup=False, highlight=False)
            if done is None:
                console.print(f"stopped after {engine.progress.experiments_done} experiments; the ledger is up to date")
                raise typer.Exit(130)
            b = engine.progress.baseline_value
            console.print(f"{done.reason} in {time.time() - started:.0f} s; baseline "
                          f"{engine.progress.baseline_commit[:7]} val_bpb {b if b is None else f'{b:.6f}'}")
            if done.error:
                raise CliError(done.reason)

    @app.command()
    @one_line_errors
    def noise(
        home: Path | None = HomeOpt,
        repeats: int = typer.Option(3, "--repeats", "-k", min=2, help="How many baseline runs (different seeds)"),
        budget_tokens: int | None = typer.Option(None, "--budget-tokens"),
        budget_seconds: float | None = typer.Option(None, "--budget-seconds"),
        json_out: bool = JsonOpt,
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Measure the baseline's run-to-run spread; the keep margin defaults to 2 sigma of it."""
        from p2p_research.research.io.context import open_context
        from p2p_research.research.io.engine import ResearchEngine

        h = NodeHome(resolve_home(home)).require()
        cfg = apply_loop_overrides(h.load_config(), budget_tokens, budget_seconds, None, None, None, None)
        setup_logging(verbose, h.logs / "run.log")
        with HomeLock(h, "noise"):
            ctx = open_context(h, cfg)
            engine = ResearchEngine(ctx, make_proposer(ctx))

            def each(i: int, v: float | None) -> None:
                console.print(f"run {i + 1}/{repeats}: val_bpb {'crash' if v is None else f'{v:.6f}'}")

            async def main() -> dict | None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_stop_signals, nursery.cancel_scope)
                    nursery.start_soon(render_progress, engine, console, ResultLines(engine.progress))
                    record = await engine.measure_noise(repeats, each)
                    nursery.cancel_scope.cancel()
                    return record
                return None

            try:
                record = trio.run(main)
            except RuntimeError as e:
                raise CliError(str(e)) from None
            finally:
                ctx.close()
            if record is None:
                console.print("stopped; the ledger is up to date")
                raise typer.Exit(130)
        if json_out:
            print_json({"protocol_id": ctx.protocol_id, **record})
        else:
            typer.echo(f"val_bpb mean {record['mean']:.6f} std {record['std']:.6f} over {len(record['values'])} runs; "
                       f"margin set to {record['margin']:.6f}")

    @app.command()
    @one_line_errors
    def knobs(
        home: Path | None = HomeOpt,
        json_out: bool = JsonOpt,
    ) -> None:
        """The builtin proposer's search space: each knob's value in the baseline and how it moves
        (program.md's block, else inferred from train.py), and the constants left alone, with why."""
        from rich.table import Table

        from p2p_research.research.constants import constant_sites, flatten, read_constants, split_key
        from p2p_research.research.io.context import EDITABLE_FILE, open_context

        h = NodeHome(resolve_home(home)).require()
        ctx = open_context(h)
        try:
            space = ctx.space
            source = ctx.workspace.files_of(ctx.workspace.baseline)[EDITABLE_FILE].decode()
        finally:
            ctx.close()
        current = flatten(read_constants(source))
        sites = constant_sites(source)

        def written(key: str) -> str:
            name, idx = split_key(key)
            site = sites.get(name)
            if site is None:
                return "(not a constant in the baseline)"
            return site.text if idx is None else repr(current.get(key))

        rows = [{"name": n, "value": written(n), "kind": p.kind, "moves": p.describe(),
                 "low": p.low, "high": p.high, "log": p.log, "step": p.step, "choices": list(p.choices)}
                for n, p in space.params.items()]
        left = [{"name": n, "why": why} for n, why in space.left_out]
        if json_out:
            print_json({"origin": space.origin, "knobs": rows, "left_out": left})
            return
        table = Table(title=f"search space ({space.origin}): {len(rows)} knobs")
        for col in ("knob", "baseline value", "moves"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["value"], r["moves"])
        out = Console()
        out.print(table)
        for item in left:
            out.print(f"not searched: {item['name']}: {item['why']}", markup=False, highlight=False)
