# Everything goes through .venv, which these targets create themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOME_DIR ?= $(HOME)/.p2p-research

.PHONY: install run test test-fast bench simulate lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	test -f $(HOME_DIR)/node.toml || $(BIN)/p2p-research init --home $(HOME_DIR) --profile research
	$(BIN)/p2p-research node start --home $(HOME_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

simulate: $(STAMP)
	$(BIN)/p2p-research simulate --nodes 35 --duration 5m --solo-baseline --report sim-report

lint: $(STAMP)
	$(BIN)/ruff check p2p_research tests bench

clean:
	rm -rf $(VENV) build *.egg-info
