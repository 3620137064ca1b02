#!/usr/bin/env bash
# The test command: set up the environments if needed, then run the test suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"
# One worker per core (pytest-xdist); a test module runs whole on one worker (tests/conftest.py).
exec .venv/bin/python -m pytest -n auto --dist loadscope --no-loadscope-reorder "$@"
