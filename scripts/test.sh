#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
# pytest-randomly runs the tests in a new order each time: a test that needs another to run first fails.
seed="${LETHE_TEST_SEED:-$RANDOM}"
echo "test order seed $seed (same order again: LETHE_TEST_SEED=$seed bash scripts/test.sh)"
python -m pytest -q -p randomly --randomly-seed="$seed" "$@"
