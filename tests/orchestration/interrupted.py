"""The main command as a user's run may go, with the ``gpu`` pool at 2 so that both pre-trainings run at
once: the run worker of M2M-Self's training killed (``kill -9``) after its first checkpoint while
M2M-DINO's run goes on; once Dagster's retry of it has resumed, the whole main command killed
(``kill -9`` of its process group); run again and stopped with Ctrl-C once training resumed; run a last
time to the end.

The session's materialized chain (``chain`` in tests/orchestration/conftest.py) is made this way, so the
chain's tests read the state a recovered run leaves, and tests/orchestration/runs/test_recovery.py reads
what the interrupted commands did."""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2m.training.checkpoint import checkpoint_name
from tests.orchestration.projects import TINY_TEST_PARAMS, merge, project_env

# Long enough to be killed in the middle of twice (12 steps, a checkpoint every 2).
CHECKPOINT_EVERY = 2
PARAMS = merge(TINY_TEST_PARAMS, {"pretrain": {"steps": 12, "checkpoint_every": CHECKPOINT_EVERY}})
POOL_LIMIT = 2  # two heavy steps at once: the CPU split into two devices of one core
FIRST_CHECKPOINT = checkpoint_name(CHECKPOINT_EVERY)
# What Ctrl-C may take to stop the main command and every process it started.
CTRL_C_SECONDS = 20


class MainCommand:
    """``python -m orchestration.pipeline`` in its own process group, its output in a file."""

    def __init__(self, root: Path, name: str, *argv: str):
        self.root, self.log = root, root / f"{name}.log"
        env = {**os.environ, **project_env(root)}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestration.pipeline", *argv],
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
    """MLflow runs of the project still RUNNING (0 before the store exists or while it is locked)."""
    db = root / "mlflow" / "mlflow.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as con:
            return con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def checkpoint_reached(root: Path, name: str) -> bool:
    models = root / "assets" / "models"
    return (models / f"{name}.ckpt" / FIRST_CHECKPOINT).is_dir() and not (models / name).exists()


@functools.cache
def instance(root: Path):
    """The project's instance, opened once (the waits below ask it many times a second)."""
    import dagster as dg

    return dg.DagsterInstance.from_config(str(root / ".dagster"))


def training_run(root: Path, asset: str):
    """The newest run of ``asset`` alone (its training run), or None."""
    import dagster as dg

    for run in instance(root).get_runs(limit=50):
        if run.asset_selection == {dg.AssetKey(asset)}:
            return run
    return None


def run_status(root: Path, asset: str) -> str | None:
    run = training_run(root, asset)
    return run.status.value if run else None


@dataclass
class Interruptions:
    """What the interrupted main commands did."""

    killed: str  # the model whose run worker was killed after a checkpoint
    killed_run_id: str  # that run
    other_run_id: str  # the other training's run, in progress when the worker was killed
    killed_output: str  # the main command killed after Dagster's retry resumed the training
    stopped_output: str  # the command stopped with Ctrl-C
    stopped_exit_code: int | None
    stopped_seconds: float | None  # from Ctrl-C until the command and its children were gone; None: not in time


def kill_run_worker(root: Path, asset: str) -> str:
    """``kill -9`` the run worker of ``asset``'s training run; its run id."""
    from orchestration.runs.launcher import run_worker

    run = training_run(root, asset)
    pid, _ = run_worker(instance(root), run.run_id)
    os.kill(pid, signal.SIGKILL)
    return run.run_id


def interrupt(root: Path) -> Interruptions:
    """M2M-Self's run worker killed after a checkpoint, while its training logs into MLflow and M2M-DINO's
    run goes on; the main command killed once Dagster's retry resumed it (the retry stays STARTED, its
    slot and device held by dead processes, its MLflow run RUNNING); a rerun stopped by Ctrl-C once it
    resumed training."""
    killed, other = "m2m-self", "m2m_dino_pretrained"
    first = MainCommand(root, "killed")
    first.wait_for(lambda: checkpoint_reached(root, killed) and mlflow_running(root) > 0
                   and f"[{other}] {other}: on cpu:" in first.output and run_status(root, other) == "STARTED",
                   "a checkpoint of M2M-Self while M2M-DINO trains")
    other_run_id = training_run(root, other).run_id
    killed_run_id = kill_run_worker(root, "m2m_self_pretrained")
    first.wait_for(lambda: f"resumed from assets/models/{killed}.ckpt/checkpoint-" in first.output
                   and run_status(root, other) == "SUCCESS", "Dagster's retry resuming M2M-Self after M2M-DINO ended")
    first.kill()
    second = MainCommand(root, "stopped")
    second.wait_for(lambda: "resumed from" in second.output, "a resumed training")
    os.killpg(second.proc.pid, signal.SIGINT)
    start = time.monotonic()
    while second.group_alive() and time.monotonic() - start < CTRL_C_SECONDS:
        time.sleep(0.1)
    stopped = None if second.group_alive() else time.monotonic() - start
    if stopped is None:
        second.kill()
    return Interruptions(killed, killed_run_id, other_run_id, first.output, second.output, second.proc.returncode,
                         stopped)
