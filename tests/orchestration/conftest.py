"""Fixtures: a fresh copy of the project, and the whole chain materialized once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
    """The whole chain materialized once by the main command on a tiny copy of the project with the
    ``gpu`` pool at 2, the way a user's run may go: a training's run worker killed, the command killed,
    stopped with Ctrl-C once training resumed, then run to the end (tests/orchestration/interrupted.py);
    the chain's tests read what the last run left."""
    root = make_project(tmp_path_factory.mktemp("chain") / "project", interrupted.PARAMS)
    (root / ".dagster").mkdir()
    config = yaml.safe_load((REPO / ".dagster" / "dagster.yaml").read_text())
    config["concurrency"]["pools"] = {"default_limit": interrupted.POOL_LIMIT}
    (root / ".dagster" / "dagster.yaml").write_text(yaml.safe_dump(config))
    interruptions = interrupted.interrupt(root)
    last = run_main_command(root)
    last.interruptions = interruptions
    return last
