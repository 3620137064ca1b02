#!/usr/bin/env bash
# Create the project's two environments when they are missing or out of date; quick when they are not.
#   .venv      the library, Dagster and MLflow. torch first: M2M_TORCH_SPEC picks the build
#              (default: the small CPU build; e.g. M2M_TORCH_SPEC="torch==2.13.0 --index-url
#              https://download.pytorch.org/whl/cu128" for CUDA). M2M_EXTRAS adds extras, e.g.
#              M2M_EXTRAS=standard for the paper's Inception/CLIP metrics (pyproject.toml says what to
#              put in M2M_TORCH_SPEC with it: the torchvision built for that torch).
#   .venv-dvc  DVC alone (with its S3 remote support): its hydra-core pins antlr4 4.9, Dagster's asset
#              selections need 4.13.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${M2M_TORCH_SPEC:-torch==2.13.0}"
EXTRAS="pipeline,dev${M2M_EXTRAS:+,$M2M_EXTRAS}"
DVC_SPEC="dvc[s3]==3.67.1"
stamp() { { cat pyproject.toml; echo "$TORCH_SPEC"; echo "$EXTRAS"; } | sha256sum | cut -d' ' -f1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat .venv/.m2m-setup 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing $TORCH_SPEC and the project into .venv (a few minutes the first time)"
  # shellcheck disable=SC2086  # the spec may carry pip options such as --index-url
  .venv/bin/pip install $TORCH_SPEC
  .venv/bin/pip install -e ".[$EXTRAS]"
  stamp > .venv/.m2m-setup
fi

if [ ! -x .venv-dvc/bin/dvc ] || [ "$(cat .venv-dvc/.m2m-setup 2>/dev/null)" != "$DVC_SPEC" ]; then
  echo "setup: installing $DVC_SPEC into .venv-dvc"
  [ -x .venv-dvc/bin/python ] || "$PYTHON" -m venv .venv-dvc
  .venv-dvc/bin/pip install "$DVC_SPEC"
  echo "$DVC_SPEC" > .venv-dvc/.m2m-setup
fi
