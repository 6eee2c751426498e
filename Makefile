# The two set-up commands of the README are `make run` and `make test`; the rest serve contributors.
# Each target creates the virtual environment when missing (with $(PYTHON), Python 3.11 by default: override
# with `make PYTHON=python3.12 ...`), installs torch first (the CPU wheel that lies on this disk), then the
# project with every extra, then does its job. Changing pyproject.toml reinstalls on the next call.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

RUN_ARGS ?=
TEST_ARGS ?=
BENCH_ARGS ?=
# Parallel test workers (pytest-xdist). 3 on the 2-core machines this project is sized for: much of the suite
# waits on servers, subprocesses and outages, and a third worker fills those waits (make test: 9:30 with 3,
# 10:07 with 2, measured side by side).
TEST_WORKERS ?= 3
# `make soak` repeats the long trials this many times their CI counts.
SOAK_FACTOR ?= 10

.PHONY: run test test-fast soak lint docs install bench clean

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trading,test,lightning,transformers,sb3,safetensors,lint,docs]'
	touch $(STAMP)

install: $(STAMP)

# The reference trading system training continuously with persistence, on the embedded default store.
run: $(STAMP)
	$(VENV)/bin/mlflow-persist run $(RUN_ARGS)

# Every test (CI runs this): at most 10 minutes on 2 cores.
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) $(TEST_ARGS)

# The tier without the slow tests (real servers, many subprocess trials): at most 60 s.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" $(TEST_ARGS)

# The long trials (SIGKILL loops, power-loss cuts, outages, exact resume) with SOAK_FACTOR times their CI counts.
soak: $(STAMP)
	MLFLOW_PERSIST_SOAK_FACTOR=$(SOAK_FACTOR) $(PY) -m pytest -n $(TEST_WORKERS) -m soak $(TEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check mlflow_persist tests scripts docs
	$(VENV)/bin/ruff format --check mlflow_persist tests scripts docs
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

# Every benchmark (about 15 minutes on 2 cores), then the performance table on docs/benchmarks.md regenerated
# from their output.
bench: $(STAMP)
	$(PY) scripts/bench_report.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build mlflow.db mlruns mlartifacts mlflow-persist.log .mlflow_persist_locks
