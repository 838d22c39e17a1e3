import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
    from p2p_research.research.home_init import init_home

    home = init_home(tmp_path / "home")
    cfg = home.load_config()
    cfg.research.budget_tokens = TINY_TOKENS
    cfg.research.cache_dir = str(cache_dir)
    cfg.research.threads = 1
    cfg.research.noise_runs = 0  # the tests that measure the noise ask for it
    home.write_config(cfg)
    return home
