"""The stop report names the task that holds a stop and the line it waits on."""

import logging

import trio
import trio.lowlevel
from trio.testing import wait_all_tasks_blocked

from p2p_research.daemon.taskdump import (
    STOP_DEADLINE_S,
    end_if_still_stopping,
    report_if_still_stopping,
    task_tree,
)


async def _holds_the_stop():
    with trio.CancelScope(shield=True):
        await trio.sleep(0.5)


async def test_a_task_that_ignores_cancellation_is_named_with_its_line(caplog, autojump_clock):
    """In virtual time (trio's autojump clock): the half second the task holds the stop passes at once."""
    with caplog.at_level(logging.WARNING, logger="p2p_research.daemon"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_holds_the_stop, name="slow-cleanup")
            await wait_all_tasks_blocked()
            trio.lowlevel.spawn_system_task(report_if_still_stopping, 0.1, name="stop-report")
            nursery.cancel_scope.cancel()
    assert "still stopping" in caplog.text
    line = next(ln for ln in caplog.text.splitlines() if "slow-cleanup" in ln)
    assert "test_taskdump.py" in line and "_holds_the_stop" in line


async def test_task_tree_lists_nested_tasks():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever, name="child")
        await wait_all_tasks_blocked()
        lines = task_tree(trio.lowlevel.current_task())
        nursery.cancel_scope.cancel()
    assert any(ln.startswith("  child") for ln in lines)


def test_the_report_never_delays_a_prompt_stop():
    import time

    async def main():
        trio.lowlevel.spawn_system_task(report_if_still_stopping, 30.0, name="stop-report")

    t = time.monotonic()
    trio.run(main)
    assert time.monotonic() - t < 5


async def test_a_stop_held_past_the_deadline_does_the_cleanup_and_exits(caplog, autojump_clock):
    """A task that ignores cancellation for a minute (as py-libp2p's teardown writing to stopping peers
    did): at the deadline the cleanup runs and the process exits with 0, not a minute later."""
    done: list = []

    async def holds_a_minute():
        with trio.CancelScope(shield=True):
            await trio.sleep(60)
        done.append(("released", trio.current_time()))

    with caplog.at_level(logging.WARNING, logger="p2p_research.daemon"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holds_a_minute)
            await wait_all_tasks_blocked()
            t0 = trio.current_time()
            trio.lowlevel.spawn_system_task(end_if_still_stopping, lambda: done.append(("cleanup", trio.current_time())),
                                            STOP_DEADLINE_S, lambda code: done.append(("exit", code)), name="stop-deadline")
            nursery.cancel_scope.cancel()
    (cleanup, at), exit_, released = done
    assert cleanup == "cleanup" and at - t0 == STOP_DEADLINE_S and exit_ == ("exit", 0) and released[0] == "released"
    assert "ending the node without waiting" in caplog.text


async def test_a_cleanup_that_fails_still_exits(caplog, autojump_clock):
    exits: list = []

    def broken():
        raise OSError("the ledger is gone")

    with caplog.at_level(logging.WARNING, logger="p2p_research.daemon"):
        await end_if_still_stopping(broken, 1.0, exits.append)
    assert exits == [0] and "the ledger is gone" in caplog.text
