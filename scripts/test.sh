#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# pytest-randomly runs the tests in a shuffled order: a test that needs another to run first fails.
# The default seed is one whose whole order has passed; LETHE_TEST_SEED=random draws a new order.
seed="${LETHE_TEST_SEED:-6785}"
if [ "$seed" = random ]; then seed=$RANDOM; fi
echo "test order seed $seed (same order again: LETHE_TEST_SEED=$seed bash scripts/test.sh)"
# Two workers by default (one per core of the CI machine), each taking whole test files so that a module's
# servers and fixtures stay in one process; each worker's torch uses one thread. LETHE_TEST_WORKERS=0
# runs everything in this process.
workers="${LETHE_TEST_WORKERS:-2}"
if [ "$workers" -gt 0 ]; then
    export LETHE_TEST_THREADS="${LETHE_TEST_THREADS:-1}"
    python -m pytest -q -p randomly --randomly-seed="$seed" -n "$workers" --dist loadfile "$@"
else
    python -m pytest -q -p randomly --randomly-seed="$seed" "$@"
fi
