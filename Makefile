# Two commands for a newcomer: `make run` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# Demo settings for `make run` only; set your own PROJECTOR_* variables to override them.
export PROJECTOR_SIGNING_KEYS ?= test:tk_demo_key,live:pk_demo_key
export PROJECTOR_READ_TOKENS ?= demo-read-token
export PROJECTOR_DB ?= data/projector.sqlite3

.PHONY: run test lint typecheck pytest reliability bench schemas clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/projector serve --seed data/sample-deliveries.jsonl

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check projector tests data
	$(BIN)/ruff format --check projector tests data

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

# The evidence behind RELIABILITY.md: a long crash loop, then the hostile-input table, the
# fuzzers at 2,000 examples each, and the machine faults; then the crash loop on PostgreSQL
# (two processes and a throwaway cluster: needs initdb, Debian: apt-get install postgresql).
# A few minutes in all.
reliability: $(STAMP)
	$(BIN)/python -m tests.crash_loop --kills 12
	$(BIN)/python -m tests.crash_loop --kills 6 --workers 2
	HYPOTHESIS_PROFILE=reliability $(BIN)/pytest -q -p no:cacheprovider \
		tests/test_hostile.py tests/test_fuzz.py tests/test_machine_faults.py tests/test_crash.py \
		--hypothesis-show-statistics
	$(BIN)/python -m tests.pg_crash_loop --kills 12

# The service against its baselines (BENCHMARKS.md); needs wrk (Debian: apt-get install wrk).
# The first run builds 250k- and 1M-delivery logs under bench-results/ (a few minutes).
# Then ingest with a 2 ms fsync (an LD_PRELOAD shim built with gcc; about 4 minutes),
# serve --workers 2 against two bare processes on one port (about 2 minutes), and
# the PostgreSQL part (pgbench too), when a server answers at PROJECTOR_TEST_POSTGRES; then
# bytes on disk per delivery on both engines (a 200k log built and folded; a few minutes).
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run
	$(BIN)/python -m tests.bench.slow_fsync --ms 2
	$(BIN)/python -m tests.bench.workers --rounds 3
	$(BIN)/python -m tests.bench.postgres --if-server
	$(BIN)/python -m tests.bench.disk_use --if-server

schemas: $(STAMP)
	$(BIN)/projector schemas

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
