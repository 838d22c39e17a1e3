import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# As the node does for its runs (research/engine.RUN_OMP_WAIT_POLICY): torch in the test processes and
# in what they start directly sleeps while it waits for work, where spinning threads would take the
# cores the suite's other workers need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
CLI = [sys.executable, "-m", "p2p_research"]

# A tiny budget keeps real torch runs to a few seconds each in tests.
TINY_TOKENS = int(os.environ.get("P2P_TEST_TOKENS", "8192"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One corpus cache for the whole test session (generation is deterministic)."""
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture
def tiny_home(tmp_path, cache_dir):
    """An initialised node home with a tiny token budget and the shared cache."""
    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "home")
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
    which include the daemons' training runs) and wall seconds to <file>: where the suite's time goes."""
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
        f.write(f"{cpu() - c0:.1f}\t{time.monotonic() - t0:.1f}\t{item.nodeid}\n")
