"""Carries out the research loop's actions: proposals, commits, training runs, the ledger, results.tsv.

The decisions live in `loop.ResearchLoop`; this module is the I/O edge that performs them. A daemon
wraps the same engine and listens to its hooks (claims and results to announce). Cancellation
(Ctrl+C, a daemon stop) kills the training child and records the experiment as `aborted`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from p2p_research import __version__
from p2p_research.harness import shards
from p2p_research.harness.measure import (
    ANCESTOR_CPU,
    PRIVATE_BELOW,
    TRAIN_SPLIT_SCRIPT,
    HarnessSpec,
    HarnessTrainer,
    supports_train_split,
)
from p2p_research.harness.verdict import does_not_generalise, self_report_allowed
from p2p_research.research import genesis as G
from p2p_research.research import loop as L
from p2p_research.research.constants import constants_only_change
from p2p_research.research.describe import describe_change
from p2p_research.research.effective import Facts, resolve
from p2p_research.research.ids import experiment_id
from p2p_research.research.io import preflight, warmstart
from p2p_research.research.io.context import EDITABLE_FILE, ResearchContext
from p2p_research.research.io.proposers import Proposal, Proposer, Skip
from p2p_research.research.io.run_guard import end_leftovers
from p2p_research.research.io.runner import RunLimits, RunOutcome, run_training, train_argv
from p2p_research.research.io.sandbox import SandboxSpec, home_views, interpreter_paths, safe_paths
from p2p_research.research.io.surrogate import SurrogateTrainer
from p2p_research.research.life import Life, TakeTurn
from p2p_research.research.negatives import Hints, Tried
from p2p_research.research.semantic import semantic_id
from p2p_research.research.swarm import PeerClaim
from p2p_research.research.turns import defer_s, liar_value
from p2p_research.store.ledger import Run
from p2p_research.store.results_tsv import append_result, has_rows

_T = TypeVar("_T")

log = logging.getLogger("p2p_research.engine")

FIRST_RUN_TIMEOUT_S = 1800.0


@dataclass
class Progress:
    """What the engine is doing now, for status lines, `status` and progress bars."""

    phase: str = "starting"          # starting | baseline | proposing | training | idle | done
    exp_id: str = ""
    commit: str = ""
    description: str = ""
    started_at: float = 0.0
    expected_seconds: float | None = None
    experiments_done: int = 0
    kept: int = 0
    baseline_commit: str = ""
    baseline_value: float | None = None
    last_result: str = ""
    results: int = 0                 # results so far (experiments and adoptions); `recent` holds their lines
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    best_value: float | None = None  # the lowest val_bpb kept or adopted so far
    budget_seconds: float | None = None  # the protocol's wall-clock budget, if it has one
    waiting_for: str = ""            # while phase == "waiting": what for, in words (status, run, dashboard)

    def label(self, now: float | None = None) -> str:
        """`training | LEARNING_RATE 0.002 -> 0.004 | 41 s / 300 s | best 0.991234 | 12 done, 3 kept`: the
        live line of `run` and the daemon's progress log."""
        now = now or time.time()
        phase = {"baseline": "measuring the baseline", "training": "training",
                 "proposing": "proposing"}.get(self.phase, self.phase)
        parts = [phase]
        if self.phase == "waiting" and self.waiting_for:
            parts.append(f"for {self.waiting_for}")
        if self.phase in ("baseline", "training"):
            parts.append((self.description or self.exp_id[:10])[:60])
            if self.budget_seconds:
                parts.append(f"{now - self.started_at:.0f} s / {self.budget_seconds:g} s budget")
            else:
                expected = f" / ~{self.expected_seconds:.0f} s" if self.expected_seconds else ""
                parts.append(f"{now - self.started_at:.0f} s{expected}")
        best = "-" if self.best_value is None else f"{self.best_value:.6f}"
        parts.append(f"best {best}")
        parts.append(f"{self.experiments_done} done, {self.kept} kept")
        return " | ".join(parts)

    def note_result(self, line: str) -> None:
        self.last_result = line
        self.results += 1
        self.recent.append(line)

    def fraction(self, now: float | None = None) -> float | None:
        if self.phase not in ("baseline", "training") or not self.expected_seconds:
            return None
        return min(0.99, ((now or time.time()) - self.started_at) / self.expected_seconds)


@dataclass
class Hooks:
    """Callbacks a daemon sets to announce what the engine does; all optional."""

    on_claim: Callable[..., Awaitable[None]] | None = None   # exp_id, commit, description, semantic_id=
    on_result: Callable[[Run], Awaitable[None]] | None = None
    on_baseline: Callable[[str, float], Awaitable[None]] | None = None           # commit, value
    # exp_id, the asking worker's seed -> known elsewhere? (a negative report of another seed is no hint)
    is_known: Callable[[str, int | None], Awaitable[Tried]] | None = None
    is_mine: Callable[[str], bool] | None = None                                # exp_id -> this node's to run?
    # exp_id, runs finished -> why a run about to start gives way to a peer's claim already here (or None)
    contested: Callable[[str, int], str | None] | None = None
    researchers: Callable[[], int] | None = None  # other peers of this protocol it hears (the genesis rule)
    # speculation (research/speculation.py): the unverified peer claim to build the next proposal on, if
    # any; and, when an experiment built on one is kept, (that claim, the baseline before, its value)
    speculation: Callable[[], PeerClaim | None] | None = None
    built_on: Callable[[PeerClaim, str, float | None], None] | None = None
    # peers' negative reports (research/negatives.py): what the ledger proves about an exp id, and this
    # node's own run of an experiment that unaccountable peers reported negative (exp id, value, seed);
    # `tried` takes the asking worker's seed too
    tried: Callable[[str, int | None], Tried] | None = None
    check_negatives: Callable[[str, float | None, int], None] | None = None


# torch's CPU threads sleep while they wait for work instead of spinning (OpenMP's default spins): on
# a busy machine a spinning run took 2.4-3x the CPU time and up to 6x the training time of a passive
# one, which both slowed the node and blurred the CPU figure the harness bounds a run's compute by
# (docs/security.md). The user's own OMP_WAIT_POLICY wins.
RUN_OMP_WAIT_POLICY = "PASSIVE"
AGENT_LOG = "agent.log"       # beside run.log: the output of the agent that proposed the run's code
MAX_TRANSCRIPT = 64 * 1024
MAX_SKIP_TRANSCRIPTS = 50


@dataclass
class ExperimentRun:
    run: Run
    outcome: RunOutcome | None = None


class ResearchEngine:
    def __init__(self, ctx: ResearchContext, proposer: Proposer, hooks: Hooks | None = None,
                 seed_offset: int = 0, worker: int = 0, worker_env: dict[str, str] | None = None, *,
                 peer: str = "", share_genesis: bool = False, workers: list[ResearchEngine] | None = None) -> None:
        self.ctx = ctx
        self.worker = worker                      # this engine's index among the node's workers
        self.worker_env = worker_env or {}        # its device: CUDA_VISIBLE_DEVICES, or its share of the cores
        # every worker of the node (this one included, once the node has made them all): the others
        # share each new baseline
        self._workers = workers if workers is not None else [self]
        self.proposer = proposer
        self.hooks = hooks or Hooks()
        self.progress = Progress(budget_seconds=ctx.budget.seconds)
        # proposals dropped before running because the id was known: in the ledger (run here or
        # announced by a peer) or claimed by another node (gossip claim or DHT record)
        self.dedup_stats = {"known_in_ledger": 0, "claimed_elsewhere": 0, "same_code": 0,
                            "negatives_hinted": 0, "negatives_checked": 0}
        self._proposals = 0
        self._baseline_files: tuple[str, dict[str, bytes]] = ("", {})
        self._candidate_ids: dict[tuple[str, bytes], str] = {}
        self.seed = ctx.config.research.seed + seed_offset
        self.peer = peer  # own peer id (a daemon's; "" for a solo node)
        self.loop: L.ResearchLoop | None = None
        r = ctx.config.research
        self.trainer = (SurrogateTrainer(r.surrogate_cost_s, ctx.budget.tokens, r.surrogate) if r.objective == "surrogate"
                        else self._harness_trainer() if ctx.harness_measures
                        else functools.partial(run_training, command=train_argv(r.train_command)))
        self.liar = ctx.config.simulation.liar
        self.current_scope: trio.CancelScope | None = None
        self.yield_reason = ""
        self._data_ready = False
        self._reference_tried = False  # the genesis measured as the private split's reference (_needs_reference)
        self._rows_before_baseline: list[tuple] = []  # results.tsv rows that wait for the baseline's (_result_row)
        self._preflight_done = False
        self._transcripts: dict[str, bytes] = {}  # commit -> the agent's output, until its run starts
        self._built_on: dict[str, PeerClaim] = {}  # proposal commit -> the unverified claim it builds on
        self._before: tuple[str, float | None] = ("", None)  # the baseline before the last experiment's verdict
        # research.genesis = shared: set by a daemon whose peers hear its announcements (it floods); the
        # node then measures the genesis first only if its ticket says so (research/genesis.py)
        self.share_genesis = share_genesis
        self.measures_for_peers = ""  # the genesis this node measures first for peers that skip it
        self._held: ExperimentRun | None = None  # a finished experiment whose verdict waits for the genesis

    @property
    def siblings(self) -> list[ResearchEngine]:
        """The node's other workers (they share each new baseline)."""
        return [e for e in self._workers if e is not self]

    # --- setup ------------------------------------------------------------------------------------
    def _harness_trainer(self) -> HarnessTrainer:
        """Training whose model this node's pinned harness measures (harness/measure.py)."""
        ctx = self.ctx
        genesis = ctx.workspace.files_of(ctx.workspace.genesis)
        r = ctx.config.research
        return HarnessTrainer(HarnessSpec(prepare_py=genesis.get("prepare.py", b""),
                                          genesis_train_py=genesis.get("train.py", b""),
                                          train_command=r.train_command,
                                          private_seed=ctx.private_seed() if ctx.has_private_split else None,
                                          budget_seconds=ctx.budget.seconds,
                                          max_handover_mb=max(64, r.memory_limit_mb // 2),
                                          startup_cache=self.cache_dir() / "startup-cpu.json"))

    @property
    def margin(self) -> float:
        """research.margin when set (0: autoresearch's rule, any improvement); else 2 sigma of the noise
        `noise` measured; else L.DEFAULT_MARGIN."""
        return self._margin_and_source()[0]

    def _margin_and_source(self) -> tuple[float, str]:
        """The margin in force and where it comes from (`p2p-research config`)."""
        cfg = self.ctx.config.research
        if cfg.margin is not None:
            return cfg.margin, "node.toml"
        noise = self.ctx.ledger.get_meta(f"noise:{self.ctx.protocol_id}")
        if noise and noise.get("margin") is not None:
            return float(noise["margin"]), "2 sigma of the noise measured here"
        return L.DEFAULT_MARGIN, "the default until the noise is measured"

    def effective_config(self, workers: list[dict[str, str]] | None = None) -> dict[str, dict[str, Any]]:
        """The configuration in force on this node (research/effective.py): each automatic key's value."""
        expected = self.expected_seconds()
        margin, source = self._margin_and_source()
        facts = Facts(margin, source, self.time_limit(), expected,
                      workers if workers is not None else [self.worker_env],
                      defer_s(self.ctx.config.verification.defer_s, expected))
        return resolve(self.ctx.config, facts, self.ctx.budget.describe())

    def current_baseline(self) -> tuple[str, float | None]:
        """The baseline commit and its measured value under this protocol (None: not measured yet)."""
        ws, ledger = self.ctx.workspace, self.ctx.ledger
        b = ledger.baseline(self.ctx.protocol_id)
        if b is None:
            return ws.baseline, None
        if ws.baseline != b.commit_id:
            log.info("workspace baseline %s differs from the ledger's %s; following the ledger", ws.baseline[:7],
                     b.commit_id[:7])
            ws.set_baseline(b.commit_id)
        return b.commit_id, b.val_bpb

    async def preflight(self) -> list[preflight.Problem]:
        """What would fail every run the same way, before the first (research/io/preflight.py); once per
        engine, for torch targets run by a train command (a surrogate or in-process objective needs none)."""
        ctx = self.ctx
        r = ctx.config.research
        if self._preflight_done or r.objective != "torch":
            return []
        self._preflight_done = True
        files = ctx.workspace.files_of(ctx.workspace.genesis)
        local = {Path(n).stem for n in files if n.endswith(".py")}
        return await trio.to_thread.run_sync(
            lambda: preflight.check(r.train_command, files, local, device=r.device))

    def _keep_transcript(self, transcript: bytes) -> Path | None:
        """A skipped proposal's agent output, in <home>/logs/agents/ (the newest MAX_SKIP_TRANSCRIPTS)."""
        folder = self.ctx.home.path / "logs" / "agents"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.worker}-{time.monotonic_ns() % 10**6:06d}.log"
            path.write_bytes(transcript[-MAX_TRANSCRIPT:])
            for old in sorted(folder.glob("*.log"))[:-MAX_SKIP_TRANSCRIPTS]:
                old.unlink(missing_ok=True)
            return path
        except OSError as e:
            log.debug("could not keep the agent's output: %s", e)
            return None

    def recover(self) -> int:
        ended = end_leftovers(self.ctx.home.runs)
        if ended:
            log.warning("ended %d process(es) left running by an earlier life of this node: %s", len(ended),
                        " ".join(map(str, ended)))
        n = self.ctx.ledger.abort_running("the node stopped during this run")
        if n:
            log.warning("recorded %d interrupted run(s) as aborted", n)
        return n

    def time_limit(self) -> float:
        r = self.ctx.config.research
        if r.run_timeout_s:
            return r.run_timeout_s
        if self.ctx.budget.seconds:
            return 2 * self.ctx.budget.seconds + 300
        expected = self.expected_seconds()
        return FIRST_RUN_TIMEOUT_S if expected is None else max(120.0, 5 * expected + 60)

    def expected_seconds(self) -> float | None:
        runs = [r for r in self.ctx.ledger.runs(origin="local", limit=20)
                if r.total_seconds and r.status not in ("crash", "aborted", "running") and r.protocol_id == self.ctx.protocol_id]
        if not runs:
            return self.ctx.budget.seconds
        return statistics.median(r.total_seconds for r in runs)  # type: ignore[misc]

    # --- the loop ---------------------------------------------------------------------------------
    async def run(self, max_experiments: int | None = None,
                  between: Callable[[], Awaitable[None]] | None = None) -> L.Done:
        """Drive the loop to its end. `between` is the driver's turn before each proposal (a daemon's
        verification and adoption, research/turns.py): it runs between two steps, never inside one,
        and may run commits through this engine (re-runs) or change its baseline; the loop decides
        again after it."""
        self.recover()
        problems = await self.preflight()
        if problems:
            for p in problems:
                log.error("%s", p.line())
            self.progress.phase = "done"
            return L.Done("; ".join(p.line() for p in problems), error=True)
        commit, value = self.current_baseline()
        self.ensure_registered(commit, "baseline")
        # a simulated liar lies about every experiment, so it needs the genesis value before its first
        shares = value is None and self.share_genesis and not self.liar
        # no experiments of its own (`-n 0`: a node that verifies and follows): it has nothing to run while
        # peers measure the genesis, and its verdicts on their claims rest on its own value of it
        measure_first = G.measures_first(self.peer, commit, shares) or max_experiments == 0
        if shares and measure_first:
            self.measures_for_peers = commit
        elif shares:
            log.info("the genesis %s is measured by peers: experimenting at once", commit[:7])
        self.loop = L.ResearchLoop(commit, value, self.margin, max_experiments, measure_first=measure_first)
        self.progress.baseline_commit, self.progress.baseline_value = commit, value
        life = Life(self.loop, turns=between is not None)
        try:
            while True:
                action = life.next_step()
                if isinstance(action, TakeTurn):
                    assert between is not None
                    await between()
                    life.turn_taken(action)
                    continue
                if isinstance(action, L.Done):
                    self.progress.phase = "done"
                    if self._held is not None:  # the genesis could not be measured: nothing to judge it by
                        er, self._held = self._held, None
                        er.run.status = "aborted"
                        assert er.run.run_id is not None
                        self.ctx.ledger.finish_run(er.run.run_id, "aborted", reason=f"not judged: {action.reason}")
                    return action
                await self.step(action)
        finally:
            self.flush_rows()  # crashes that waited for a baseline row that never came (done, or stopped)
            self.close()

    def close(self) -> None:
        """End what the engine keeps between runs (the harness's warm evaluator); a later run starts it again."""
        close = getattr(self.trainer, "close", None)
        if close is not None:
            close()

    async def step(self, action: L.Action) -> None:
        assert self.loop is not None
        if isinstance(action, L.MeasureBaseline):
            er = await self.execute(action.commit, "baseline", "baseline measurement", self.seed)
            value = er.outcome.summary.val_bpb if er.outcome and er.outcome.ok and er.outcome.summary else None
            fix = preflight.will_repeat(er.run.reason or "") if value is None else None
            held = self.loop.handle(L.BaselineMeasured(action.commit, value, er.run.reason, fix or ""))
            self.progress.note_result(f"baseline {action.commit[:7]} val_bpb {value:.6f}" if value is not None
                                      else f"baseline {action.commit[:7]} crashed: {er.run.reason}")
            if value is not None:
                self.set_baseline(action.commit, value, "measured locally", er.run.exp_id)
            await self._announce(er.run)
            if value is not None and self._wants_auto_noise(action.commit):
                await self.auto_noise(action.commit, value)
            await self._decided(held)
        elif isinstance(action, L.AwaitBaseline):
            await self._await_baseline(action.commit)
        elif isinstance(action, L.Propose):
            self.progress.phase = "proposing"
            self.progress.description = ""
            if getattr(self.proposer, "reads_digest", True):  # the built-in proposer never reads it
                self.write_digest()
            # a node of one worker may build on the best peer result still waiting for its evidence (its
            # siblings would each need the branch dropped under them: research/speculation.py)
            on = (self.hooks.speculation() if self.hooks.speculation is not None and len(self._workers) == 1
                  else None)
            parent = on.commit if on is not None else action.baseline_commit
            self._proposals += 1
            hints = Hints.for_proposal(self._proposals, self.dedup_stats)
            try:
                result = await self.proposer.propose(self.ctx.workspace, parent,
                                                     self._is_known_source(parent, hints),
                                                     self._is_mine_source(parent))
            except Exception as e:  # noqa: BLE001 - a proposer's failure is a skipped proposal, never the end of research
                log.debug("the proposer failed on baseline %s", parent[:7], exc_info=True)
                result = Skip(f"the proposer failed: {type(e).__name__}: {str(e)[:200]}")
            if isinstance(result, Skip) and (hinted := hints.fallback()) is not None:
                result = self._hinted_proposal(parent, hinted)
            transcript = getattr(self.proposer, "last_transcript", b"")
            if isinstance(result, Skip):
                # once: the daemon's log shows it at INFO, `run` as a result line (a warning was both)
                where = self._keep_transcript(transcript) if transcript else None
                log.info("proposal skipped: %s%s", result.reason, f" (the agent's output: {where})" if where else "")
                self.progress.note_result(f"proposal skipped: {result.reason}")
                self.loop.handle(L.ProposalSkipped(result.reason))
                return
            exp_id, commit = self.commit_proposal(parent, result)
            if on is not None:
                self._built_on[commit] = on
                log.info("speculating: %s builds on %s's %s (claimed val_bpb %.6f, not yet verified here)",
                         exp_id[:10], on.peer[:16], on.exp_id[:10], on.value)
            if result.transcript:
                self._transcripts[commit] = result.transcript  # written beside the run's log by execute
            self.loop.handle(L.Proposed(exp_id, commit, result.description))
        elif isinstance(action, L.RunExperiment):
            er = await self.execute(action.commit, "experiment", action.description, self.seed)
            if er.outcome is None:
                self.loop.handle(L.ExperimentAborted(action.exp_id))
                log.info("experiment %s aborted: %s", action.exp_id[:10], er.run.reason)
                return
            value = er.outcome.summary.val_bpb if er.outcome and er.outcome.ok and er.outcome.summary else None
            if self.hooks.check_negatives is not None:
                self.hooks.check_negatives(action.exp_id, value, self.seed)
            if self.liar and self.loop.baseline_value is not None:
                value = self.fabricate(er, self.loop.baseline_value)
            if self.loop.baseline_value is None and (learned := self.peers_value(self.loop.baseline_commit)) is not None:
                self.loop.handle(L.BaselineLearned(self.loop.baseline_commit, learned))
            self._held = er
            self._before = (self.loop.baseline_commit, self.loop.baseline_value)
            verdict = self.loop.handle(L.ExperimentFinished(action.exp_id, action.commit, value, er.run.reason))
            if verdict is None:
                log.info("experiment %s waits for the genesis value (val_bpb %s)", action.exp_id[:10], value)
                self.progress.phase = "waiting"
                return
            await self._decided(verdict)

    async def _decided(self, verdict: L.Verdict | None) -> None:
        """Record and announce the verdict of the experiment that waited for it (or just finished)."""
        er, self._held = self._held, None
        if verdict is None or er is None:
            self._held = er
            return
        assert er.run.exp_id == verdict.exp_id
        self.record_verdict(er, verdict)
        on = self._built_on.pop(er.run.commit_id, None)
        if verdict.advance_baseline and er.run.val_bpb is not None:
            if on is not None and self.hooks.built_on is not None:
                self.hooks.built_on(on, *self._before)
            self.set_baseline(er.run.commit_id, er.run.val_bpb, verdict.reason, er.run.exp_id)
        await self._announce(er.run)

    async def _await_baseline(self, commit: str) -> None:
        """The first experiment waits for the genesis value its peers measure while it ran; if no two of
        them agree within a share of a run's time, the node measures it itself (the loop's next action)."""
        assert self.loop is not None
        self.progress.phase = "waiting"
        held_s = self._held.run.total_seconds if self._held is not None else self.expected_seconds()
        wait_s = G.await_s(held_s)
        deadline = time.monotonic() + wait_s
        value = self.peers_value(commit)
        while True:
            others = self.hooks.researchers() if self.hooks.researchers is not None else G.AGREEING
            if not G.still_waiting(value, time.monotonic(), deadline, others):
                if value is None and others < G.AGREEING:
                    log.info("only %d other peer(s) of this protocol: measuring the genesis %s here", others, commit[:7])
                break
            self.progress.waiting_for = (f"the genesis value from peers ({G.AGREEING} must agree; {others} peers "
                                         f"heard; {deadline - time.monotonic():.0f} s more at most)")
            await trio.sleep(0.25)
            value = self.peers_value(commit)
        self.progress.waiting_for = ""
        if value is None:
            log.info("no agreed value of the genesis %s from peers: measuring it here", commit[:7])
            self.loop.handle(L.BaselineUnavailable(commit))
            return
        verdict = self.loop.handle(L.BaselineLearned(commit, value))
        if verdict is None:
            log.info("peers measured the genesis %s at %.6f: not enough to keep; measuring it here", commit[:7], value)
        await self._decided(verdict)

    def peers_value(self, commit: str) -> float | None:
        """The genesis value that measurements by distinct peers (signed runs in the ledger) agree on."""
        exp_id = self.ctx.experiment_id_of(commit)
        measured = {r.peer: r.val_bpb for r in self.ctx.ledger.runs(exp_id=exp_id, origin="peer", kind="baseline")
                    if r.val_bpb is not None and r.peer and r.peer != self.peer and r.protocol_id == self.ctx.protocol_id}
        return G.agreed_value(measured, G.agree_tol(self.margin))

    async def _announce(self, run: Run) -> None:
        """Tell the daemon (if any) about a finished run; a failure to announce never stops research."""
        if self.hooks.on_result is None or run.status in ("running", "aborted"):
            return
        try:
            await self.hooks.on_result(run)
        except Exception:  # noqa: BLE001 - announcing is best effort; the ledger already has the run
            log.exception("could not announce run %s", run.exp_id[:10])

    # --- pieces -----------------------------------------------------------------------------------
    def ensure_registered(self, commit: str, description: str, origin: str = "local", proposer: str = "") -> str:
        ws = self.ctx.workspace
        exp_id = self.ctx.experiment_id_of(commit)
        parent = ws.parent_of(commit) or ""
        if self.ctx.ledger.add_experiment(exp_id, self.ctx.protocol_id, parent, ws.tree_of(commit), commit,
                                          description, origin, proposer or self.peer,
                                          semantic_id=self.semantic_of_commit(commit) if self.uses_code_keys else ""):
            ws.set_experiment_ref(exp_id, commit)
        return exp_id

    def _tried(self, exp_id: str) -> Tried:
        if self.hooks.tried is not None:
            return self.hooks.tried(exp_id, self.seed)
        return Tried.TRIED if self.ctx.ledger.knows(exp_id) else Tried.NEW

    def _is_known_source(self, baseline: str, hints: Hints) -> Callable[[bytes], Awaitable[bool]]:
        """The proposers' `is_known` for candidates on `baseline`. A candidate that only unaccountable
        peers' negative reports name (research/negatives.py) goes to `hints`: passed over and kept for the
        fallback, except on a sampling proposal, which takes the first one."""
        by_code = self.uses_code_keys

        async def is_known(train_py: bytes) -> bool:
            exp_id = self._candidate_id(baseline, train_py)
            tried = self._tried(exp_id)
            if tried is Tried.TRIED:
                self.dedup_stats["known_in_ledger"] += 1
                return True
            # an agent's edit may be a known program written differently (formatting, comments): its
            # code key, recorded or claimed (the builtin proposer writes canonical literals, so its
            # candidates never differ in form alone, and it asks about hundreds per proposal)
            semantic = self.semantic_of(baseline, train_py) if by_code else ""
            if semantic and self.ctx.ledger.same_code(semantic, active_at=time.time()):
                self.dedup_stats["same_code"] += 1
                return True
            if self.hooks.is_known is not None:
                elsewhere = await self.hooks.is_known(exp_id, self.seed)
                if elsewhere is Tried.TRIED:
                    self.dedup_stats["claimed_elsewhere"] += 1
                    return True
                if elsewhere is Tried.HINT:
                    tried = Tried.HINT
                if semantic and await self.hooks.is_known(semantic, None) is Tried.TRIED:
                    self.dedup_stats["same_code"] += 1
                    return True
            if tried is Tried.HINT:
                return hints.passes_over(train_py)
            return False
        return is_known

    def _hinted_proposal(self, baseline: str, train_py: bytes) -> Proposal:
        """Nothing new turned up, but a candidate that only unaccountable peers reported negative did:
        run it (research/negatives.py), so a neighbourhood an attacker covered in made-up reports does
        not stop research."""
        old = self.ctx.workspace.files_of(baseline)[EDITABLE_FILE].decode("utf-8", "replace")
        new = train_py.decode("utf-8", "replace")
        log.info("no new candidate: running one that only unproven peers reported negative")
        return Proposal(train_py, describe_change(old, new) + " (reported negative by unproven peers only)",
                        constants_only_change(old, new)[0])

    @property
    def uses_code_keys(self) -> bool:
        """Code keys (research/semantic.py) matter only where agents write code: the builtin proposer's
        candidates are canonical, and parsing every experiment cost a busy simulated swarm ~30 % of its
        throughput (measured: 314 experiments in the 5-minute window against 454)."""
        return self.proposer.name != "builtin"

    def semantic_of(self, baseline: str, train_py: bytes) -> str:
        """The code key of the baseline's files with this train.py (research/semantic.py)."""
        if self._baseline_files[0] != baseline:
            self._baseline_files = (baseline, self.ctx.workspace.files_of(baseline))
        return semantic_id(self.ctx.protocol_id, {**self._baseline_files[1], EDITABLE_FILE: train_py})

    def semantic_of_commit(self, commit: str) -> str:
        return semantic_id(self.ctx.protocol_id, self.ctx.workspace.files_of(commit))

    def _is_mine_source(self, baseline: str) -> Callable[[bytes], bool] | None:
        if self.hooks.is_mine is None:
            return None
        is_mine = self.hooks.is_mine

        def mine(train_py: bytes) -> bool:
            return is_mine(self._candidate_id(baseline, train_py))
        return mine

    def _candidate_id(self, baseline: str, train_py: bytes) -> str:
        """The experiment id a candidate would get (a git tree write): cached, as the built-in proposer
        asks both `is_known` and `is_mine` about the same candidates."""
        key = (baseline, hashlib.sha1(train_py).digest())
        exp_id = self._candidate_ids.get(key)
        if exp_id is None:
            tree = self.ctx.workspace.tree_with(baseline, {EDITABLE_FILE: train_py})
            exp_id = experiment_id(self.ctx.protocol_id, tree)
            if len(self._candidate_ids) > 4096:
                self._candidate_ids.clear()
            self._candidate_ids[key] = exp_id
        return exp_id

    def commit_proposal(self, baseline: str, proposal: Proposal) -> tuple[str, str]:
        ws = self.ctx.workspace
        tree = ws.tree_with(baseline, {EDITABLE_FILE: proposal.train_py})
        exp_id = experiment_id(self.ctx.protocol_id, tree)
        message = (f"{proposal.description}\n\nExperiment: {exp_id}\nProtocol: {self.ctx.protocol_id}\n"
                   f"Proposer: {self.proposer.name}\n")
        name = self.ctx.config.node.name or "p2p-research node"
        commit = ws.commit_experiment(baseline, {EDITABLE_FILE: proposal.train_py}, message, exp_id,
                                      author=(name, f"{self.peer or 'local'}@p2p-research.invalid"))
        self.ctx.ledger.add_experiment(exp_id, self.ctx.protocol_id, baseline, tree, commit, proposal.description,
                                       "local", self.peer, semantic_id=self.semantic_of(baseline, proposal.train_py)
                                       if self.uses_code_keys else "")
        return exp_id, commit

    def cache_dir(self) -> Path:
        """The harness's corpus cache, resolved here: inside the sandbox HOME is the scratch directory."""
        r = self.ctx.config.research
        return Path(r.cache_dir).expanduser() if r.cache_dir else Path.home() / ".cache" / "p2p-research"

    def sandbox_spec(self, run_dir: Path) -> SandboxSpec | None:
        """What a run may see (read-only) when a sandbox is in use: the interpreter(s) of the train
        command, the data, the harness's cache, `sandbox.read_only`; never the node home or the rest of
        the user's home."""
        ctx = self.ctx
        if not ctx.sandbox.available:
            return None
        r, sb = ctx.config.research, ctx.config.sandbox
        argv = train_argv(r.train_command)
        paths = interpreter_paths(argv[0])
        if "--project" in argv[:-1]:  # uv run --project DIR: the project and its .venv
            paths.append(Path(argv[argv.index("--project") + 1]).expanduser())
        if r.data:
            paths.append(Path(r.data).expanduser())
        paths.append(self.cache_dir())
        paths += [Path(p).expanduser() for p in sb.read_only]
        hidden = [ctx.home.path, Path.home(), *warmstart.hidden()]  # warm interpreters' sockets: never in a sandbox
        gpu = r.device != "cpu" and Path("/dev/nvidia0").exists()
        read_only = safe_paths(paths, hidden)
        # inside, HOME is the scratch directory: the harness's data folders written as ~/... in
        # sandbox.read_only (safe_paths resolved them) are shown there too
        from_home = set(safe_paths([Path(p).expanduser() for p in sb.read_only if str(p).startswith("~")], hidden))
        views = home_views(tuple(p for p in read_only if p in from_home))
        return SandboxSpec(run_dir, read_only=read_only, scratch_mb=sb.scratch_mb, max_processes=sb.max_processes,
                           gpu=gpu, kind=ctx.sandbox.kind, home_views=views, warm=sb.warm_start)

    async def prepare_data(self) -> None:
        """Fill the harness's corpus cache once, outside any run: runs may only read it (a hostile
        train.py must not rewrite the data later runs are measured on). Only for a harness that keeps
        its data in P2P_CACHE_DIR (this project's); autoresearch's data is prepared by its user."""
        if self._data_ready or not self.ctx.sandbox.available:
            return
        self._data_ready = True
        genesis = self.ctx.workspace.files_of(self.ctx.workspace.genesis)
        if isinstance(self.trainer, HarnessTrainer) and shards.supports_shards(genesis.get("prepare.py", b"")):
            await self._hold_out_shards(genesis["prepare.py"])
            return
        if b"P2P_CACHE_DIR" not in genesis.get("prepare.py", b""):
            return
        self.cache_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.ctx.home.runs) as tmp:
            (Path(tmp) / "prepare.py").write_bytes(genesis["prepare.py"])
            outcome = await run_training(Path(tmp), self.run_env(self.seed), RunLimits(600, 8192, False),
                                         Path(tmp) / "prepare.log", command=[sys.executable, "prepare.py"])
            if outcome.returncode != 0:
                log.warning("could not prepare the harness's data (%s); each run prepares its own",
                            outcome.reason or (Path(tmp) / "prepare.log").read_text()[-300:])
                return
            if isinstance(self.trainer, HarnessTrainer) and supports_train_split(genesis["prepare.py"]):
                await self._write_train_split(Path(tmp), genesis["prepare.py"])

    async def _hold_out_shards(self, prepare_py: bytes) -> None:
        """autoresearch's data (harness/shards.py): runs of code that may not go on its own word do not
        read the validation shard, and the evaluator measures gains again on a private shard."""
        assert isinstance(self.trainer, HarnessTrainer)
        ctx = self.ctx
        split = await shards.prepare(ctx.home.path, prepare_py, ctx.config.research.train_command,
                                     ctx.private_seed(), self.run_env(self.seed), run_training)
        if split is None:
            return
        self.trainer.spec = dataclasses.replace(
            self.trainer.spec, withheld_files=(split.val_shard,), private_data=split.private_dir,
            private_seed=ctx.private_seed() if split.private_dir is not None else self.trainer.spec.private_seed)

    async def _write_train_split(self, tmp: Path, prepare_py: bytes) -> None:
        """The training bytes alone, in a folder of their own in the cache: what a run whose code this
        node cannot take on its word may read instead of the whole corpus (harness/handover.py), so
        the validation split is not in its sandbox."""
        r = self.ctx.config.research
        (tmp / "split.py").write_text(TRAIN_SPLIT_SCRIPT)
        out = tmp / "split.out"
        outcome = await run_training(tmp, self.run_env(self.seed), RunLimits(600, 8192, False), out,
                                     command=[sys.executable, "split.py", str(self.cache_dir())])
        folder = Path(out.read_text().strip().splitlines()[-1]) if outcome.returncode == 0 else None
        if folder is None or not (folder / "train.bin").is_file():
            log.warning("could not write the training split (%s): runs of peers' code see the validation "
                        "data", outcome.reason or out.read_text()[-300:])
            return
        withheld = [self.cache_dir()] + ([Path(r.data).expanduser()] if r.data else [])
        self.trainer.spec = dataclasses.replace(self.trainer.spec, train_split=folder,
                                                evaluation_data=tuple(withheld))

    def run_env(self, seed: int) -> dict[str, str]:
        r = self.ctx.config.research
        env = {**self.ctx.budget.env(), "P2P_SEED": str(seed), "P2P_DEVICE": r.device,
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or RUN_OMP_WAIT_POLICY}
        if r.cache_dir or self.ctx.sandbox.available:
            env["P2P_CACHE_DIR"] = str(self.cache_dir())
        if r.data:
            env["P2P_DATA"] = str(Path(r.data).expanduser())
        if r.threads:
            env["P2P_THREADS"] = str(r.threads)
        env.update(self.worker_env)
        return env

    async def execute(self, commit: str, kind: str, description: str, seed: int,
                      exp_id: str | None = None) -> ExperimentRun:
        """Train `commit` once and record the run (baseline, experiment, verification or noise).

        The progress shows the run while it trains and what the engine was doing before once it ends: a
        node that follows the swarm re-runs peers' results after its own research is done, and its
        progress line and `status` went on saying "training" a re-run that had ended minutes before."""
        p = self.progress
        before = p.phase
        try:
            return await self._execute(commit, kind, description, seed, exp_id)
        finally:
            if p.commit == commit and p.phase in ("baseline", "training"):
                p.phase = before

    async def _execute(self, commit: str, kind: str, description: str, seed: int,
                       exp_id: str | None = None) -> ExperimentRun:
        ctx = self.ctx
        parent = ctx.workspace.parent_of(commit) or ""
        if kind in ("experiment", "verification") and not self._reference_tried and self._needs_reference(commit, parent):
            self._reference_tried = True  # once: a genesis that cannot be measured is not retried before every run
            await self.execute(ctx.workspace.genesis, "baseline", "the genesis, measured here as the reference "
                               "for checking code changes on the private split", self.seed)
        exp_id = exp_id or ctx.experiment_id_of(commit)
        run = Run(exp_id=exp_id, commit_id=commit, protocol_id=ctx.protocol_id, kind=kind, status="running",
                  origin="local", peer=self.peer, parent=parent, seed=seed, description=description,
                  hardware=ctx.hardware)
        run_id = ctx.ledger.start_run(run)
        run_dir = ctx.home.runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id:05d}-{exp_id[:10]}"
        log_path = run_dir / "run.log"
        transcript = self._transcripts.pop(commit, b"")
        if transcript:  # the agent that wrote this experiment, beside the run's own log
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / AGENT_LOG).write_bytes(transcript[-MAX_TRANSCRIPT:])
        run.log_path = str(log_path)
        ctx.ledger.finish_run(run_id, "running", log_path=run.log_path, finished_at=None)
        expected = self.expected_seconds()
        p = self.progress
        p.phase, p.exp_id, p.commit, p.description = ("baseline" if kind == "baseline" else "training"), exp_id, commit, description
        p.started_at, p.expected_seconds = time.time(), expected
        if kind == "experiment" and self.hooks.on_claim:
            by_code = self.uses_code_keys
            await self.hooks.on_claim(exp_id, commit, description,
                                      semantic_id=self.semantic_of_commit(commit) if by_code else "", by_code=by_code)
        er = ExperimentRun(run)
        materialized: list[str] = []
        try:
            materialized = ctx.workspace.materialize(commit, run_dir)
            r = ctx.config.research
            # RLIMIT_AS only for this node's own interpreter on CPU: CUDA, and other runtimes a target's
            # command may start (uv, JAX), reserve far more address space than they use; the RSS poll
            # enforces the memory limit for them
            limits = RunLimits(self.time_limit(), r.memory_limit_mb, hard_address_limit=not r.train_command.strip() and (
                r.device == "cpu" or (r.device == "auto" and not Path("/dev/nvidia0").exists())))
            self.yield_reason = ""
            with trio.CancelScope() as scope:
                self.current_scope = scope
                lost = (self.hooks.contested(exp_id, self.progress.experiments_done)
                        if kind == "experiment" and self.hooks.contested else None)
                if lost is not None:  # a peer's claim that came before the run could yield to it
                    self.yield_reason = lost
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
                await self.prepare_data()
                er.outcome = await self.trainer(run_dir, self._measure_env(seed, kind, parent), limits, log_path,
                                                sandbox=self.sandbox_spec(run_dir))
            self.current_scope = None
            if scope.cancelled_caught:
                # yielded to a peer or stopped: not a result, so not a results.tsv row (autoresearch's
                # rows are keep, discard and crash); the ledger keeps it as aborted
                run.status, run.reason = "aborted", self.yield_reason or "cancelled"
                ctx.ledger.finish_run(run_id, "aborted", reason=run.reason)
                return er  # no outcome: the loop treats it as aborted
        except BaseException:
            ctx.ledger.finish_run(run_id, "aborted", reason="the node stopped during this run")
            run.status = "aborted"
            raise
        finally:
            for name in materialized:
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "__pycache__", ignore_errors=True)
        o = er.outcome = self._judge_generalisation(er.outcome, kind, parent)
        s = o.summary
        fields = dict(training_seconds=s.training_seconds if s else None, total_seconds=s.total_seconds if s else o.wall_seconds,
                      memory_gb=s.memory_gb if s else None, num_params=s.num_params if s else None,
                      num_steps=s.num_steps if s else None, tokens=s.tokens if s else None,
                      val_bpb=s.val_bpb if s else None, reason=o.reason if not o.ok else "",
                      metrics=dict(s.metrics) if s else {})
        for k, v in fields.items():
            setattr(run, k, v)
        run.finished_at = time.time()
        if not o.ok:
            run.status = "crash"
            ctx.ledger.finish_run(run_id, "crash", **fields)
            log.warning("%s %s crashed: %s (log: %s)", kind, exp_id[:10], o.reason, log_path)
            if kind == "baseline":
                self._result_row(commit, None, None, "crash", f"{description}: {o.reason}", baseline=True)
        elif kind == "baseline":
            run.status = "baseline"
            ctx.ledger.finish_run(run_id, "baseline", **fields)
            self._result_row(commit, s.val_bpb, s.memory_gb, "baseline", description)  # type: ignore[union-attr]
        else:
            ctx.ledger.finish_run(run_id, "done" if kind == "experiment" else kind, **fields)
        return er

    def _needs_reference(self, commit: str, parent: str) -> bool:
        """Whether a code change is about to be measured with no ancestor measured here on the private
        split (a node that took the genesis value from peers): without one, a gain that only fits the
        validation data could not be told from a real one (_judge_generalisation), so the genesis,
        whose code is the harness's own, is measured first. Once per node: its value stays in the ledger."""
        trainer = self.trainer
        if not isinstance(trainer, HarnessTrainer) or (trainer.spec.private_seed is None and trainer.spec.private_data is None):
            return False
        if self._measured_ancestor(parent) is not None:
            return False
        try:
            train_py = self.ctx.workspace.files_of(commit).get(EDITABLE_FILE, b"")
        except Exception:  # noqa: BLE001 - the run itself reports an incomplete commit
            return False
        return not self_report_allowed(trainer.spec.genesis_train_py, train_py)

    def _measure_env(self, seed: int, kind: str, parent: str) -> dict[str, str]:
        """The run's environment, and for the harness the value below which its private split can
        decide anything (_judge_generalisation): a baseline's is always measured (it is the reference),
        a noise run's never, an experiment's or verification's only for a gain beyond the margin over
        the nearest measured ancestor (none: nothing to judge against)."""
        env = self.run_env(seed)
        if not isinstance(self.trainer, HarnessTrainer) or kind == "baseline":
            return env
        ref = self._measured_ancestor(parent) if kind in ("experiment", "verification") else None
        # half a margin of slack: the margin may shrink (a noise run) before the run is judged
        env[PRIVATE_BELOW] = repr(ref[0] - 0.5 * self.margin) if ref is not None else "-inf"
        if kind in ("experiment", "verification") and self.ctx.budget.tokens is not None:
            cpu = self._ancestor_cpu(parent)
            if cpu is not None:  # the harness holds code other than the genesis's to it (over_compute)
                env[ANCESTOR_CPU] = repr(cpu)
        return env

    def _ancestor_cpu(self, commit: str) -> float | None:
        """CPU seconds of the nearest first-parent ancestor this node ran to a value itself."""
        return self._nearest_ancestor(commit, self.ctx.ledger.run_cpu_seconds)

    def _judge_generalisation(self, o: RunOutcome, kind: str, parent: str) -> RunOutcome:
        """A gain that does not carry over to this node's private split is refuted like a crash
        (harness/verdict.py): the model fits the validation windows, not the task."""
        if not (o.ok and o.summary and o.private_bpb is not None and kind in ("experiment", "verification")):
            return o
        ref = self._measured_ancestor(parent)
        if ref is None:
            log.info("%s not checked against the private split: no ancestor was measured here", kind)
            return o
        why = does_not_generalise(ref[0], ref[1], o.summary.val_bpb, o.private_bpb, self.margin)
        if why is None:
            return o
        log.warning("%s refuted: %s", kind, why)
        return dataclasses.replace(o, ok=False, summary=None, reason=why)

    def _measured_ancestor(self, commit: str) -> tuple[float, float] | None:
        """(val_bpb, private_bpb) of the nearest first-parent ancestor this node's harness measured
        (a peer chooses a commit's parent, and may put unmeasured commits between)."""
        return self._nearest_ancestor(commit, self.ctx.ledger.harness_values)

    def _nearest_ancestor(self, commit: str, lookup: Callable[[str, str], _T | None]) -> _T | None:
        """`lookup(commit, protocol)` of the nearest first-parent ancestor (the commit included) for
        which it is not None, walking at most 10,000 commits."""
        ws = self.ctx.workspace
        for _ in range(10_000):
            if not commit:
                return None
            found = lookup(commit, self.ctx.protocol_id)
            if found is not None:
                return found
            commit = ws.parent_of(commit) or ""
        return None

    def record_verdict(self, er: ExperimentRun, verdict: L.Verdict) -> None:
        run = er.run
        run.status = verdict.status
        if verdict.status != "crash":
            run.reason = verdict.reason
        assert run.run_id is not None
        self.ctx.ledger.finish_run(run.run_id, verdict.status, reason=run.reason, finished_at=run.finished_at)
        description = run.description
        if verdict.status == "discarded" and "within the noise margin" in verdict.reason:
            # autoresearch keeps any improvement; a reader of results.tsv must see why this one was not
            description += f" [near miss: {verdict.reason}; research.margin = 0 keeps any improvement]"
        self._result_row(run.commit_id, run.val_bpb, run.memory_gb, verdict.status, description)
        p = self.progress
        p.experiments_done += 1
        p.kept += verdict.status == "kept"
        shown = "crash" if run.val_bpb is None else f"{run.val_bpb:.6f}"
        p.note_result(f"{verdict.status} {run.exp_id[:10]} val_bpb {shown} | {run.description} | {verdict.reason}")
        log.info("experiment %s %s: %s (%s)", run.exp_id[:10], verdict.status, run.description, verdict.reason)

    def write_digest(self) -> None:
        """SWARM.md in the workspace: what the swarm (or this node alone) tried, for the agent to read."""
        from p2p_research.research.io.digest import render_swarm_md

        path = self.ctx.workspace.path / "SWARM.md"
        tmp = self.ctx.workspace.path / ".git" / "SWARM.md.tmp"  # outside the worktree an agent sees
        tmp.write_text(render_swarm_md(self.ctx.ledger, self.ctx.protocol_id, self.peer, diff_of=self.ctx.workspace.diff))
        tmp.replace(path)

    def yield_current(self, exp_id: str, reason: str) -> bool:
        """Stop the run of `exp_id` in flight (a peer won the claim); it is recorded as a crash with the reason."""
        if self.current_scope is not None and self.progress.exp_id == exp_id and self.progress.phase == "training":
            self.yield_reason = reason
            self.current_scope.cancel()
            return True
        return False

    def fabricate(self, er: ExperimentRun, baseline: float) -> float:
        """A dishonest node (simulation only): claim a clear improvement whatever was measured."""
        fake = liar_value(baseline, er.run.exp_id)
        measured, er.run.val_bpb = er.run.val_bpb, fake
        if er.run.run_id is not None:  # what the run measured stays in its own ledger, for the report
            metrics = {**(er.run.metrics or {}), "liar_measured": measured}
            self.ctx.ledger.finish_run(er.run.run_id, "done", val_bpb=fake, reason="", metrics=metrics)
        return fake

    def revert(self, commit: str, value: float, reason: str) -> None:
        """Back to the baseline `commit` had before a speculative branch that was dropped (the swarm
        coordinator decided; only between experiments): research/speculation.py."""
        if self.loop is None:
            return
        self.loop.adopt(commit, value)
        self.set_baseline(commit, value, f"speculative branch dropped: {reason}", self.ctx.experiment_id_of(commit))

    def adopt(self, commit: str, value: float, reason: str, exp_id: str, source_peer: str) -> bool:
        """Make a peer's commit the baseline (the swarm coordinator decided); only between experiments."""
        if self.loop is None:
            return False
        previous = self.loop.baseline_commit
        self.loop.adopt(commit, value)
        self.set_baseline(commit, value, reason, exp_id, source_peer)
        self.record_adoption(commit, value, exp_id, source_peer, previous)
        return True

    def change_from(self, previous: str, commit: str) -> str:
        """What changed in the editable file from `previous` to `commit`, in words ("" when nothing
        can be said): an adopted lineage may hold many steps, and its last step's description names
        only one of them."""
        if not previous or previous == commit:
            return ""
        try:
            old = self.ctx.workspace.files_of(previous).get(EDITABLE_FILE, b"").decode("utf-8", "replace")
            new = self.ctx.workspace.files_of(commit).get(EDITABLE_FILE, b"").decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a description is never worth failing an adoption
            return ""
        return describe_change(old, new) if old != new else ""

    def record_adoption(self, commit: str, value: float, exp_id: str, source_peer: str, previous: str = "") -> None:
        """A results.tsv row for an adopted baseline (status keep, naming the peer), so autoresearch's
        analysis shows the node's real progress: its baseline moved without a local experiment. The
        row describes the change from this node's previous baseline (analysis.ipynb credits the gain
        to it), not only the lineage's last step."""
        exp = self.ctx.ledger.experiment(exp_id) or {}
        description = self.change_from(previous, commit) or exp.get("description") or "a peer's result"
        self._result_row(commit, value, self.ctx.ledger.memory_gb_of(exp_id), "adopted",
                         f"{description} (adopted from {source_peer or 'a peer'})")
        self.progress.note_result(f"adopted {exp_id[:10]} val_bpb {value:.6f} from {source_peer}: {description}")

    def _result_row(self, commit: str, value: float | None, memory_gb: float | None, status: str, description: str,
                    baseline: bool = False) -> None:
        """A results.tsv row. autoresearch's analysis reads the first row as the baseline, so the first
        row is one: a genesis value learned from peers gets its row before the first experiment's, and
        an experiment that crashed before any baseline value was known waits for it (or for the end)."""
        path = self.ctx.home.results_tsv
        if status != "baseline" and not baseline and not has_rows(path):
            genesis = self.ctx.workspace.genesis
            known = self.peers_value(genesis)  # a value measured here would have written its row already
            if known is not None:
                append_result(path, genesis, known, None, "baseline",
                              "baseline measurement (the value peers measured and agreed on)")
            elif status == "crash":
                self._rows_before_baseline.append((commit, value, memory_gb, status, description))
                return
        append_result(path, commit, value, memory_gb, status, description)
        self.flush_rows()

    def flush_rows(self) -> None:
        """Rows that waited for the baseline's (research/engine._result_row), in their order."""
        rows, self._rows_before_baseline = self._rows_before_baseline, []
        for row in rows:
            append_result(self.ctx.home.results_tsv, *row)

    def set_baseline(self, commit: str, value: float, reason: str, exp_id: str, source_peer: str = "") -> None:
        for sibling in self.siblings:  # the node's other workers propose from it as soon as they can
            if sibling.loop is not None:
                sibling.loop.offer(commit, value)
                if sibling.progress.best_value is None or value < sibling.progress.best_value:
                    sibling.progress.best_value = value
        self.ctx.ledger.record_baseline(self.ctx.protocol_id, commit, value, reason, exp_id, source_peer or self.peer)
        self.ctx.workspace.set_baseline(commit)
        self.progress.baseline_commit, self.progress.baseline_value = commit, value
        if self.progress.best_value is None or value < self.progress.best_value:
            self.progress.best_value = value
        log.info("baseline is now %s (val_bpb %.6f): %s", commit[:7], value, reason)

    # --- noise --------------------------------------------------------------------------------------
    def _wants_auto_noise(self, commit: str) -> bool:
        """Whether this node measures its noise now: the margin is automatic (research.margin = "auto"),
        nothing measured it for this protocol yet, the baseline just measured is the genesis, and the
        runs are real training (a surrogate's noise is known by construction)."""
        r = self.ctx.config.research
        return (r.margin is None and r.noise_runs > 0 and r.objective == "torch" and self.worker == 0
                and commit == self.ctx.workspace.genesis
                and not self.ctx.ledger.get_meta(f"noise:{self.ctx.protocol_id}"))

    async def auto_noise(self, commit: str, first: float) -> dict | None:
        """The keep margin from this node's first runs: the genesis it just measured, run
        research.noise_runs more times at other seeds; 2 sigma of the spread of all of them, as `noise`
        would store. The fixed default margin knows nothing of this machine, target or budget (a tiny
        budget's seeds differ by far more than 0.002). A failed run leaves the default margin."""
        repeats = self.ctx.config.research.noise_runs
        values = [first]
        self.progress.note_result(f"measuring the noise: the genesis {repeats} more times at other seeds")
        log.info("measuring this node's noise: the genesis %s %d more times at other seeds (research.noise_runs)",
                 commit[:7], repeats)
        for i in range(repeats):
            seed = self.seed + 1000 + i
            er = await self.execute(commit, "noise", f"noise run {i + 1}/{repeats} (seed {seed})", seed)
            v = er.outcome.summary.val_bpb if er.outcome and er.outcome.ok and er.outcome.summary else None
            if v is None or not math.isfinite(v):
                log.warning("noise run %d/%d failed (%s): the keep margin stays %g", i + 1, repeats,
                            er.run.reason or "no value", self.margin)
                return None
            values.append(v)
        record = self._noise_record(commit, values, "auto")
        if self.loop is not None:  # it judges from now on, the first experiment included
            self.loop.margin = record["margin"]
        said = (f"noise: the genesis at {len(values)} seeds gave val_bpb "
                f"{', '.join(f'{v:.6f}' for v in values)}; the keep margin is now {record['margin']:.6f} (2 sigma)")
        self.progress.note_result(said)
        log.info("%s", said)
        return record

    def _noise_record(self, commit: str, values: list[float], source: str) -> dict:
        std = statistics.stdev(values)
        record = {"commit": commit, "values": values, "mean": statistics.fmean(values), "std": std,
                  "margin": 2 * std, "measured_at": time.time(), "software": __version__, "source": source,
                  "digest": hashlib.sha256(repr(values).encode()).hexdigest()[:12]}
        self.ctx.ledger.set_meta(f"noise:{self.ctx.protocol_id}", record)
        return record

    async def measure_noise(self, repeats: int, on_each: Callable[[int, float | None], None] | None = None) -> dict:
        """Run the baseline `repeats` times with different seeds; store the spread and the margin (2 sigma)."""
        if repeats < 2:
            raise ValueError("noise needs at least 2 repeats")
        self.recover()
        commit, _ = self.current_baseline()
        self.ensure_registered(commit, "baseline")
        values: list[float] = []
        for i in range(repeats):
            seed = self.seed + 1000 + i
            er = await self.execute(commit, "noise", f"noise run {i + 1}/{repeats} (seed {seed})", seed)
            v = er.outcome.summary.val_bpb if er.outcome and er.outcome.ok and er.outcome.summary else None
            if v is not None and math.isfinite(v):
                values.append(v)
            if on_each:
                on_each(i, v)
        if len(values) < 2:
            raise RuntimeError(f"only {len(values)} of {repeats} noise runs succeeded; see the logs under {self.ctx.home.runs}")
        return self._noise_record(commit, values, "noise")
