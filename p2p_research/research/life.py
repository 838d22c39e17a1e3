"""A research node's life, step by step: the one order the daemon's engine and the DES's virtual node follow.

`research/loop.py` decides what a node does next (measure the baseline, wait for peers' value of it,
propose, run an experiment, stop). Around that, a node that belongs to a swarm takes a turn before each
proposal (research/turns.py: verify and adopt its peers' results), and a turn may change the baseline
the proposal was going to start from; then the loop decides again, and the new proposal gets its own
turn. Both drivers used to write that order out by hand (the engine's `run`, the virtual node's
`life`). `Life` is it, sans-IO in h11's shape: `next_step()` says what to do, `turn_taken()` says the
turn is done; the driver performs the step with real runs or in virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p_research.research import loop as L


@dataclass(frozen=True)
class TakeTurn:
    """Verify and adopt before proposing (the proposal it precedes is `before`)."""

    before: L.Propose


Step = L.Action | TakeTurn


class Life:
    """The order of a node's steps (see the module's docstring)."""

    def __init__(self, loop: L.ResearchLoop, *, turns: bool) -> None:
        self.loop = loop
        self.turns = turns          # a node of a swarm takes a turn before each proposal; a solo node none
        self._after_turn: L.Propose | None = None

    def next_step(self) -> Step:
        """The next thing to do: the loop's action, or the turn that comes before a proposal."""
        action = self.loop.next_action()
        if isinstance(action, L.Propose) and self.turns and action != self._after_turn:
            self._after_turn = None
            return TakeTurn(action)
        self._after_turn = None
        return action

    def turn_taken(self, step: TakeTurn) -> None:
        """The turn before `step.before` is over: that proposal goes ahead if the loop still wants it;
        any other (a baseline the turn adopted) gets a turn of its own."""
        self._after_turn = step.before
