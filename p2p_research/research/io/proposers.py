"""Proposers: where an experiment's change of train.py comes from.

- builtin: seeded mutations of the constants within program.md's search space, never an id the node
  already knows (the `is_known` predicate: the ledger, and in a swarm also the DHT and open claims).
- command: an external coding agent (any CLI), one-shot, in a scratch copy of the baseline with
  program.md and SWARM.md beside train.py; what it leaves in train.py is the experiment, everything
  else it leaves is discarded. No change, a failed agent, or a train.py that does not parse is a skip
  with the reason, never a crash.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pygit2
import trio

from p2p_research.research.constants import (
    ConstantsError,
    constants_only_change,
    parse_source,
    parses,
    read_constants,
    rewrite_constants,
)
from p2p_research.research.describe import describe_change
from p2p_research.research.io.combine import (
    MAX_STACKED,
    Win,
    candidates,
    merged_train_py,
    stack_knobs,
    win_knobs,
)
from p2p_research.research.io.ideas import Idea, idea_description
from p2p_research.research.io.objects import first_parent_ancestry
from p2p_research.research.io.workspace import Workspace
from p2p_research.research.mutate import prepare_choices, propose_mutation, step_scale
from p2p_research.research.pick import BUILTIN_TRIES, Merges, drive_async, owned_first, owned_only
from p2p_research.research.searchspace import SearchSpace

log = logging.getLogger("p2p_research.proposer")


def _parsed_text(data: bytes) -> str | None:
    """`data` as text when it is a Python program that parses, else None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return text if parses(text) else None


EDITABLE_FILE = "train.py"


@dataclass(frozen=True)
class Proposal:
    train_py: bytes
    description: str
    constants_only: bool
    transcript: bytes = b""   # the agent's stdout and stderr (the last 64 KiB), kept beside the run's log


@dataclass(frozen=True)
class Skip:
    reason: str


IsKnown = Callable[[bytes], Awaitable[bool]]
IsMine = Callable[[bytes], bool]
T = TypeVar("T")

#: at most one proposal in IDEA_EVERY is a sibling protocol's idea: which ideas come, and the gains there
#: that order them, are a peer's word, so peers can steer at most this share of a node's runs
IDEA_EVERY = 4
#: wins whose changed knobs a proposer remembers (a busy node hears hundreds; a stack draws from 8)
MAX_KNOWN_KNOBS = 1024


class Proposer(Protocol):
    name: str

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip: ...


def _completeness(workspace: Workspace, commit: str) -> bool | None:
    """Whether a commit is here in full (False while a peer's objects are still arriving); None when an
    object of it cannot be read (a peer's malformed object: git raises on it)."""
    try:
        return workspace.is_complete(commit)
    except (pygit2.GitError, KeyError, ValueError):
        return None


class BuiltinProposer:
    name = "builtin"
    reads_digest = False  # SWARM.md is for agents; rendering it before every proposal cost ~10% of a busy node

    def __init__(self, space: SearchSpace, seed: int, focus: Callable[[], dict[str, float]] | None = None,
                 wins: Callable[[], list[Win]] | None = None,
                 code_from: Callable[[str], bool] = lambda peer: False,
                 ideas: Callable[[], list[Idea]] | None = None,
                 on_idea: Callable[[Idea, str, bytes], None] | None = None,
                 researchers: Callable[[], int] | None = None) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.focus = focus
        #: kept results to combine with the baseline (research/io/combine.py); None: no combinations
        self.wins = wins
        #: whether a peer's code changes may be merged (the trust policy: sandboxed or trusted peers);
        #: otherwise a peer's win is combined only when it changed constants
        self.code_from = code_from
        #: sibling protocols' kept changes to try here (research/io/ideas.py); None: none
        self.ideas = ideas
        #: told (idea, baseline, train.py) when an idea is proposed, so its provenance is recorded
        self.on_idea = on_idea
        #: how many other researchers of the protocol the node hears: a node in a swarm takes smaller
        #: steps (research/mutate.step_scale); None: a node alone
        self.researchers = researchers
        self.stats = {"combinations": 0, "stacks": 0, "ideas": 0}
        self._ancestry: tuple[str, list[str]] = ("", [])
        self._merged: Merges[str, bytes] = Merges()
        #: a win's parent constants and changed knobs (None: not constants only), by the win's commit
        self._knobs: OrderedDict[str, tuple[dict, dict] | None] = OrderedDict()
        #: the stacks of the last (baseline, wins) asked for: their programs and the wins in each
        self._stacked: tuple[tuple, list[tuple[bytes, tuple[Win, ...]]]] = ((), [])
        self._since_idea = IDEA_EVERY  # proposals since the last idea (the first may be one)

    def _on_baseline(self, workspace: Workspace, baseline: str) -> None:
        """Walk the lineage once per baseline; merges are cached per (change, baseline) and limited per
        proposal (research/pick.Merges)."""
        if self._ancestry[0] != baseline:
            self._ancestry = (baseline, first_parent_ancestry(workspace, baseline))
        self._merged.start(baseline)

    def _merge(self, workspace: Workspace, parent: str, baseline: str, commit: str, code: bool,
               theirs: bool = False) -> bytes | None:
        """A change (parent -> commit) applied onto the baseline, cached; None while either commit is
        incomplete here (a peer's commit still arriving is merged once it is here, not cached as "no"),
        for good when an object of either cannot be read, and once this proposal's fresh merges are spent."""
        here = [_completeness(workspace, c) for c in (commit, parent)]
        if None in here:  # a peer's unreadable object: never mergeable
            self._merged.never(commit)
        return self._merged.get(commit, lambda: merged_train_py(workspace, parent, baseline, commit, code=code,
                                                               theirs=theirs), ready=all(here))

    def _win_knobs(self, workspace: Workspace, win: Win) -> tuple[Win, dict, dict] | None:
        """The win, its parent's constants and the knobs it changed, cached; None while either commit is
        incomplete here (asked again later), or for good when the win changed code or does not parse."""
        if win.commit not in self._knobs:
            if not all(_completeness(workspace, c) for c in (win.commit, win.parent)):
                return None
            try:
                parent, mine = (workspace.files_of(c)[EDITABLE_FILE].decode() for c in (win.parent, win.commit))
            except (KeyError, ValueError, UnicodeDecodeError, pygit2.GitError):
                self._knobs[win.commit] = None
            else:
                self._knobs[win.commit] = win_knobs(parent, mine)
            while len(self._knobs) > MAX_KNOWN_KNOBS:
                self._knobs.popitem(last=False)
        found = self._knobs[win.commit]
        return None if found is None else (win, *found)

    def _stacks(self, workspace: Workspace, baseline: str, source: str,
                wins: list[Win]) -> list[tuple[bytes, tuple[Win, ...]]]:
        """Several constants-only wins applied onto the baseline at once (research/io/combine.stack_knobs,
        as the DES does): each program with the wins in it, the largest last; cached per baseline and wins."""
        usable = [k for k in (self._win_knobs(workspace, w) for w in wins[:MAX_STACKED]) if k is not None]
        key = (baseline, tuple(w.commit for w, _, _ in usable))
        if self._stacked[0] != key:
            try:
                consts = read_constants(source)
            except ConstantsError:
                return []
            self._stacked = (key, [(rewrite_constants(source, knobs).encode(), used)
                                   for knobs, used in stack_knobs(consts, usable)])
        return self._stacked[1]

    async def _first_usable(self, merges: Iterable[tuple[bytes | None, T]], is_known: IsKnown,
                            is_mine: IsMine | None) -> tuple[str, bytes, T] | None:
        """The first merged train.py (as text, bytes and what it came from) this node should run: owned
        here, known nowhere, and parseable (research/pick.owned_only, the order the DES takes too)."""
        def usable() -> Iterator[tuple[str, bytes, T] | None]:
            # ownership first, then the parse (5 ms for the default train.py): a node owns a fraction
            # of the merges it draws, and both are pure, so the order does not change which one is first
            for data, origin in merges:
                if data is None or (is_mine is not None and not is_mine(data)):
                    yield None
                    continue
                text = _parsed_text(data)
                yield (text, data, origin) if text is not None else None

        return await drive_async(owned_only(usable(), None), lambda c: is_known(c[1]))

    async def _combination(self, workspace: Workspace, baseline: str, source: str, is_known: IsKnown,
                           is_mine: IsMine | None) -> Proposal | None:
        """A win that branched off the baseline's lineage, applied onto the baseline: the first such
        combination nobody ran or claimed that this node owns (others are left to their owners)."""
        if self.wins is None:
            return None
        wins = candidates(self.wins(), self._ancestry[1])

        def merges() -> Iterator[tuple[bytes | None, tuple[Win, ...]]]:
            yield from self._stacks(workspace, baseline, source, wins)  # several wins at once first
            for w in wins:
                yield self._merge(workspace, w.parent, baseline, w.commit, code=not w.peer or self.code_from(w.peer)), (w,)

        found = await self._first_usable(merges(), is_known, is_mine)
        if found is None:
            return None
        text, data, used = found
        self.stats["combinations"] += 1
        if len(used) > 1:
            self.stats["stacks"] += 1
        return Proposal(data, f"combine {', '.join(w.exp_id[:10] for w in used)}: {describe_change(source, text)}",
                        constants_only_change(source, text)[0])

    async def _idea(self, workspace: Workspace, baseline: str, source: str, is_known: IsKnown,
                    is_mine: IsMine | None) -> Proposal | None:
        """A sibling protocol's kept change, relative to its own parent, applied onto this baseline
        (the same merge and trust rule as a combination: a peer's code only where its code may run).
        Its numbers stay there: the experiment is measured and judged here like any other."""
        if self.ideas is None or self._since_idea < IDEA_EVERY:
            return None
        # an idea's knob values are what held there: tried at those values even where this baseline
        # moved the same knob (a combination of two wins here would be ambiguous)
        merges = ((self._merge(workspace, idea.parent, baseline, idea.commit, code=self.code_from(idea.peer),
                               theirs=True), idea) for idea in self.ideas())
        found = await self._first_usable(merges, is_known, is_mine)
        if found is None:
            return None
        text, data, idea = found
        self.stats["ideas"] += 1
        self._since_idea = 0
        if self.on_idea is not None:
            self.on_idea(idea, baseline, data)
        return Proposal(data, idea_description(idea, describe_change(source, text)),
                        constants_only_change(source, text)[0])

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip:
        """A mutation nobody ran or claimed; in a swarm, preferably one this node owns (`is_mine`).

        Ownership partitions the candidates of a baseline among the nodes (a consistent-hash ring of the
        peers heard from, research/ownership.py): nodes on the same baseline then propose disjoint
        experiments even before each other's claims arrive. Only if none of 200 candidates is both owned
        and unknown does the node run the first unknown of PREFER_TRIES others (claims, or the DHT, still
        guard it)."""
        source = workspace.files_of(baseline)[EDITABLE_FILE].decode()
        self._on_baseline(workspace, baseline)
        self._since_idea += 1
        for found in (self._combination, self._idea):
            merged = await found(workspace, baseline, source, is_known, is_mine)
            if merged is not None:
                return merged
        focus = self.focus() if self.focus else None
        try:
            prepare_choices(read_constants(source), self.space, focus)
        except (ValueError, ConstantsError) as e:  # an adopted program without this space's knobs
            return Skip(f"nothing to mutate in the baseline's train.py ({e}); combinations and peers' "
                        "results still come")
        # Whether a candidate is known may cost a DHT lookup (network.announce = kept: claims live there),
        # so it is asked of candidates this node owns first, and of the others only if none of those is
        # new (research/pick.owned_first, the order the DES draws in too).
        scale = step_scale(self.researchers() if self.researchers is not None else 0)

        def draws() -> Iterator[Proposal | None]:
            for _ in range(BUILTIN_TRIES):
                m = propose_mutation(source, self.space, self.rng, focus, scale)
                yield Proposal(m.source.encode(), m.description, True) if m.changes else None

        found = await drive_async(owned_first(draws(), (lambda p: is_mine(p.train_py)) if is_mine is not None else None,
                                              key=lambda p: p.train_py),
                                  lambda p: is_known(p.train_py))
        return found or Skip(f"no unknown experiment found in {BUILTIN_TRIES} mutations of the baseline")


AGENT_PROMPT = """\
You are proposing ONE experiment for a p2p-research node: a swarm of autoresearch nodes that train,
compare and share changes of train.py. This folder is a scratch copy of the node's baseline:
train.py (the swarm's current best version; the only file that may change), prepare.py (the fixed
harness: data, evaluation, budget; never modify it), program.md (the research instructions) and
SWARM.md (what the swarm already tried: results, negative results, experiments running now).

Do exactly this:
1. Read program.md and SWARM.md, then train.py (and prepare.py if you need to).
2. Make exactly ONE change to train.py that you expect to lower val_bpb and that SWARM.md does not
   show as tried. Edit train.py only; other files you create or change are discarded.
3. Do not run train.py or any training, do not use git (no branch, commit or reset), do not write
   results.tsv, do not install packages: the node trains your change, records it and shares it.
4. End your reply with ONE line that describes your change (e.g. "MATRIX_LR 0.04 -> 0.06" or
   "replace ReLU^2 with SwiGLU in the MLP"); that line becomes the experiment's description.

Where program.md describes a setup, a branch, a results.tsv, or an experiment loop that runs
forever, that does not apply here: this is a single proposal and the node runs the loop.
"""

_CLEANED_HOMES: set[str] = set()
SCRATCH_FILES_MAX = 64  # other files an agent leaves in the scratch copy: listed in the log, never used
DIFF_PREFIXES = ("+", "-", "@@", "diff --git", "index ", "--- ", "+++ ")


class CommandProposer:
    """An external coding agent, one-shot, in a scratch copy of the baseline.

    The agent never sees the node's repository: it works in a fresh folder (its own throwaway git
    repository, for agents that expect one) holding the baseline's files, program.md and SWARM.md, and
    only train.py comes back. An agent that runs git, trains, or leaves files (`.aider*`, caches,
    logs) changes nothing of the node's. The prompt (`AGENT_PROMPT`) is in `$P2P_PROMPT` and
    `$P2P_PROMPT_FILE`; `examples/proposers/` has adapters for Claude Code, Codex CLI and aider."""

    name = "command"
    reads_digest = True
    last_transcript: bytes = b""  # the last agent's output, also for a proposal that was skipped

    def __init__(self, command: str, timeout_s: float, extra_env: dict[str, str] | None = None,
                 prompt: str = AGENT_PROMPT) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.extra_env = extra_env or {}
        self.prompt = prompt

    def _scratch(self, workspace: Workspace, baseline: str) -> Path:
        home = str(workspace.path.parent)
        if home not in _CLEANED_HOMES:  # scratch copies a killed node left behind (one node per home:
            _CLEANED_HOMES.add(home)    # HomeLock), once per process: the node's other workers' are live
            for stale in workspace.path.parent.glob("agent-*"):
                shutil.rmtree(stale, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix="agent-", dir=workspace.path.parent))
        work = root / "work"
        work.mkdir()
        files = workspace.files_of(baseline)
        for name, data in files.items():
            (work / name).write_bytes(data)
        swarm = workspace.path / "SWARM.md"
        if swarm.is_file():
            shutil.copyfile(swarm, work / "SWARM.md")
        repo = pygit2.init_repository(str(work), initial_head="main")
        repo.index.add_all()
        repo.index.write()
        sig = pygit2.Signature("p2p-research node", "node@p2p-research.invalid")
        repo.create_commit("HEAD", sig, sig, "the swarm's baseline", repo.index.write_tree(), [])
        (root / "prompt.md").write_text(self.prompt)
        return root

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip:
        """An agent writes one change; it cannot be steered by ownership (`is_mine` is ignored)."""
        root = await trio.to_thread.run_sync(self._scratch, workspace, baseline)
        try:
            return await self._propose_in(root, workspace, baseline, is_known)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(functools.partial(shutil.rmtree, root, ignore_errors=True))

    async def _propose_in(self, root: Path, workspace: Workspace, baseline: str, is_known: IsKnown) -> Proposal | Skip:
        work = root / "work"
        env = {**os.environ, **self.extra_env,
               "P2P_WORKSPACE": str(work), "P2P_PROGRAM": str(work / "program.md"),
               "P2P_SWARM": str(work / "SWARM.md"), "P2P_BASELINE": baseline,
               "P2P_PROMPT": self.prompt, "P2P_PROMPT_FILE": str(root / "prompt.md")}
        output = b""
        proc = await trio.lowlevel.open_process(
            self.command, shell=True, cwd=str(work), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            with trio.move_on_after(self.timeout_s) as scope:
                assert proc.stdout is not None
                async for chunk in proc.stdout:
                    output = (output + chunk)[-65536:]
                await proc.wait()
            if scope.cancelled_caught:
                return Skip(f"the agent command ran past its {self.timeout_s:.0f} s limit")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the agent and anything it left running
            except (ProcessLookupError, PermissionError):
                pass
            if proc.returncode is None:
                with trio.CancelScope(shield=True):
                    await proc.wait()
        text = output.decode("utf-8", errors="replace")
        self.last_transcript = output
        if proc.returncode != 0:
            last = text.strip().splitlines()[-1:] or [""]
            return Skip(f"the agent command failed with exit code {proc.returncode}: {last[0][:200]}")
        old = workspace.files_of(baseline)[EDITABLE_FILE]
        path = work / EDITABLE_FILE
        if not path.is_file() or path.is_symlink():
            return Skip("the agent removed train.py")
        new = path.read_bytes()
        left = _left_files(work, workspace.files_of(baseline))
        if left:
            log.info("the agent left %s in its scratch copy; only train.py is used", ", ".join(left))
        if new == old:
            return Skip("the agent made no change to train.py")
        try:
            new_text = new.decode()
            parse_source(new_text)
        except (ConstantsError, UnicodeDecodeError) as e:
            return Skip(f"the proposed train.py {e}")
        if await is_known(new):
            return Skip("the agent proposed an experiment the swarm already knows")
        only_constants, _ = constants_only_change(old.decode(), new_text)
        description = agent_description(text) or describe_change(old.decode(), new_text)
        return Proposal(new, description, only_constants, transcript=output)


def _left_files(work: Path, baseline_files: dict[str, bytes]) -> list[str]:
    """What the agent changed or created besides train.py (for the log; none of it is used)."""
    out = []
    for p in sorted(work.rglob("*")):
        rel = p.relative_to(work)
        if rel.parts[0] == ".git" or not p.is_file():
            continue
        name = str(rel)
        if name == EDITABLE_FILE or name == "SWARM.md":
            continue
        if name not in baseline_files or p.read_bytes() != baseline_files[name]:
            out.append(name)
        if len(out) >= SCRATCH_FILES_MAX:
            break
    return out


def agent_description(agent_output: str) -> str:
    """The agent's own one-line description: its last non-empty output line, unless that is diff text,
    markup or far too long to be one line; "" when there is none (the node then summarizes the change)."""
    for line in reversed(agent_output.strip().splitlines()):
        line = " ".join(line.split())
        if not line:
            continue
        if line.startswith(DIFF_PREFIXES) or line.startswith("```") or len(line) > 300:
            return ""
        return line.strip("*_` ")[:200]
    return ""
