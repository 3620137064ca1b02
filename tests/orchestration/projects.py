"""Throw-away copies of the project (dvc.yaml, params.yaml, .dvc/, the library sources its stages
depend on) in fresh git repositories, and ways to run them, so that tests never touch the checkout."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# The smallest chain that still exercises every stage: 2 shards of 8 sets, one training step each.
TINY_TEST_PARAMS = {
    "mis": {"shards": ["000000", "000001"], "samples_per_shard": 8, "images_per_caption": 6},
    "manifest": {"test_percent": 25},
    "tasks": {"count": 3},
    "pretrain": {"steps": 1, "batch_size": 2, "sample_steps": 1},
    "finetune": {"steps": 1, "batch_size": 2, "sample_steps": 1},
    "evaluate": {"num_sets": 2, "preceding": 2, "generate": 2, "steps": 1},
}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_project(dest: Path, overrides: dict | None = None, params_file: str = "params.yaml") -> Path:
    """Copy the pipeline definition, the library sources and ``weights/tiny`` into ``dest`` (a new git repo),
    with ``params_file`` (a preset) and ``overrides`` as its params.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, dest / name)
    (dest / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, dest / ".dvc" / name)
    shutil.copytree(REPO / "m2m", dest / "m2m", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO / "weights" / "tiny", dest / "weights" / "tiny")
    params = yaml.safe_load((REPO / params_file).read_text())
    overrides = TINY_TEST_PARAMS if overrides is None else overrides
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))
    (dest / ".gitignore").write_text("/assets/\n/mlflow/\n/.dvc-remote/\n/weights/*\n!/weights/tiny/\n")
    git(dest, "init", "-q")
    git(dest, "add", ".")
    git(dest, "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", "project")
    return dest


def project_env(root: Path) -> dict[str, str]:
    """The environment the main command runs the project at ``root`` with."""
    return {
        "M2M_PROJECT_ROOT": str(root),
        "DAGSTER_HOME": str(root / ".dagster"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


@dataclass
class Chain:
    root: Path
    exit_code: int
    seconds: float
    output: str
    interruptions: object | None = None  # tests/orchestration/interrupted.py, when the run was interrupted first


def run_main_command(root: Path, argv: list[str] | None = None) -> Chain:
    """``python -m orchestration.pipeline [argv]`` on the project at ``root``, in this process; its
    output is kept (and echoed for the test report)."""
    from orchestration import pipeline

    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        for key, value in project_env(root).items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        start = time.monotonic()
        code = pipeline.main(argv or [])
        seconds = time.monotonic() - start
    print(output.getvalue())
    return Chain(root, code, seconds, output.getvalue())


def project_resources(root: Path) -> dict:
    """The resources the assets of the project at ``root`` run with, as the code location gives them."""
    from orchestration.defs.resources import ComputeResource, DvcResource, MlflowResource

    return {"dvc": DvcResource(project_root=str(root)), "compute": ComputeResource(), "mlflow": MlflowResource()}


def materialize_here(root: Path, asset: str, partition: str | None = None):
    """Materialize one asset of the project at ``root`` in-process, in the current environment."""
    import dagster as dg

    from orchestration.defs.assets import build_stage_assets, raw_captions

    return dg.materialize(
        [raw_captions, *build_stage_assets(root)],
        selection=[asset],
        partition_key=partition,
        resources=project_resources(root),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def materialization_failures(root: Path, asset: str, partition: str | None = None) -> list[str]:
    """:func:`materialize_here` for another process: only the failure messages come back (none when
    the run succeeded)."""
    result = materialize_here(root, asset, partition)
    return [] if result.success else failure_messages(result) or ["the run failed without a description"]


def materialize(root: Path, asset: str, partition: str | None = None):
    """Materialize one asset of the project at ``root`` in-process with the project's environment;
    the result, failures included."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in project_env(root).items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return materialize_here(root, asset, partition)


def failure_messages(result) -> list[str]:
    """The description of each failed step, as the run log shows it."""
    return [
        event.event_specific_data.user_failure_data.description
        for event in result.all_events
        if event.is_step_failure and event.event_specific_data.user_failure_data
    ]


def set_param(root: Path, key: str, value) -> None:
    """Set ``key`` (``section.name`` or a top-level name) in the project's params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    *sections, name = key.split(".")
    target = params
    for section in sections:
        target = target[section]
    target[name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
