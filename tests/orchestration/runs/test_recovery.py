"""A killed run worker and a killed main command come back by Dagster's own means: run monitoring fails the
run with the reason, run retries resume its training from the checkpoint (ending with the weights of an
uninterrupted run), the other training finishes; no run is left in progress in Dagster or RUNNING in MLflow,
no pool slot or device stays held, DVC is clean; Ctrl-C stops the command and its children."""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from safetensors.torch import load_file

from orchestration.dvc.cli import Dvc
from orchestration.mlflow import runs as mlflow_runs
from orchestration.runs import devices, recovery
from tests.orchestration.interrupted import CTRL_C_SECONDS, POOL_LIMIT, mlflow_running
from tests.orchestration.projects import project_env


def uninterrupted(root: Path, stage: str, out: Path) -> Path:
    """The stage's own training command, run whole into ``out`` with the threads of the device it had (the
    pool's share of the cores: other thread counts sum in another order)."""
    cmd = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["cmd"]
    words = shlex.split(cmd)
    words[words.index("--out") + 1] = str(out)
    device = devices.Devices.of_machine("cpu", POOL_LIMIT)
    env = {**os.environ, **project_env(root), **device.env([0])}
    subprocess.run([*words, "--checkpoint-dir", str(out) + ".ckpt"], cwd=root, env=env, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_a_killed_run_worker_and_a_killed_main_command_come_back(chain, tmp_path):
    """The session's chain was made by a main command in which M2M-Self's run worker was killed after a
    checkpoint and which was then killed itself, a rerun stopped with Ctrl-C once it resumed, and a last
    run (tests/orchestration/interrupted.py)."""
    root, interruptions = chain.root, chain.interruptions
    instance = dg.DagsterInstance.from_config(str(root / ".dagster"))
    # the killed run worker: its code server saw it die, or run monitoring asked the launcher; the run
    # failed with the reason, Dagster retried it
    killed = instance.get_run_by_id(interruptions.killed_run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    reasons = " ".join(e.message or "" for e in instance.all_logs(killed.run_id))
    assert "terminated by signal 9 (SIGKILL)" in reasons or "is gone: killed or crashed" in reasons, reasons
    retries = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": killed.run_id}))
    assert len(retries) == 1 and "Dagster retries it as run" in interruptions.killed_output
    # the retry died with the whole command (its code server too): run monitoring asked the launcher
    retry = retries[0]
    assert retry.status == dg.DagsterRunStatus.FAILURE and retry.tags["dagster/will_retry"] == "false"  # once only
    failure = instance.all_logs(retry.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message
    assert "its run worker (pid" in failure and "is gone: killed or crashed" in failure, failure
    assert f"resumed from assets/models/{interruptions.killed}.ckpt/checkpoint-" in interruptions.killed_output
    # the other training went on and finished meanwhile
    assert instance.get_run_by_id(interruptions.other_run_id).status == dg.DagsterRunStatus.SUCCESS
    # the rerun followed what the killed command left, resumed training; Ctrl-C stopped it and its children
    assert "left unfinished by an earlier command" in interruptions.stopped_output
    assert "resumed from assets/models/" in interruptions.stopped_output
    outlived = f"the main command or a child outlived Ctrl-C by {CTRL_C_SECONDS} s"
    assert interruptions.stopped_seconds is not None, outlived
    assert interruptions.stopped_exit_code == 130 and "interrupted" in interruptions.stopped_output
    # the last run finished by itself, and nothing is left held
    assert chain.exit_code == 0, chain.output
    runs = instance.get_runs()
    assert not [r.run_id for r in runs if r.status in recovery.UNFINISHED]
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    assert devices.holders(devices.Devices.of_machine("cpu", POOL_LIMIT), devices.lease_folder(root / ".dagster")) == {}
    assert mlflow_running(root) == 0
    with sqlite3.connect(root / "mlflow" / "mlflow.db") as con:
        reasons = con.execute("select count(*) from tags where key = ?", (mlflow_runs.REASON_TAG,)).fetchone()[0]
    assert reasons >= 1
    assert Dvc(root).run("status", "--json").strip() in ("{}", "")

    reference = uninterrupted(root, "m2m_self_pretrained", tmp_path / "reference")
    for part in ("unet/diffusion_pytorch_model.safetensors",):
        resumed, whole = load_file(root / "assets/models" / interruptions.killed / part), load_file(reference / part)
        assert resumed.keys() == whole.keys()
        assert all(torch.equal(resumed[k], whole[k]) for k in whole), "resumed weights differ from an uninterrupted run"


def step_log(instance: dg.DagsterInstance, run_id: str, step: str) -> tuple[float, float | None, str]:
    """When the run's ``step`` started and ended (None: it never did), and the device it said it ran on."""
    logs = instance.all_logs(run_id)
    kinds = {e.dagster_event.event_type: e.timestamp for e in logs if e.dagster_event and e.step_key == step}
    device = next(e.user_message.split(": on ")[1].split()[0] for e in logs
                  if not e.dagster_event and ": on cpu:" in e.user_message)
    return kinds[dg.DagsterEventType.STEP_START], kinds.get(dg.DagsterEventType.STEP_SUCCESS), device


@pytest.mark.slow
def test_the_two_pretrainings_ran_at_once_on_two_devices(chain):
    """With the pool at 2, the first command's two pre-trainings trained at the same time, each on its own
    device: M2M-DINO's step had started before M2M-Self's worker was killed, and ended after M2M-Self's began."""
    instance = dg.DagsterInstance.from_config(str(chain.root / ".dagster"))
    self_start, _, self_device = step_log(instance, chain.interruptions.killed_run_id, "m2m_self_pretrained")
    killed_at = instance.all_logs(chain.interruptions.killed_run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].timestamp
    dino_start, dino_end, dino_device = step_log(instance, chain.interruptions.other_run_id, "m2m_dino_pretrained")
    assert dino_start < killed_at and self_start < dino_end
    assert {self_device, dino_device} == {"cpu:0", "cpu:1"}
