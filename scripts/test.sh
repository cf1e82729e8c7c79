#!/usr/bin/env bash
# The whole suite, in the order a failure is cheapest to read:
#   services → codegen drift/handler check → lint (specs, ruff, import-linter, mypy)
#   → alembic check → pytest on SQLite (everything) → pytest on PostgreSQL (unit, integration,
#   contract, and the PostgreSQL-marked rest) → the coverage table.
# `make test` and .ci/run call this; it installs nothing (the Makefile's install step did).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PYTHONDONTWRITEBYTECODE=1

step() { printf '\n=== %s ===\n' "$*"; }

step "services"
bash scripts/services.sh
bash scripts/browser.sh

step "codegen check (drift + handlers)"
$BIN/python codegen.py check

step "lint: specs (Spectral)"
$BIN/python codegen.py lint

step "lint: ruff, import-linter, mypy"
$BIN/ruff check hangar handlers pipeline tests bench codegen.py
$BIN/ruff format --check hangar handlers pipeline tests bench codegen.py
$BIN/lint-imports
$BIN/mypy hangar handlers pipeline codegen.py

step "alembic check (models match migrations)"
tmpdb=$(mktemp -d)
HANGAR_DATABASE_URL="sqlite:///$tmpdb/check.db" $BIN/alembic upgrade head >/dev/null
HANGAR_DATABASE_URL="sqlite:///$tmpdb/check.db" $BIN/alembic check
rm -rf "$tmpdb"

step "pytest (SQLite)"
set +e
# tests/scale is PostgreSQL + RabbitMQ by nature (N processes on one database): it runs once,
# in the PostgreSQL pass below.
$BIN/pytest -q -p no:cacheprovider --ignore=tests/scale
rc=$?
set -e
if [ $rc -ne 0 ]; then echo "pytest (SQLite) failed with exit code $rc"; exit $rc; fi

step "pytest (PostgreSQL)"
# Everything that touches the database runs again on PostgreSQL: unit, integration and the
# contract stage whole, then the PostgreSQL-marked tests of the other suites (events, CLI).
export HANGAR_TEST_DATABASE_URL=${HANGAR_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
$BIN/pytest -q -p no:cacheprovider tests/unit tests/integration tests/contract
set +e
$BIN/pytest -q -p no:cacheprovider -m postgres tests --ignore=tests/unit --ignore=tests/integration --ignore=tests/contract
rc=$?
set -e
# exit 5 = no test selected there; that is not a failure.
if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then echo "pytest (PostgreSQL) failed with exit code $rc"; exit $rc; fi
unset HANGAR_TEST_DATABASE_URL

step "coverage table"
$BIN/python codegen.py check --no-drift
