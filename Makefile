# tuwen — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv system-deps demo test test-ops lint bench services services-down up down lock clean

venv: $(STAMP)

# The venv is rebuilt when requirements.txt or pyproject.toml change; uv installs the pinned set fast.
$(STAMP): requirements.txt requirements-overrides.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "tuwen needs Python 3.11 ($(PY)) on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	@$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.txt --override requirements-overrides.txt
	@$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@# Bytecode for every installed module: uv writes none, and without it each new process (an Airflow
	@# task, a Scrapy crawl, a test's server) compiles what it imports again: ~1.5 s more per start.
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib/python3.11/site-packages >/dev/null
	@touch $(STAMP)
	@echo "venv ready: $(VENV)"

system-deps:
	@bash scripts/system-deps.sh

## make demo: start the local services, run crawl -> synthesize -> check -> export through Airflow, summarize.
demo: venv system-deps
	@$(BIN)/tuwen demo

## make test: lint, unit tests, integration tests on real services, and Airflow end-to-end runs.
# Three xdist workers, one test file each at a time: most tests wait on real services, not the CPU.
test: venv system-deps lint
	@$(BIN)/python -m pytest -n 3 --dist loadfile -m "not ops" --durations=15 $(PYTEST_ARGS)

## make test-ops: the slow operations tests: a running Airflow (backfills over REST, Celery workers, UI in
## headless Chromium) and injected faults. Needs redis-server and chromium + chromium-driver (system-deps).
test-ops: venv system-deps
	@$(BIN)/python -m pytest -m ops --durations=0 $(PYTEST_ARGS)

## make lint: ruff over the tree and mypy over the library (plugins/tuwen), both clean.
lint: venv
	@$(BIN)/ruff check .
	@$(BIN)/mypy

bench: venv system-deps
	@$(BIN)/python -m bench

services: venv system-deps
	@$(BIN)/tuwen services up

services-down: venv
	@$(BIN)/tuwen services down

## make up: local services + a running Airflow (UI at http://127.0.0.1:8080). TUWEN_AIRFLOW_EXECUTOR=celery
## TUWEN_AIRFLOW_WORKERS=N for Celery workers; TUWEN_AIRFLOW_USER / TUWEN_AIRFLOW_PASSWORD for the login.
up: venv system-deps
	@$(BIN)/tuwen up

## make down: stop exactly what `make up` started.
down: venv
	@$(BIN)/tuwen down

lock:
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11 --no-header \
		--override requirements-overrides.txt

clean:
	-@test -x $(BIN)/tuwen && $(BIN)/tuwen down
	rm -rf $(VENV) .run releases
