#!/usr/bin/env bash
# A Celery worker that executes the steps of the project's runs (docs/scale-out.md, "Steps on other machines"):
#   scripts/worker.sh gpu N   serves the `gpu` queue on GPU N (CUDA_VISIBLE_DEVICES=N), one heavy step at a time
#   scripts/worker.sh light   serves every other step (the `dagster` queue), M2M_LIGHT_CONCURRENCY at once (2)
# It needs M2M_CELERY_BROKER (the broker URL; M2M_CELERY_BACKEND defaults to it), DAGSTER_HOME (a folder
# holding the shared instance's dagster.yaml, e.g. deploy/team/dagster.yaml) and the project folder every
# worker and the code location share (M2M_PROJECT_ROOT; default: this checkout). M2M_WORKER_NAME names it.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/worker.sh gpu N | light   (N: the GPU's index on this machine)"
case "${1:-}" in
  gpu)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "$usage" >&2; exit 2; }
    export CUDA_VISIBLE_DEVICES="$2"
    queue=gpu name="gpu$2" concurrency=1 ;;
  light)
    [ $# -eq 1 ] || { echo "$usage" >&2; exit 2; }
    concurrency="${M2M_LIGHT_CONCURRENCY:-2}"
    [[ "$concurrency" =~ ^[1-9][0-9]*$ ]] || { echo "M2M_LIGHT_CONCURRENCY: expected a positive number, got '$concurrency'" >&2; exit 2; }
    queue=dagster name=light ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
name="${M2M_WORKER_NAME:-$name}"
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "M2M_WORKER_NAME: letters, digits, '.', '_' and '-' only, got '$name'" >&2; exit 2; }
: "${M2M_CELERY_BROKER:?set M2M_CELERY_BROKER to the broker URL, e.g. redis://broker-host:6379/0}"
: "${DAGSTER_HOME:?set DAGSTER_HOME to the folder of the shared instance (deploy/team/dagster.yaml)}"
export M2M_CELERY_BACKEND="${M2M_CELERY_BACKEND:-$M2M_CELERY_BROKER}"
export M2M_PROJECT_ROOT="${M2M_PROJECT_ROOT:-$PWD}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"  # `celery` for dagster-celery, `m2m` for the stages' commands
exec dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml -q "$queue" -n "$name" \
  -- --concurrency "$concurrency"
