# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   set up .venv and run the main job on the default store
#   make test   set up .venv (and, as root, the peer tools) and run ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest peers bench bytecode clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Compiled once, so every command starts from bytecode even where PYTHONDONTWRITEBYTECODE
# is set (stale .pyc files are recompiled here, never silently at each start).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q src

peers:
	@scripts/install-peers.sh

demo: $(STAMP) bytecode
	@scripts/demo.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: $(STAMP) peers lint typecheck pytest

bench: $(STAMP) peers bytecode
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
