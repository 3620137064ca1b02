"""Where the project lives: the folder holding dvc.yaml, params.yaml, assets/ and mlflow/."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE_LOCATION = "m2m"  # the code location `dagster dev` loads (dg.toml and pyproject.toml say the same)


def project_root() -> Path:
    """``$M2M_PROJECT_ROOT``, else the checkout this package was installed from."""
    return Path(os.environ.get("M2M_PROJECT_ROOT") or REPO).resolve()
