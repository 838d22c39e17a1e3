# Everything goes through .venv, which these targets create themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOME_DIR ?= $(HOME)/.p2p-research

.PHONY: install run test test-fast bench simulate lint clean sandbox-tools nat-test-tools browser-tools bytecode

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory sandbox-tools
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,cluster]"
	touch $(STAMP)

install: $(STAMP)

# The project's own modules compiled once, here: where PYTHONDONTWRITEBYTECODE is set (CI's image sets
# it) every daemon, CLI call and test worker compiled them again (about 0.15 CPU-s a daemon start; a
# module edited since is compiled again in memory, as without this). compileall skips what is current.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 p2p_research > /dev/null

run: $(STAMP) bytecode
	test -f $(HOME_DIR)/node.toml || $(BIN)/p2p-research init --home $(HOME_DIR) --profile research
	$(BIN)/p2p-research node start --home $(HOME_DIR)

# The suite runs on TEST_WORKERS processes (pytest-xdist): much of its time is daemons and runs waiting
# on each other, so four workers keep two cores busy (three left them idle a tenth of the time:
# docs/testing.md). A module whose fixture is a swarm or prepared
# data stays on one worker (xdist_group); TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 4
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# Tests marked `alone` run afterwards, one process, nothing beside them; that process collects only
# the files that mark any (collecting all 740 tests took it 9 CPU-s to run one).
ALONE_FILES = $(shell grep -l 'mark.alone' tests/test_*.py)
test: $(STAMP) bytecode nat-test-tools browser-tools
	@status=0; $(PYTEST) -m "not alone" || status=1; \
	$(if $(ALONE_FILES),$(BIN)/python -m pytest -q -m alone $(ALONE_FILES) || status=1;) exit $$status

test-fast: $(STAMP) bytecode
	$(PYTEST) -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

simulate: $(STAMP)
	$(BIN)/p2p-research simulate --nodes 35 --duration 5m --solo-baseline --report sim-report

lint: $(STAMP)
	$(BIN)/ruff check p2p_research tests bench

clean:
	rm -rf $(VENV) build *.egg-info

# Training runs go through bubblewrap (the sandbox). Installed here where this user can (root with
# apt-get, or passwordless sudo); otherwise a clear message, and nodes fall back to constants-only trust.
sandbox-tools:
	@sh scripts/ensure-packages.sh "bwrap" "bubblewrap" "bubblewrap (bwrap) is not installed and could not be installed here: training runs will not be sandboxed and peers' changes stay limited to constants (install it with your package manager: bubblewrap)"

# The NAT test builds home routers out of network namespaces: it needs iproute2 and iptables (and root).
nat-test-tools:
	@sh scripts/ensure-packages.sh "iptables ip" "iptables iproute2" "iptables is not installed and could not be installed here (it needs root and apt-get): the NAT test across network namespaces is skipped"

# The dashboard test drives a real headless Chromium through chromedriver (Debian: chromium, chromium-driver).
browser-tools:
	@sh scripts/ensure-packages.sh "chromium chromedriver" "chromium chromium-driver" "chromium and chromium-driver are not installed and could not be installed here (they need root and apt-get): the dashboard's browser test is skipped"
