#!/usr/bin/env bash
# Set everything up, then start the gateway on SmolLM2-135M-Instruct with the demo forget set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec lethe serve --demo "$@"
