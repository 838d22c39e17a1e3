"""The training runner with real child processes: crash, timeout, memory, NaN, no summary, cancel."""

import os

import pytest
import trio

from p2p_research.research.io.runner import RunLimits, run_training

GOOD = """print('hello')\nprint('---')\nfor k, v in [('val_bpb', 1.5), ('training_seconds', 1), ('total_seconds', 2),
('peak_memory_mb', 10), ('num_params', 5), ('num_steps', 3), ('tokens', 100)]:\n    print(f'{k}: {v}')\n"""


async def _run(tmp_path, code, time_limit=20.0, mem=2048):
    (tmp_path / "train.py").write_text(code)
    return await run_training(tmp_path, {}, RunLimits(time_limit, mem), tmp_path / "run.log")


async def test_summary_parsed(tmp_path):
    o = await _run(tmp_path, GOOD)
    assert o.ok and o.summary.val_bpb == 1.5 and o.summary.tokens == 100
    assert "hello" in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize("code, reason", [
    ("raise SystemExit(5)", "exit code 5"),
    ("raise ValueError('kaboom')", "kaboom"),
    ("import sys; print('loss is nan', file=sys.stderr); sys.exit(3)", "NaN"),
    ("print('no summary here')", "no summary"),
    ("print('---'); print('val_bpb: nan')", "not finite"),
    ("print('---'); print('training_seconds: 3.0')", "lacks val_bpb"),
    # autoresearch's fast fail: FAIL at the end of the last \r step line, exit 1
    ("import sys; print('\\rstep 00004 (1.0%) | loss: nan', end=''); print('FAIL'); sys.exit(1)", "loss diverged"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "signal 9"),
])
async def test_failures_have_reasons(tmp_path, code, reason):
    o = await _run(tmp_path, code)
    assert not o.ok and reason in o.reason


async def test_time_limit_kills_the_whole_group(tmp_path):
    code = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n"
    with trio.fail_after(15):
        o = await _run(tmp_path, code, time_limit=1.0)
    assert not o.ok and "time limit" in o.reason


async def test_a_cpu_limit_stops_the_run_and_its_children_where_they_spend_it(tmp_path):
    """The CPU of the run's processes (read from outside) is bounded as it is spent: a child that spins
    is counted and the run stops near the bound, long before its time limit."""
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
            "time.sleep(60)\n")
    (tmp_path / "train.py").write_text(code)
    with trio.fail_after(30):
        o = await run_training(tmp_path, {}, RunLimits(60, 2048, cpu_limit_s=1.0), tmp_path / "run.log")
    assert not o.ok and "CPU limit exceeded" in o.reason, o.reason
    assert 1.0 < o.cpu_seconds < 3.0, o.cpu_seconds


async def test_memory_limit(tmp_path):
    o = await _run(tmp_path, "x = bytearray(1500 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nimport time; time.sleep(5)\n", mem=512)
    assert not o.ok and ("memory" in o.reason.lower() or "MemoryError" in o.reason)


async def test_cancel_kills_child(tmp_path):
    (tmp_path / "train.py").write_text("import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    with trio.move_on_after(2):
        await run_training(tmp_path, {}, RunLimits(60, 1024), tmp_path / "run.log")
    pid = int((tmp_path / "pid").read_text())
    await trio.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


AUTORESEARCH_SUMMARY = """\
print("---")
print("val_bpb:          0.997900")
print("training_seconds: 300.1")
print("total_seconds:    325.9")
print("peak_vram_mb:     45060.2")
print("mfu_percent:      39.80")
print("total_tokens_M:   499.6")
print("num_steps:        953")
print("num_params_M:     50.3")
print("depth:            8")
"""


async def test_autoresearch_summary_is_read_under_its_own_names(tmp_path):
    o = await _run(tmp_path, AUTORESEARCH_SUMMARY)
    assert o.ok, o.reason
    s = o.summary
    assert s.val_bpb == 0.9979 and s.peak_memory_mb == 45060.2 and s.tokens == 499_600_000
    assert s.num_params == 50_300_000 and s.num_steps == 953 and s.training_seconds == 300.1
    assert s.metrics["mfu_percent"] == "39.80" and s.metrics["depth"] == "8"


async def test_train_command_runs_under_the_targets_interpreter(tmp_path):
    """A bare interpreter path gets train.py appended; the node's VIRTUAL_ENV is not passed on."""
    import sys

    from p2p_research.research.io.runner import train_argv

    assert train_argv("") == [sys.executable, "train.py"]
    assert train_argv("uv run train.py") == ["uv", "run", "train.py"]
    assert train_argv("/opt/env/bin/python") == ["/opt/env/bin/python", "train.py"]
    (tmp_path / "train.py").write_text("import os, sys\nprint(sys.argv, os.environ.get('VIRTUAL_ENV'))\n" + GOOD)
    o = await run_training(tmp_path, {}, RunLimits(60, 1024), tmp_path / "run.log", command=train_argv(sys.executable))
    assert o.ok and "['train.py'] None" in (tmp_path / "run.log").read_text()
    o = await run_training(tmp_path, {}, RunLimits(60, 1024), tmp_path / "run.log", command=["/nonexistent/python", "train.py"])
    assert not o.ok and "cannot start /nonexistent/python" in o.reason


async def test_cpu_of_children_the_kernel_reaps_is_still_counted(tmp_path):
    """A parent that ignores SIGCHLD has its children reaped by the kernel, which discards their CPU
    times (they never reach the parent's cutime): a run that trains in such children must not look
    cheap. Four children burn 1 CPU-s each; the parent only sleeps."""
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        end = time.process_time() + 1.0\n"
        "        while time.process_time() < end: pass\n"
        "        os._exit(0)\n"
        "    time.sleep(1.5)\n"
        "print('---'); print('val_bpb: 1.0')\n")
    o = await _run(tmp_path, code)
    assert o.ok, o.reason
    # each child is sampled alive at least once per 0.5 s: at most that much of each goes unseen
    assert o.cpu_seconds is not None and o.cpu_seconds >= 2.0, o.cpu_seconds
