"""Fixtures: a fresh copy of the project, and the whole chain materialized once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.orchestration import interrupted
from tests.orchestration.projects import REPO, Chain, make_project, run_main_command


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project; orchestration and MLflow point at it for the test."""
    root = make_project(tmp_path / "project")
    monkeypatch.setenv("M2M_PROJECT_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Chain:
    """The whole chain materialized once by the main command on a tiny copy of the project, the way a
    user's run may go: killed during a training, stopped with Ctrl-C once it resumed, then run to the
    end (tests/orchestration/interrupted.py); the chain's tests read what the last run left."""
    root = make_project(tmp_path_factory.mktemp("chain") / "project", interrupted.PARAMS)
    (root / ".dagster").mkdir()
    shutil.copy(REPO / ".dagster" / "dagster.yaml", root / ".dagster" / "dagster.yaml")
    interruptions = interrupted.interrupt_twice(root)
    last = run_main_command(root)
    last.interruptions = interruptions
    return last
