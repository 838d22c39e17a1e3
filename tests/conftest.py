import atexit
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# As the node does for its runs (research/engine.RUN_OMP_WAIT_POLICY): torch in the test processes and
# in what they start directly sleeps while it waits for work, where spinning threads would take the
# cores the suite's other workers need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
CLI = [sys.executable, "-m", "p2p_research"]

# The warm interpreters the suite's sandboxed runs fork from (research/io/warmstart.py): one folder for
# the whole session, made by the controller and inherited by its workers and everything they start,
# so that the suite shares them and ends them when it ends (pytest_sessionfinish), not a user's.
if "P2P_WARM_FOLDER" not in os.environ:
    os.environ["P2P_WARM_FOLDER"] = tempfile.mkdtemp(prefix="p2p-warm-tests-")
    _WARM_OWNER = True
else:
    _WARM_OWNER = False

# What the session's tests share and only read (the autoresearch folder: tests/autoresearch_helpers.py),
# made once by the first test that asks for it, on whichever worker; the controller makes the folder and
# removes it at the session's end.
SHARED_ENV = "P2P_TEST_SHARED"
if SHARED_ENV not in os.environ:
    os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="p2p-shared-tests-")
    atexit.register(shutil.rmtree, os.environ[SHARED_ENV], True)  # also where no session ends (a benchmark)
    _SHARED_OWNER = True
else:
    _SHARED_OWNER = False


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return
    if _WARM_OWNER:
        from p2p_research.research.io.warmstart import shutdown

        shutdown()
        shutil.rmtree(os.environ["P2P_WARM_FOLDER"], ignore_errors=True)
    if _SHARED_OWNER:
        shutil.rmtree(os.environ[SHARED_ENV], ignore_errors=True)


# `python -m p2p_research ...` in the tests: forked from a server that has imported the node once per test
# process (p2p_research/sim/forkserver.py). A daemon's start is mostly imports, 1.6-1.9 CPU-s on two
# cores, and the suite starts about a hundred daemons and as many CLI calls. Each child is still an OS
# process of its own. P2P_TEST_FORK=0 starts every one with exec instead (the same tests must pass).
FORK = os.environ.get("P2P_TEST_FORK", "1") != "0"


@functools.cache
def _fork_server():
    from p2p_research.sim.forkserver import ForkServer

    server = ForkServer()
    atexit.register(server.close)
    return server


def popen_cli(args, *, env=None, cwd=ROOT, stdin=None, stdout=None, stderr=None, start_new_session=False,
              text=False):
    """`subprocess.Popen([*CLI, *args], ...)`, forked from this process's fork server (see FORK)."""
    args = [str(a) for a in args]
    if not FORK:
        import subprocess

        return subprocess.Popen([*CLI, *args], env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                                text=text, start_new_session=start_new_session)
    return _fork_server().spawn(args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr,
                                start_new_session=start_new_session, text=text)


def run_cli(args, *, env=None, cwd=ROOT, timeout=300):
    """`subprocess.run([*CLI, *args], capture_output=True, text=True, ...)` through the fork server."""
    args = [str(a) for a in args]
    if not FORK:
        import subprocess

        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return _fork_server().run(args, env=env, cwd=cwd, timeout=timeout)


# A tiny budget keeps real torch runs to a few seconds each in tests.
TINY_TOKENS = int(os.environ.get("P2P_TEST_TOKENS", "8192"))

# The tests' torch target: the embedded default target with a smaller model. At the tests' budget the
# harness's evaluation (its 128 windows of 256 bytes, and as many again on the private split) cost the
# default model 2.5 times its training; two blocks of width 64 instead of four of 128 take a measured run
# from about 6.3 to 3.3 CPU-s (docs/testing.md). Everything else, harness and knobs included, is the
# default target's, byte for byte.
SMALL_MODEL = ((b"N_LAYER = 4 ", b"N_LAYER = 2 "), (b"N_EMBD = 128 ", b"N_EMBD = 64 "))


@functools.cache
def small_target() -> Path:
    """A folder holding the tests' target (see SMALL_MODEL), made once per test process."""
    from p2p_research.research.io.home_init import read_target

    files = read_target(None)
    train = files["train.py"]
    for old, new in SMALL_MODEL:
        assert train.count(old) == 1, f"the default target's train.py no longer declares {old!r}"
        train = train.replace(old, new)
    folder = Path(tempfile.mkdtemp(prefix="p2p-test-target-"))
    atexit.register(shutil.rmtree, folder, True)
    for name, data in {**files, "train.py": train}.items():
        (folder / name).write_bytes(data)
    return folder


def init_small(path, **kwargs):
    """init_home on the tests' target (SMALL_MODEL): every home that trains with torch in a test."""
    from p2p_research.research.io.home_init import init_home

    return init_home(path, target=small_target(), **kwargs)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One corpus cache for the whole test session (generation is deterministic)."""
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture
def tiny_home(tmp_path, cache_dir):
    """An initialised node home on the tests' target with a tiny token budget and the shared cache."""
    home = init_small(tmp_path / "home")
    cfg = home.load_config()
    cfg.research.budget_tokens = TINY_TOKENS
    cfg.research.cache_dir = str(cache_dir)
    cfg.research.threads = 1
    cfg.research.noise_runs = 0  # the tests that measure the noise ask for it
    home.write_config(cfg)
    return home


def pytest_collection_modifyitems(config, items):
    """Slow system tests first (a stable sort keeps the order otherwise).

    The suite runs on several xdist workers; a minute-long daemon test picked up last would leave the
    other workers idle while it runs, so the long ones start first and the short ones fill the gaps."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With P2P_TEST_CPU=<file>, append each test's CPU seconds (this process and the children it reaped,
    which include the daemons' training runs), wall seconds, id, end time and worker to <file>: where
    the suite's time goes, and when."""
    out = os.environ.get("P2P_TEST_CPU")
    if not out:
        yield
        return
    import resource
    import time

    def cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    c0, t0 = cpu(), time.monotonic()
    yield
    with open(out, "a") as f:
        f.write(f"{cpu() - c0:.1f}\t{time.monotonic() - t0:.1f}\t{item.nodeid}\t{time.time():.1f}\t"
                f"{os.environ.get('PYTEST_XDIST_WORKER', '')}\t{os.getpid()}\n")
