"""The stop report names the task that holds a stop and the line it waits on."""

import logging

import trio
import trio.lowlevel
from trio.testing import wait_all_tasks_blocked

from p2p_research.daemon.taskdump import report_if_still_stopping, task_tree


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
