#!/usr/bin/env bash
# The whole suite, in the order a failure is cheapest to read:
#   services → codegen drift/handler check → lint (specs, ruff, import-linter, mypy)
#   → alembic check → pytest on SQLite (everything) → pytest on PostgreSQL (database-facing
#   tests) → the coverage table.
# `make test` and .ci/run call this; it installs nothing (the Makefile's install step did).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export PYTHONDONTWRITEBYTECODE=1

step() { printf '\n=== %s ===\n' "$*"; }

step "services"
bash scripts/services.sh

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
$BIN/pytest -q -p no:cacheprovider
rc=$?
set -e
if [ $rc -ne 0 ]; then echo "pytest (SQLite) failed with exit code $rc"; exit $rc; fi

step "pytest (PostgreSQL)"
set +e
HANGAR_TEST_DATABASE_URL=${HANGAR_TEST_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test} \
  $BIN/pytest -q -p no:cacheprovider -m "postgres"
rc=$?
set -e
# exit 5 = no test selected; every PostgreSQL-facing test carries the marker, so none is a failure.
if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then echo "pytest (PostgreSQL) failed with exit code $rc"; exit $rc; fi

step "coverage table"
$BIN/python codegen.py check --no-drift
