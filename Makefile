# Two commands on a fresh Debian machine with Python 3.11:
#   make demo   set up .venv and run the main job on the default store
#   make test   set up .venv (and, as root, the peer tools) and run ruff, mypy and pytest
# Longer runs of the campaign's tests (issue 10), outside make test:
#   make fuzz   scripts/fuzz.py: 5,000 mutated archives (FUZZ_CASES=20000 FUZZ_ARGS="--seed 11")
#   make soak   the concurrency, fuzz, crash and fault tests at OCISTORE_CAMPAIGN_SCALE=20
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest peers bench bytecode clean fuzz soak

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

FUZZ_CASES ?= 5000
SOAK_TESTS := tests/test_concurrency.py tests/test_fuzz.py tests/test_crash.py tests/test_faults.py

fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --cases $(FUZZ_CASES) $(FUZZ_ARGS)

soak: $(STAMP) peers
	OCISTORE_CAMPAIGN_SCALE=20 $(BIN)/pytest -q $(SOAK_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
