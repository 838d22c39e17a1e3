"""Proposers: where an experiment's change of train.py comes from.

- builtin: seeded mutations of the constants within program.md's search space, never an id the node
  already knows (the `is_known` predicate: the ledger, and in a swarm also the DHT and open claims).
- command: an external coding agent (any CLI) run in the workspace with program.md and SWARM.md
  beside train.py; whatever it leaves changed in train.py is the experiment. No change, a change of any
  other file, or a train.py that does not parse is a skip with the reason, never a crash.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from p2p_research.research.constants import ConstantsError, constants_only_change, parse_source
from p2p_research.research.mutate import propose_mutation
from p2p_research.research.searchspace import SearchSpace
from p2p_research.research.workspace import Workspace

log = logging.getLogger("p2p_research.proposer")

EDITABLE_FILE = "train.py"
BUILTIN_TRIES = 200


@dataclass(frozen=True)
class Proposal:
    train_py: bytes
    description: str
    constants_only: bool


@dataclass(frozen=True)
class Skip:
    reason: str


IsKnown = Callable[[bytes], Awaitable[bool]]
IsMine = Callable[[bytes], bool]

PREFER_TRIES = 60  # candidates examined for one this node owns before settling for another unknown one


class Proposer(Protocol):
    name: str

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip: ...


class BuiltinProposer:
    name = "builtin"
    reads_digest = False  # SWARM.md is for agents; rendering it before every proposal cost ~10% of a busy node

    def __init__(self, space: SearchSpace, seed: int, focus: Callable[[], dict[str, float]] | None = None) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.focus = focus

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip:
        """A mutation nobody ran or claimed; in a swarm, preferably one this node owns (`is_mine`).

        Ownership partitions the candidates of a baseline among the nodes (rendezvous hashing of the
        experiment id over the peers heard from): nodes on the same baseline then propose disjoint
        experiments even before each other's claims arrive. Only if none of PREFER_TRIES unknown
        candidates is owned here does the node run another unknown one (claims still guard it)."""
        source = workspace.files_of(baseline)[EDITABLE_FILE].decode()
        focus = self.focus() if self.focus else None
        fallback: Proposal | None = None
        unknown = 0
        for _ in range(BUILTIN_TRIES):
            m = propose_mutation(source, self.space, self.rng, focus)
            if not m.changes:
                continue
            data = m.source.encode()
            if await is_known(data):
                continue
            proposal = Proposal(data, m.description, True)
            if is_mine is None or is_mine(data):
                return proposal
            fallback = fallback or proposal
            unknown += 1
            if unknown >= PREFER_TRIES:
                break
        if fallback is not None:
            return fallback
        return Skip(f"no unknown experiment found in {BUILTIN_TRIES} mutations of the baseline")


class CommandProposer:
    name = "command"
    reads_digest = True

    def __init__(self, command: str, timeout_s: float, extra_env: dict[str, str] | None = None) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.extra_env = extra_env or {}

    async def propose(self, workspace: Workspace, baseline: str, is_known: IsKnown,
                      is_mine: IsMine | None = None) -> Proposal | Skip:
        """An agent writes one change; it cannot be steered by ownership (`is_mine` is ignored)."""
        workspace.checkout_baseline()
        env = {**os.environ, **self.extra_env,
               "P2P_WORKSPACE": str(workspace.path), "P2P_PROGRAM": str(workspace.path / "program.md"),
               "P2P_SWARM": str(workspace.path / "SWARM.md"), "P2P_BASELINE": baseline}
        output = b""
        try:
            proc = await trio.lowlevel.open_process(
                self.command, shell=True, cwd=str(workspace.path), env=env, stdin=subprocess.DEVNULL,
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
                if proc.returncode is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    with trio.CancelScope(shield=True):
                        await proc.wait()
            text = output.decode("utf-8", errors="replace")
            if proc.returncode != 0:
                last = text.strip().splitlines()[-1:] or [""]
                return Skip(f"the agent command failed with exit code {proc.returncode}: {last[0][:200]}")
            changed, deleted = workspace.worktree_changes()
            others = sorted(set(changed) - {EDITABLE_FILE}) + sorted(deleted)
            if others:
                return Skip(f"the agent changed files other than train.py ({', '.join(others)}); only train.py may change")
            if EDITABLE_FILE not in changed:
                return Skip("the agent made no change to train.py")
            new = changed[EDITABLE_FILE]
            try:
                parse_source(new.decode())
            except (ConstantsError, UnicodeDecodeError) as e:
                return Skip(f"the proposed train.py {e}")
            if await is_known(new):
                return Skip("the agent proposed an experiment the swarm already knows")
            old = workspace.files_of(baseline)[EDITABLE_FILE].decode()
            only_constants, _ = constants_only_change(old, new.decode())
            description = _description(text)
            return Proposal(new, description, only_constants)
        finally:
            workspace.checkout_baseline()


def _description(agent_output: str) -> str:
    """The agent's last non-empty output line (a one-line summary of its change), or a default."""
    for line in reversed(agent_output.strip().splitlines()):
        line = " ".join(line.split())
        if line:
            return line[:300]
    return "change proposed by the agent command"
