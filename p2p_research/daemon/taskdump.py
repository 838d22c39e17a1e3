"""Where a stopping node is stuck: a dump of every trio task's await chain, logged after a delay.

A node asked to stop cancels its nursery; if it is still running STOP_REPORT_S later, something is
waiting that cancellation does not reach (a shielded cleanup, a library that swallows Cancelled).
A thread-based stack dump shows only the scheduler; the await chains of the suspended trio tasks
say which coroutine, on which line, is holding the stop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import FrameType
from typing import Any

import trio
import trio.lowlevel

log = logging.getLogger("p2p_research.daemon")

STOP_REPORT_S = 10.0
# A stop still held this long ends the process (below). Under 30 s: the simulator, and many a service
# manager after it, SIGKILLs a node that has not stopped by then, and a SIGKILL skips the bookkeeping.
STOP_DEADLINE_S = 25.0


def await_chain(coro: Any) -> list[str]:
    """`file:line function` for each frame of a coroutine's await chain, outermost first."""
    out: list[str] = []
    seen = 0
    while coro is not None and seen < 64:
        seen += 1
        frame: FrameType | None = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            path = frame.f_code.co_filename
            short = path.split("site-packages/")[-1] if "site-packages/" in path else path.split("/p2p_research/")[-1]
            out.append(f"{short}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def task_tree(task: Any, depth: int = 0, lines: list[str] | None = None, limit: int = 400) -> list[str]:
    """One line per trio task (indented by nesting) with the innermost frames of its await chain."""
    lines = [] if lines is None else lines
    if len(lines) >= limit:
        return lines
    chain = [f for f in await_chain(task.coro) if not f.startswith(("trio/", "outcome/"))]  # trio's own frames say little
    lines.append(f"{'  ' * depth}{task.name}: {' <- '.join(reversed(chain[-3:])) or '(only trio frames)'}")
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            task_tree(child, depth + 1, lines, limit)
    return lines


async def report_if_still_stopping(delay: float = STOP_REPORT_S) -> None:
    """Run as a system task when the stop begins: after `delay`, log what every task still awaits.

    Not shielded: a system task is outside the stopping nursery, and trio cancels it as soon as the
    main task returns, so a prompt stop is never held up by this report."""
    await trio.sleep(delay)
    lines = task_tree(trio.lowlevel.current_root_task())
    log.warning("still stopping after %.0f s; trio tasks and what they await:\n%s", delay, "\n".join(lines))


async def end_if_still_stopping(finish: Callable[[], None], delay: float = STOP_DEADLINE_S,
                                exit: Callable[[int], Any] = os._exit) -> None:
    """Run as a system task when the stop begins: a stop still held `delay` seconds later ends the process.

    What holds such a stop is py-libp2p's teardown: in real 35-daemon runs 2 of 35 nodes were still
    running 30 s after SIGTERM, their tasks in yamux's `_write_frame` writing window updates and stream
    resets to peers that were stopping too (docs/simulation.md). Everything of the node's own is done
    by then (the run is stopped, every accepted result is in SQLite and git, each written atomically);
    `finish` does what the stop's own cleanup would still have done (the running run marked aborted,
    the ledger closed, the control socket removed), and the process exits with 0: the stop it was
    asked for happened. A prompt stop never waits for this task (see `report_if_still_stopping`)."""
    await trio.sleep(delay)
    log.warning("still stopping after %.0f s: ending the node without waiting for the tasks above", delay)
    try:
        finish()
    except Exception as e:  # noqa: BLE001 - the process ends either way; say what the cleanup could not do
        log.warning("the stop's cleanup failed: %s", e)
    finally:
        logging.shutdown()
        exit(0)
