"""A killed main command comes back by itself: the rerun finishes, training resumes from its checkpoint
(ending with the weights of an uninterrupted run), no run is left STARTED in Dagster or RUNNING in
MLflow, no pool slot stays claimed, DVC is clean; Ctrl-C stops the command and its children."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from safetensors.torch import load_file

from orchestration import mlflow_runs, recovery
from orchestration.dvc_cli import Dvc
from tests.orchestration.projects import REPO, TINY_TEST_PARAMS, make_project, merge, project_env

# Long enough to be killed in the middle of (6 steps, a checkpoint every 2).
PARAMS = merge(TINY_TEST_PARAMS, {"pretrain": {"steps": 6, "checkpoint_every": 2}})


class MainCommand:
    """``python -m orchestration.pipeline`` in its own process group, its output in a file."""

    def __init__(self, root: Path, name: str):
        self.root, self.log = root, root / f"{name}.log"
        env = {**os.environ, **project_env(root)}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestration.pipeline", "--no-promote"],
                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                ended = f"the main command ended (exit {self.proc.returncode}) before {what}"
                pytest.fail(f"{ended}:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)
        self.proc.wait()

    def group_alive(self) -> bool:
        self.proc.poll()  # a finished main command is reaped, not counted
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


def mlflow_running(root: Path) -> int:
    db = root / "mlflow" / "mlflow.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as con:
            return con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def checkpoint_reached(root: Path) -> bool:
    return any(
        (root / "assets" / "models" / f"{name}.ckpt" / "checkpoint-000002").is_dir()
        and not (root / "assets" / "models" / name).exists()
        for name in ("m2m-self", "m2m-dino")
    )


def uninterrupted(root: Path, stage: str, out: Path) -> Path:
    """The stage's own training command, run whole into ``out``."""
    cmd = yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["cmd"]
    words = shlex.split(cmd)
    words[words.index("--out") + 1] = str(out)
    env = {**os.environ, **project_env(root)}
    subprocess.run([*words, "--checkpoint-dir", str(out) + ".ckpt"], cwd=root, env=env, check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_a_killed_main_command_comes_back_by_itself(tmp_path):
    root = make_project(tmp_path / "project", PARAMS)
    (root / ".dagster").mkdir()
    (root / ".dagster" / "dagster.yaml").write_text((REPO / ".dagster" / "dagster.yaml").read_text())

    # 1. killed during training, after a checkpoint, while the training logs into its open MLflow run:
    #    its Dagster run stays STARTED holding the only gpu slot, its MLflow run stays RUNNING
    first = MainCommand(root, "first")
    first.wait_for(lambda: checkpoint_reached(root) and mlflow_running(root) > 0, "a checkpoint of a logged training")
    models = root / "assets" / "models"
    killed = next(n for n in ("m2m-self", "m2m-dino") if (models / f"{n}.ckpt" / "checkpoint-000002").is_dir())
    first.kill()
    # 2. the rerun recovers both and resumes the training; Ctrl-C then stops the command and its children
    second = MainCommand(root, "second")
    second.wait_for(lambda: "resumed from" in second.output, "a resumed training")
    os.killpg(second.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 20
    while second.group_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not second.group_alive(), "the main command or a child outlived Ctrl-C by 20 s"
    assert second.proc.returncode == 130 and "interrupted" in second.output
    assert "recovered run" in second.output  # the training run of the first command
    assert f"resumed from assets/models/{killed}.ckpt/checkpoint-" in second.output
    # 3. the last rerun finishes by itself
    last = MainCommand(root, "last")
    assert last.proc.wait(timeout=600) == 0, last.output[-3000:]

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
