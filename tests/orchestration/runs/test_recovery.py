"""A killed main command comes back by itself: the rerun finishes, training resumes from its checkpoint
(ending with the weights of an uninterrupted run), no run is left STARTED in Dagster or RUNNING in
MLflow, no pool slot stays claimed, DVC is clean; Ctrl-C stops the command and its children."""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from safetensors.torch import load_file

from orchestration.mlflow import runs as mlflow_runs
from orchestration.runs import recovery
from orchestration.dvc.cli import Dvc
from tests.orchestration.interrupted import CTRL_C_SECONDS, mlflow_running
from tests.orchestration.projects import project_env


def uninterrupted(root: Path, stage: str, out: Path) -> Path:
    """The stage's own training command, run whole into ``out``."""
    cmd = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["cmd"]
    words = shlex.split(cmd)
    words[words.index("--out") + 1] = str(out)
    env = {**os.environ, **project_env(root)}
    subprocess.run([*words, "--checkpoint-dir", str(out) + ".ckpt"], cwd=root, env=env, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_a_killed_main_command_comes_back_by_itself(chain, tmp_path):
    """The session's chain was made by a main command killed during a training after a checkpoint, a rerun
    stopped with Ctrl-C once it resumed, and a last run (tests/orchestration/interrupted.py)."""
    root, interruptions = chain.root, chain.interruptions
    # the rerun recovered the killed runs and resumed the training; Ctrl-C stopped it and its children
    outlived = f"the main command or a child outlived Ctrl-C by {CTRL_C_SECONDS} s"
    assert interruptions.stopped_seconds is not None, outlived
    assert interruptions.stopped_exit_code == 130 and "interrupted" in interruptions.stopped_output
    assert "recovered run" in interruptions.stopped_output  # the training run of the killed command
    killed = interruptions.killed
    assert f"resumed from assets/models/{killed}.ckpt/checkpoint-" in interruptions.stopped_output
    # the last run finished by itself
    assert chain.exit_code == 0, chain.output

    instance = dg.DagsterInstance.from_config(str(root / ".dagster"))
    runs = instance.get_runs()
    assert not [r.run_id for r in runs if r.status in recovery.IN_PROGRESS]
    assert sum(r.status == dg.DagsterRunStatus.FAILURE for r in runs) >= 2  # the killed runs, marked failed
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    assert mlflow_running(root) == 0
    with sqlite3.connect(root / "mlflow" / "mlflow.db") as con:
        reasons = con.execute("select count(*) from tags where key = ?", (mlflow_runs.REASON_TAG,)).fetchone()[0]
    assert reasons >= 1
    assert Dvc(root).run("status", "--json").strip() in ("{}", "")

    stage = "m2m_self_pretrained" if killed == "m2m-self" else "m2m_dino_pretrained"
    reference = uninterrupted(root, stage, tmp_path / "reference")
    for part in ("unet/diffusion_pytorch_model.safetensors",):
        resumed, whole = load_file(root / "assets/models" / killed / part), load_file(reference / part)
        assert resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), "resumed weights differ from an uninterrupted run"


def test_a_run_is_stale_only_when_its_process_on_this_host_is_gone():
    mine = recovery.owner_tags()
    assert not recovery.owner_is_gone(mine)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert recovery.owner_is_gone({**mine, recovery.PID_TAG: str(dead.pid), recovery.START_TAG: ""})
    assert recovery.owner_is_gone({**mine, recovery.START_TAG: "1"})  # same pid, another process
    assert not recovery.owner_is_gone({**mine, recovery.HOST_TAG: "another-host", recovery.PID_TAG: str(dead.pid)})
    assert not recovery.owner_is_gone({})  # runs started elsewhere (the UI) are the run monitor's
