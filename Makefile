# Hangar — every task has a target; `make help` lists them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser console's xterm.js comes from the npm registry at build time (lockfile, no
# scripts) and is served from hangar/console/node_modules; nothing is fetched at run time.
CONSOLE := hangar/console
CONSOLE_STAMP := $(CONSOLE)/node_modules/.installed

.DEFAULT_GOAL := help

help: ## list every task
	@grep -hE '^[a-zA-Z0-9_.-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock generated/sdk/pyproject.toml generated/cli/pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . -e generated/sdk -e generated/cli
	@touch $@

$(CONSOLE_STAMP): $(STAMP) $(CONSOLE)/package.json $(CONSOLE)/package-lock.json
	$(BIN)/npm ci --prefix $(CONSOLE) --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) $(CONSOLE_STAMP) ## create .venv, install Python packages and the console's npm assets from the project's own files

generate: $(STAMP) ## regenerate generated/ from specs (incremental)
	$(BIN)/python codegen.py generate

lint-specs: $(STAMP) ## Spectral over the OpenAPI and AsyncAPI specs (zero errors)
	$(BIN)/python codegen.py lint

check: $(STAMP) ## drift, handler coverage and the coverage table
	$(BIN)/python codegen.py check

lint: $(STAMP) lint-specs ## specs, ruff, import-linter, mypy
	$(BIN)/ruff check hangar handlers pipeline tests bench codegen.py
	$(BIN)/ruff format --check hangar handlers pipeline tests bench codegen.py
	$(BIN)/lint-imports
	$(BIN)/mypy hangar handlers pipeline codegen.py

diagram: $(STAMP) ## state diagrams in docs/ from the state machines (instances, volumes, snapshots)
	$(BIN)/python -m handlers.provisioning.diagram
	$(BIN)/python -m handlers.storage.diagram

migrate: $(STAMP) ## apply alembic migrations to HANGAR_DATABASE_URL (default .hangar/hangar.db)
	$(BIN)/alembic upgrade head

run: $(STAMP) $(CONSOLE_STAMP) generate migrate ## the platform on embedded defaults at http://127.0.0.1:8080
	$(BIN)/hangar-server

worker: $(STAMP) ## outbox relay and consumers (needs HANGAR_BROKER_URL for a separate process to matter)
	$(BIN)/hangar-worker

test: $(STAMP) $(CONSOLE_STAMP) ## the whole suite: lint, codegen check, unit, integration (SQLite + PostgreSQL), contract, CLI
	bash scripts/test.sh

contract: $(STAMP) ## only the contract stage: schemathesis, SDK round trip, security matrix
	$(BIN)/pytest -q tests/contract

test-postgres: $(STAMP) ## unit, integration and contract tests on the PostgreSQL at 127.0.0.1:5432
	bash scripts/services.sh
	$(BIN)/pytest -q --db=postgresql tests/unit tests/integration tests/contract

format: $(STAMP) ## ruff format + autofix on hand-written code
	$(BIN)/ruff format hangar handlers pipeline tests bench codegen.py
	$(BIN)/ruff check --fix hangar handlers pipeline tests bench codegen.py

bench: $(STAMP) ## benchmarks (by hand; prints figures)
	bash bench/run_all.sh

bench-e2e: $(STAMP) ## create → running throughput, 2 APIs + 2 workers vs 1 + 1 (PostgreSQL + RabbitMQ; ARGS=…)
	bash scripts/services.sh
	$(BIN)/python -m bench.provision_e2e $(ARGS)

bench-ledger: $(STAMP) ## ledger transfers/s on SQLite and PostgreSQL vs plain inserts (ARGS=…)
	bash scripts/services.sh
	$(BIN)/python -m bench.ledger $(ARGS)

bench-metering: $(STAMP) ## one metering tick over 100,000 running instances, SQLite and PostgreSQL (ARGS=…)
	bash scripts/services.sh
	$(BIN)/python -m bench.metering_tick --db both $(ARGS)

bench-terminal: $(STAMP) $(CONSOLE_STAMP) ## keystroke latency, throughput and concurrent sessions through the gateway vs a bare PTY (ARGS=…)
	$(BIN)/python -m bench.terminal $(ARGS)

clean: ## remove .hangar/ state and caches (keeps .venv)
	rm -rf .hangar .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install generate lint-specs check lint diagram migrate run worker test contract test-postgres format bench bench-e2e bench-ledger bench-metering bench-terminal clean
