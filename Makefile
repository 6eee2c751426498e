# The two set-up commands of the README: `make run` and `make test`.
# Each creates the virtual environment when missing, installs torch first (the CPU wheel
# that lies on this disk), then the project, then runs the main job or the tests.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
BENCH_STAMP := $(STAMP)-bench
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

RUN_ARGS ?=
TEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test install bench clean

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trading,test,lightning,transformers,sb3]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mlflow-persist run $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(TEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[trading,test,lightning,transformers,sb3,bench]'
	touch $(BENCH_STAMP)

# Every benchmark (about 15 minutes on 2 cores), then the README's performance table regenerated from their output.
bench: $(BENCH_STAMP)
	$(PY) scripts/bench_report.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts mlflow-persist.log .mlflow_persist_locks
