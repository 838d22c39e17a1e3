"""`node start` on a terminal: a live line per worker, updated in place (the same words and bar as
`run`'s live line), instead of the periodic `progress:` log line a log file or a pipe gets.

Log lines go through the same rich Console (net/logsetup.ConsoleHandler), which prints them above
the live line and draws it again: neither garbles the other.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

REFRESH_S = 0.5


def wants_live(progress_every_s: float, stream: IO[str] | None = None) -> bool:
    """A live line when progress is on and the daemon's stderr (where logs and the line go) is a
    terminal; a pipe, a file or systemd's journal gets the periodic line instead."""
    return progress_every_s > 0 and _is_tty(stream if stream is not None else sys.stderr)


def worker_label(engine: Any, workers: int) -> str:
    """`training | LEARNING_RATE 0.002 -> 0.004 | 41 s / 300 s | best 0.991234 | 12 done, 3 kept`, with
    the worker named when a node runs several (as the periodic line says it)."""
    prefix = f"worker {engine.worker}: " if workers > 1 else ""
    return prefix + engine.progress.label()


async def show_live(daemon: Any, console: Console, refresh_s: float = REFRESH_S) -> None:
    """The live lines of `daemon`'s workers until cancelled (or the node stops). Nothing until research
    has started; a relay, which researches nothing, never shows one."""
    while daemon.node is None or not daemon.node.workers.engines:
        await trio.sleep(refresh_s)
    # stdout on the same terminal (the ready lines, a stray print) goes above the line too
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pct]}"),
                  console=console, transient=True, refresh_per_second=1 / refresh_s,
                  redirect_stdout=_is_tty(sys.stdout), redirect_stderr=True) as bar:
        tasks: dict[int, TaskID] = {}
        while daemon.node is not None:
            _update(bar, tasks, daemon.node.workers.engines)
            await trio.sleep(refresh_s)


def _update(bar: Progress, tasks: dict[int, TaskID], engines: list[Any]) -> None:
    """One line per worker: its label, and its bar while a run's expected length is known."""
    for eng in engines:
        frac = eng.progress.fraction()
        pct = "" if frac is None else f"{100 * frac:3.0f}%"
        if eng.worker not in tasks:
            tasks[eng.worker] = bar.add_task("", total=1.0, pct="")
        bar.update(tasks[eng.worker], description=worker_label(eng, len(engines)),
                   completed=frac or 0.0, pct=pct)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: no terminal
        return False


async def run_daemon(daemon: Any, ready: Any, console: Console | None) -> None:
    """`daemon.run(ready)`, with the live line on `console` beside it when one is given."""
    if console is None:
        await daemon.run(ready)
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_live, daemon, console)
        await daemon.run(ready)
        nursery.cancel_scope.cancel()
