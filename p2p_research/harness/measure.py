"""Runs a training with its model handed over, then measures that model with this node's harness.

`HarnessTrainer` has the runner's signature (`run_training`), so the engine uses it for every run:
baselines, experiments, verifications and noise runs. The two processes:

1. the training: train.py under `p2p_handover.py` (harness/handover.py) in the usual sandbox, plus one
   writable folder, the hand-over folder. The node watches it from outside: the moment a complete
   hand-over (`meta.json`) appears is the node's clock, not the run's, and the files are copied out at
   once (later writes change nothing);
2. the evaluation: a child forked by the trainer's warm evaluator (harness/warm.py: `p2p_evaluate.py
   --serve`, harness/evaluate.py, beside this node's pinned prepare.py from the genesis commit, never
   the run's), which reads the copied hand-over, read-only, in a sandbox of its own with its own time
   and memory limits, and the node's private split seed in its environment.

The outcome's val_bpb is the evaluator's; train.py's printed value stays in the metrics as
`reported_val_bpb` and is judged against it (harness/verdict.py). A run that hands nothing over is
measured by nobody: its outcome says why (`measured_by = "self"`), and only code that
`verdict.self_report_allowed` lets through may be kept on its own word.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from p2p_research.harness import verdict
from p2p_research.harness.warm import EVALUATE_SCRIPT, WarmEvaluator
from p2p_research.research.io.runner import RunLimits, RunOutcome, run_training, train_argv
from p2p_research.research.io.sandbox import SandboxSpec

log = logging.getLogger("p2p_research.harness")

HANDOVER_SCRIPT = "p2p_handover.py"
STARTUP_SCRIPT = "p2p_startup.py"
HANDOVER_FILES = ("program.json", "state_dict.pt", "constants.pt", "meta.json")
MAX_HANDOVER_FILES = 16
WATCH_S = 0.01          # the hand-over's meta.json, while the run trains (a stat per poll)
BOUND_S = 0.1           # the hand-over folder's entries and bytes, while the run trains (a scandir)
EVAL_TIME_FLOOR_S = 120.0
PRIVATE_BELOW = "P2P_PRIVATE_BELOW"  # the evaluator measures the private split only below this value
ANCESTOR_CPU = "P2P_ANCESTOR_CPU_S"  # CPU seconds of the nearest ancestor measured here (token budgets)
NODE_ONLY_ENV = (PRIVATE_BELOW, ANCESTOR_CPU)  # what the node tells its harness, never the training
MEASURED_FILE = "measured.json"     # the node's value, written back for the waiting run (handover.py)
STARTUP_CACHE_S = 86_400.0          # how long a measured start-up cost is used before it is measured again
HAND_BACK_WAIT_S = 60.0             # how much longer than the evaluator's limit the run waits for it
# A cold evaluator (the first run, or after five minutes idle) starts this long after the run (or at the
# hand-over, if that comes first): the run's
# sandbox and interpreter start first, and the evaluator's own start (its sandbox, its interpreter,
# its torch import) slowed the run's start when both
# began together (fixture, 10 + 10 runs: +5.2 % at once, +3.7 % to +4.1 % with 0.2-0.8 s of lag). Its
# import (about 1 s) then still runs beside the run's own import, before the training takes both cores.
EVALUATOR_LAG_S = 0.4

# Run by the node (its own pinned harness, no sandbox) beside the genesis's prepare.py: writes the
# training bytes alone to a folder named by their hash in the cache and prints that folder.
TRAIN_SPLIT_SCRIPT = """\
import hashlib, os, sys
from pathlib import Path
import prepare
train, _ = prepare.split_bytes()
folder = Path(sys.argv[1]) / ("train-split-" + hashlib.sha256(train).hexdigest()[:16])
if not (folder / "train.bin").is_file():
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ("train.bin.%d.tmp" % os.getpid())
    tmp.write_bytes(train)
    os.replace(tmp, folder / "train.bin")
print(folder)
"""


@dataclass(frozen=True)
class HarnessSpec:
    """What the node measures with: its pinned harness and what only it knows."""

    prepare_py: bytes                 # the genesis commit's prepare.py
    genesis_train_py: bytes           # the genesis commit's train.py (what may go on its own word)
    train_command: str = ""           # the target's interpreter command ("" = this node's)
    private_seed: int | None = None   # the node's private split (never in a training's environment)
    budget_seconds: float | None = None
    max_handover_mb: int = 2048
    eval_time_limit_s: float | None = None   # None: a quarter of the run's limit, at least 120 s
    handover_slack_s: float | None = None    # None: verdict.HANDOVER_SLACK_S / _FRACTION
    # the training bytes alone (a folder with train.bin, engine._write_train_split), and what a run
    # whose code may not go on its own word then does not see: the corpus, the user's data
    train_split: Path | None = None
    evaluation_data: tuple[Path, ...] = ()
    # autoresearch's shape (harness/shards.py): the validation shard such a run must not read, and
    # the folder holding this node's private shard (the evaluator's only)
    withheld_files: tuple[Path, ...] = ()
    private_data: Path | None = None
    # where the interpreter's start-up CPU is remembered between processes (a file in the harness's
    # cache folder): measuring it cost every node process, and every `run`, another interpreter and
    # torch import (1.1-1.7 CPU-s)
    startup_cache: Path | None = None


def supports_handover(prepare_py: bytes) -> bool:
    """Whether a harness has the evaluation call the hand-over wraps (this project's and autoresearch's)."""
    return b"def evaluate_bpb" in prepare_py


def supports_private_split(prepare_py: bytes) -> bool:
    """Whether the harness generates its corpus the way evaluate._private_corpus redraws it."""
    return all(name in prepare_py for name in (b"class _World", b"class _Rng", b"_DOC_KINDS", b"CORPUS_SEED"))


def supports_train_split(prepare_py: bytes) -> bool:
    """Whether the harness splits one byte stream into training and validation the way
    handover._withhold_validation replaces (this project's)."""
    return all(name in prepare_py for name in (b"def split_bytes", b"def load_text", b"EVAL_CONTEXT"))


def script_argv(train_command: str, script: str, *extra: str) -> list[str]:
    """The target's command with train.py replaced by `script` (and `extra` after it): the same
    interpreter and environment as training, so the hand-over and the evaluator see the same torch."""
    argv = train_argv(train_command)
    for i, a in enumerate(argv):
        if Path(a).name == "train.py":
            return [*argv[:i], script, *extra, *argv[i + 1:]]
    return [*argv, script, *extra]


def _folder_bytes(folder: Path) -> tuple[int, int]:
    """Entries and bytes in the hand-over folder, without following anything the run put there."""
    count = size = 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                count += 1
                if count > MAX_HANDOVER_FILES:
                    break
                try:
                    size += entry.stat(follow_symlinks=False).st_blocks * 512 if entry.is_file(follow_symlinks=False) else 0
                except OSError:
                    continue
    except OSError:
        pass
    return count, size


def _copy_capped(src: Path, dest: Path, budget: int) -> int:
    """Copy one regular file the run wrote, never following a link and never more than `budget`
    bytes (it may still be growing); returns the bytes copied."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{src.name} is not a regular file")
        copied = 0
        with open(dest, "wb") as out:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return copied
                copied += len(chunk)
                if copied > budget:
                    raise OverflowError
                out.write(chunk)
    finally:
        os.close(fd)


def _snapshot(src: Path, dest: Path, max_bytes: int) -> str | None:
    """Copy a complete hand-over out of the run's reach; the reason when it cannot be taken."""
    count, size = _folder_bytes(src)
    if count > MAX_HANDOVER_FILES:
        return f"the hand-over folder holds more than {MAX_HANDOVER_FILES} entries"
    if size > max_bytes:
        return f"the handed-over model is {size / 2**20:.0f} MiB (at most {max_bytes / 2**20:.0f} MiB)"
    dest.mkdir(parents=True, exist_ok=True)
    budget = max_bytes
    for name in HANDOVER_FILES:
        try:
            budget -= _copy_capped(src / name, dest / name, budget)
        except OverflowError:
            return f"the handed-over model is over {max_bytes / 2**20:.0f} MiB"
        except FileNotFoundError:
            return f"the hand-over lacks {name}"
        except OSError as e:
            return f"the hand-over's {name} cannot be read: {e.strerror or e}"
    return None


def _hand_back(folder_fd: int, doc: dict) -> None:
    """Write the node's value into the run's hand-over folder for the waiting run. The folder is the
    run's: nothing in it is followed (a new file made with O_EXCL | O_NOFOLLOW, renamed over
    whatever the run put under the name), and the folder is the one the node made (an fd opened
    before the run started)."""
    tmp = f".{MEASURED_FILE}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder_fd)
        try:
            os.write(fd, json.dumps(doc).encode())
        finally:
            os.close(fd)
        os.replace(tmp, MEASURED_FILE, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError as e:  # the run filled or broke its own folder: it gets no value, and falls back
        log.info("could not hand the measured value back to the run: %s", e)


def _result_of(doc: dict) -> dict:
    """The evaluator's result line as the node takes it: a value (and the private split's), or why not."""
    if "error" in doc:
        return {"error": str(doc["error"])[:300]}
    value = doc.get("val_bpb")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return {"error": "the evaluation gave no value"}
    private = doc.get("private_bpb")
    return {"val_bpb": float(value),
            "private_bpb": float(private) if isinstance(private, (int, float)) and math.isfinite(private) else None}


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _cpu_metric(outcome: RunOutcome) -> dict[str, str]:
    """The run's CPU seconds, kept with its value: the reference its descendants' compute is held to."""
    return {"cpu_s": f"{outcome.cpu_seconds:.2f}"} if outcome.cpu_seconds else {}


def _with(outcome: RunOutcome, **changes) -> RunOutcome:
    return dataclasses.replace(outcome, **changes)


class HarnessTrainer:
    """The engine's trainer where the harness measures (see the module's docstring)."""

    def __init__(self, spec: HarnessSpec, runner=run_training) -> None:
        self.spec = spec
        self.runner = runner
        self.startup_cpu_s: float | None = None  # what any run spends to start (over_compute's floor)
        self.warm = WarmEvaluator(spec.prepare_py)

    def close(self) -> None:
        """End the warm evaluator (harness/warm.py); a later run starts another."""
        self.warm.close()

    def _startup_key(self) -> str:
        """What the start-up cost depends on: the interpreter (its path, size and time) and the command."""
        argv = script_argv(self.spec.train_command, STARTUP_SCRIPT)
        try:
            exe = Path(shutil.which(argv[0]) or argv[0]).resolve()
            st = exe.stat()
            return f"{exe}:{st.st_size}:{int(st.st_mtime)}:{' '.join(argv)}"
        except OSError:
            return ""

    def _remembered_startup(self, key: str) -> float | None:
        path = self.spec.startup_cache
        if path is None or not key:
            return None
        try:
            entry = json.loads(path.read_text()).get(key)
            if isinstance(entry, dict) and time.time() - float(entry["at"]) < STARTUP_CACHE_S:
                value = float(entry["cpu_s"])
                return value if math.isfinite(value) and 0 <= value < 60 else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return None

    def _remember_startup(self, key: str, value: float) -> None:
        path = self.spec.startup_cache
        if path is None or not key or value <= 0:
            return
        try:
            try:
                doc = json.loads(path.read_text())
                doc = doc if isinstance(doc, dict) else {}
            except (OSError, ValueError):
                doc = {}
            doc[key] = {"cpu_s": value, "at": time.time()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(dict(list(doc.items())[-16:])))
            os.replace(tmp, path)
        except OSError as e:  # a cache that cannot be written is measured again next time
            log.debug("could not remember the start-up cost: %s", e)

    async def _startup_cpu(self, run_dir: Path) -> float:
        """CPU seconds the target's interpreter takes to start and import torch, measured once a day per
        interpreter (remembered in `startup_cache`): the part of every run that the compute check's
        slack should not multiply (verdict.over_compute)."""
        key = self._startup_key()
        remembered = self._remembered_startup(key)
        if remembered is not None:
            return remembered
        folder = run_dir / "startup"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STARTUP_SCRIPT).write_text("import torch\n")
        try:
            o = await self.runner(folder, {}, RunLimits(120, 4096, False), folder / "startup.log",
                                  command=script_argv(self.spec.train_command, STARTUP_SCRIPT))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        value = o.cpu_seconds if o.returncode == 0 and o.cpu_seconds else 0.0
        log.info("starting the target's interpreter with torch takes %.2f CPU-s", value)
        self._remember_startup(key, value)
        return value

    async def __call__(self, run_dir: Path, env: dict[str, str], limits: RunLimits, log_path: Path,
                       sandbox: SandboxSpec | None = None) -> RunOutcome:
        spec = self.spec
        handover = run_dir / "handover"
        taken = self.warm.copy_dir(run_dir.parent)  # the one folder the warm evaluator reads
        for d in (handover, taken):
            shutil.rmtree(d, ignore_errors=True)
        handover.mkdir(parents=True)
        (run_dir / HANDOVER_SCRIPT).write_bytes(Path(__file__).with_name("handover.py").read_bytes())
        ancestor_cpu = _float_or_none(env.get(ANCESTOR_CPU))
        if ancestor_cpu is not None and self.startup_cpu_s is None:
            self.startup_cpu_s = await self._startup_cpu(run_dir)
        run_env = {**{k: v for k, v in env.items() if k not in NODE_ONLY_ENV}, "P2P_HANDOVER": str(handover),
                   "P2P_HANDOVER_WAIT_S": str(int(self._eval_time(limits) + HAND_BACK_WAIT_S))}
        train_sandbox = (dataclasses.replace(sandbox, read_write=(*sandbox.read_write, handover))
                         if sandbox is not None else None)
        if train_sandbox is not None and self._withholds_validation(run_dir):
            if spec.train_split is not None:
                kept = tuple(p for p in train_sandbox.read_only if p not in spec.evaluation_data)
                train_sandbox = dataclasses.replace(train_sandbox, read_only=(*kept, spec.train_split))
                run_env["P2P_TRAIN_SPLIT"] = str(spec.train_split / "train.bin")
            else:
                train_sandbox = dataclasses.replace(train_sandbox, masked=(*train_sandbox.masked, *spec.withheld_files))
                run_env["P2P_WITHHOLD_VAL"] = "1"
        argv = script_argv(spec.train_command, HANDOVER_SCRIPT, "train.py")
        # training past the budget is refused after the run (below) and stopped as it happens: code that
        # trains a hundred budgets long costs this node a few, not its time limit
        cpu_limit = (verdict.compute_limit(ancestor_cpu, startup_cpu_s=self.startup_cpu_s or 0.0)
                     if not self._may_self_report(run_dir) else None)
        run_limits = dataclasses.replace(limits, cpu_limit_s=cpu_limit) if cpu_limit is not None else limits
        folder_fd = os.open(handover, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        taken.mkdir(parents=True)
        seen: dict[str, object] = {}
        started = time.monotonic()
        eval_time = self._eval_time(limits)
        measured: dict = {}
        evaluated = trio.Event()
        handed = trio.Event()  # the hand-over is here: the evaluator starts now if it has not yet
        released = trio.Event()  # the copy is complete: the evaluator may measure it
        eval_scope = trio.CancelScope()

        def take() -> None:
            seen["refused"] = _snapshot(handover, taken, spec.max_handover_mb * 2**20)

        def release() -> None:
            """The copy is complete: the waiting evaluator measures it, within its own time limit."""
            seen["evaluating"] = True
            released.set()
            eval_scope.deadline = trio.current_time() + eval_time

        def finish(result: dict) -> None:
            """The value is known (or why not): the run waits in the harness's evaluate_bpb for it
            (handover.py). Once, by whichever comes first: the result line, or the evaluator's end."""
            if evaluated.is_set():
                return
            measured.update(result)
            evaluated.set()
            log.debug("the node's value is back %.3f s after the run started", time.monotonic() - started)
            _hand_back(folder_fd, measured if "val_bpb" in measured or "error" in measured
                       else {"error": "the evaluation was stopped"})

        async def evaluate() -> None:
            # a warm evaluator is ready at once; a cold one starts beside the run, so torch is imported
            # by the time the model comes
            result: dict = {}
            with trio.move_on_after(EVALUATOR_LAG_S):
                await handed.wait()
            try:
                with eval_scope:
                    eval_env = self._evaluation_env(env)
                    await self.warm.ensure(script_argv(spec.train_command, EVALUATE_SCRIPT, "--serve"), eval_env,
                                           limits, sandbox, hold_s=limits.time_limit_s + eval_time + HAND_BACK_WAIT_S,
                                           private_data=spec.private_data)
                    await released.wait()
                    result = await self._evaluate(run_dir, taken, eval_env, limits)
                if eval_scope.cancelled_caught and "evaluating" in seen:
                    result = {"error": f"the evaluation did not finish: time limit ({eval_time:.0f} s)"}
            except RuntimeError as e:  # the evaluator could not be started
                result = {"error": str(e)}
            finally:
                finish(result)

        async def watch(run_scope: trio.CancelScope) -> None:
            # the node's own clock on the hand-over, and a copy the run cannot change afterwards
            # (meta.json is written last, so an honest hand-over is complete when it appears); the
            # folder is the one place the run can write outside its tmpfs, so it is bounded as it grows
            limit = spec.max_handover_mb * 2**20
            meta = os.path.join(handover, "meta.json")
            bound_at = 0.0
            while not os.path.exists(meta):  # a stat, here: a thread per 20-ms poll cost the node 0.1 s a run
                if time.monotonic() >= bound_at:
                    bound_at = time.monotonic() + BOUND_S
                    count, size = await trio.to_thread.run_sync(_folder_bytes, handover)
                    if count > MAX_HANDOVER_FILES or size > limit:
                        seen["overflow"] = (f"the run wrote more than {MAX_HANDOVER_FILES} entries or "
                                            f"{limit / 2**20:.0f} MiB into the hand-over folder")
                        run_scope.cancel()
                        return
                await trio.sleep(WATCH_S)
            seen["after_s"] = time.monotonic() - started
            handed.set()
            log.debug("the hand-over is seen %.3f s after the run started", seen["after_s"])
            await trio.to_thread.run_sync(take)
            if seen["refused"] is None:
                release()
                log.debug("the hand-over is copied and released %.3f s after the run started",
                          time.monotonic() - started)
            else:
                eval_scope.cancel()
                finish({"error": str(seen["refused"])})  # the run's answer: nothing later replaces it

        try:
            async with trio.open_nursery() as evaluations:
                evaluations.start_soon(evaluate)
                outcome: RunOutcome | None = None  # stays None when the watcher stops the run
                async with trio.open_nursery() as nursery:
                    with trio.CancelScope() as run_scope:
                        nursery.start_soon(watch, run_scope)
                        outcome = await self.runner(run_dir, run_env, run_limits, log_path, command=argv,
                                                    sandbox=train_sandbox)
                        log.debug("the run ended %.3f s after it started", time.monotonic() - started)
                    nursery.cancel_scope.cancel()
                handed.set()  # the run is over: an evaluator still lagging starts (or is cancelled) now
                stopped = (verdict.over_compute(outcome.cpu_seconds, ancestor_cpu, startup_cpu_s=self.startup_cpu_s or 0.0)
                           if outcome is not None and cpu_limit is not None else None)
                if stopped is not None:  # stopped at the bound, or past it in its last instant
                    eval_scope.cancel()
                    return _with(outcome, ok=False, summary=None, reason=stopped, measured_by="harness")
                if outcome is not None and not outcome.ok and "error" in measured:
                    # a run that had no validation data of its own fails when the harness refuses its model
                    return _with(outcome, reason=f"the harness refused the handed-over model: {measured['error']}")
                result = self._without_model(outcome, handover, taken, seen, started, log_path, run_dir)
                if result is not None:
                    eval_scope.cancel()  # an evaluation under way, or waiting, is of no use now
                    return result
                if "evaluating" not in seen:
                    release()  # handed over in the run's last instant
                await evaluated.wait()
            reported = outcome.summary.val_bpb if outcome.summary else None
            if "error" in measured or "val_bpb" not in measured:
                why = measured.get("error", "the evaluation gave no value")
                return self._unmeasured(outcome, run_dir, f"the harness refused the handed-over model: {why}")
            value = measured["val_bpb"]
            lie = verdict.false_report(reported, value)
            metrics = {**outcome.summary.metrics, "reported_val_bpb": f"{reported:.6f}" if reported is not None else "",
                       "measured_by": "harness", **_cpu_metric(outcome)}
            if measured.get("private_bpb") is not None:
                metrics["private_bpb"] = f"{measured['private_bpb']:.6f}"
            summary = dataclasses.replace(outcome.summary, val_bpb=value, metrics=metrics)
            if lie is not None:
                return _with(outcome, ok=False, summary=None, reason=lie, reported_val_bpb=reported,
                             measured_by="harness")
            return _with(outcome, summary=summary, reported_val_bpb=reported, measured_by="harness",
                         private_bpb=measured.get("private_bpb"))
        finally:
            os.close(folder_fd)
            for d in (handover, taken):
                shutil.rmtree(d, ignore_errors=True)
            (run_dir / HANDOVER_SCRIPT).unlink(missing_ok=True)

    def _eval_time(self, limits: RunLimits) -> float:
        return self.spec.eval_time_limit_s or max(EVAL_TIME_FLOOR_S, limits.time_limit_s / 4)

    def _withholds_validation(self, run_dir: Path) -> bool:
        """Whether this run trains without the validation data: wherever the node has the training
        split, for any code but the genesis's own with other constants (which may still be kept on
        its own word, so it keeps the harness's in-process evaluation as a fallback)."""
        has = self.spec.train_split is not None or bool(self.spec.withheld_files)
        return has and not self._may_self_report(run_dir)

    def _may_self_report(self, run_dir: Path) -> bool:
        """Whether the run's code is the genesis's own with other constants: it runs the pinned
        harness as it is, keeps its budget by its own loop, and may go on its own word."""
        try:
            train_py = (run_dir / "train.py").read_bytes()
        except OSError:
            return False
        return verdict.self_report_allowed(self.spec.genesis_train_py, train_py)

    def _without_model(self, outcome: RunOutcome | None, handover: Path, taken: Path, seen: dict, started: float,
                       log_path: Path, run_dir: Path) -> RunOutcome | None:
        """The outcome when there is no model to measure (the run failed, handed nothing over, too
        much or too late); None when the evaluation decides."""
        if "overflow" in seen or outcome is None:
            why = str(seen.get("overflow", "the run was stopped"))
            return RunOutcome(False, None, why, time.monotonic() - started, None, log_path)
        if "after_s" not in seen and (handover / "meta.json").exists():  # written in the last instant
            seen["after_s"] = time.monotonic() - started
            seen["refused"] = _snapshot(handover, taken, self.spec.max_handover_mb * 2**20)
        if not outcome.ok:
            return outcome
        why_not = self._why_no_handover(handover, seen)
        if why_not is not None:
            return self._unmeasured(outcome, run_dir, why_not)
        late = verdict.late_handover(seen.get("after_s"), self.spec.budget_seconds,  # type: ignore[arg-type]
                                     self.spec.handover_slack_s)
        if late is not None:
            return _with(outcome, ok=False, summary=None, reason=late)
        return None

    def _why_no_handover(self, handover: Path, seen: dict) -> str | None:
        if seen.get("refused"):
            return str(seen["refused"])
        if "after_s" in seen:
            return None
        try:
            fd = os.open(handover / "refused.txt", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                said = os.read(fd, 300) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
            finally:
                os.close(fd)
            if said:
                return "no model was handed over: " + said.decode("utf-8", "replace").strip()
        except OSError:
            pass
        return "no model was handed over (train.py never called the harness's evaluate_bpb)"

    def _unmeasured(self, outcome: RunOutcome, run_dir: Path, why: str) -> RunOutcome:
        """No model measured (none handed over, or the evaluator refused it): the run's own word stands
        only for the genesis's code with other constants, which runs the pinned harness as it is (a
        target whose model uses operations the evaluator does not run still researches on its own)."""
        reported = outcome.summary.val_bpb if outcome.summary else None
        if self._may_self_report(run_dir):
            log.info("run measured by itself: %s", why)
            metrics = {**outcome.summary.metrics, "measured_by": "self", "unmeasured_because": why[:200],
                       **_cpu_metric(outcome)}
            return _with(outcome, summary=dataclasses.replace(outcome.summary, metrics=metrics),
                         reported_val_bpb=reported, measured_by="self")
        if why.startswith("the harness refused"):
            return _with(outcome, ok=False, summary=None, reported_val_bpb=reported, reason=why)
        return _with(outcome, ok=False, summary=None, reported_val_bpb=reported,
                     reason=f"the harness cannot measure this code's model, and its own val_bpb is only a claim: {why}")

    def _evaluation_env(self, env: dict[str, str]) -> dict[str, str]:
        """The evaluator's environment: the run's, less what only the training uses, plus what only the
        harness may know (the private split)."""
        spec = self.spec
        eval_env = {k: v for k, v in env.items() if k not in ("P2P_HANDOVER", ANCESTOR_CPU)}
        if spec.private_seed is not None:
            eval_env["P2P_PRIVATE_SEED"] = str(spec.private_seed)
        if spec.private_data is not None:
            eval_env["P2P_PRIVATE_DATA"] = str(spec.private_data)
        return eval_env

    async def _evaluate(self, run_dir: Path, taken: Path, eval_env: dict[str, str], limits: RunLimits) -> dict:
        """The warm evaluator's value of the copy in `taken`; its result line is kept in the run's
        `evaluate.log` (what the node took, written by the node)."""
        doc, line = await self.warm.measure(taken, eval_env, limits.memory_limit_mb)
        log_path = run_dir / "evaluate.log"
        log_path.write_text(line + "\n")
        if doc is None:
            # the evaluator ran out of memory on this model, or crashed: refuse the model
            return {"error": f"the evaluation did not finish: {line} (log: {self.warm.log_path or log_path})"}
        return _result_of(doc)
