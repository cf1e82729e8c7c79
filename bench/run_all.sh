#!/usr/bin/env bash
# `make bench`: the codegen and API benchmarks (by hand; never part of `make test`).
# Prints figures; takes about 2 minutes with the defaults. See bench/README.md.
#
#   bash bench/run_all.sh                       # defaults
#   bash bench/run_all.sh --rounds 3 --servers all   # arguments go to bench/api.py
#   BENCH_CODEGEN_ARGS="--full 5 --noop 10" bash bench/run_all.sh
#   BENCH_SKIP_CODEGEN=1 / BENCH_SKIP_API=1     # one half only
#   BENCH_NO_INSTALL=1                          # never try to install wrk
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONDONTWRITEBYTECODE=1

# wrk measures with far less CPU than a Python client (which matters on a 2-core machine).
# Without it, bench/api.py falls back to its own Python load generator.
if ! command -v wrk >/dev/null 2>&1 && [ -z "${BENCH_NO_INSTALL:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: wrk not found; installing the Debian package (apt-get install -y wrk; BENCH_NO_INSTALL=1 skips this) ..."
    if ! { apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }; }; then
      echo "bench: could not install wrk; using the Python load generator (bench/loadgen.py)"
    fi
  else
    echo "bench: wrk not found (Debian: sudo apt-get install -y wrk); using the Python load generator (bench/loadgen.py)"
  fi
fi

if [ -z "${BENCH_SKIP_CODEGEN:-}" ]; then
  echo "=== codegen ==="
  # shellcheck disable=SC2086
  $PY -m bench.codegen ${BENCH_CODEGEN_ARGS:-}
  echo
fi
if [ -z "${BENCH_SKIP_API:-}" ]; then
  echo "=== API ==="
  $PY -m bench.api "$@"
fi
