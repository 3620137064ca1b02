#!/usr/bin/env bash
# The main command: set up the environments if needed, then materialize the whole chain through
# Dagster (the preset params.yaml names: `tiny` by default), and print where to look.
# Extra arguments go to `python -m orchestration.pipeline` (e.g. --no-promote).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"  # the stages' commands call `m2m`
exec .venv/bin/python -m orchestration.pipeline "$@"
