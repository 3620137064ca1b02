"""The main command as a user's run may go: killed (``kill -9``) during a training after its first
checkpoint, run again and stopped with Ctrl-C once training resumed, run a last time to the end.

The session's materialized chain (``chain`` in tests/orchestration/conftest.py) is made this way, so the
chain's tests read the state a recovered run leaves, and tests/orchestration/runs/test_recovery.py reads
what the interrupted commands did."""

from __future__ import annotations

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

# Long enough to be killed in the middle of (6 steps, a checkpoint every 2).
CHECKPOINT_EVERY = 2
PARAMS = merge(TINY_TEST_PARAMS, {"pretrain": {"steps": 6, "checkpoint_every": CHECKPOINT_EVERY}})
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


def checkpoint_reached(root: Path) -> bool:
    return any(
        (root / "assets" / "models" / f"{name}.ckpt" / FIRST_CHECKPOINT).is_dir()
        and not (root / "assets" / "models" / name).exists()
        for name in ("m2m-self", "m2m-dino")
    )


@dataclass
class Interruptions:
    """What the two interrupted main commands did."""

    killed: str  # the model whose training was killed after a checkpoint
    killed_output: str
    stopped_output: str  # the command stopped with Ctrl-C
    stopped_exit_code: int | None
    stopped_seconds: float | None  # from Ctrl-C until the command and its children were gone; None: not in time


def interrupt_twice(root: Path) -> Interruptions:
    """``kill -9`` during a training logged into its MLflow run, after a checkpoint (its Dagster run stays
    STARTED holding the only gpu slot, its MLflow run RUNNING); then a rerun, stopped by Ctrl-C once it
    resumed that training."""
    first = MainCommand(root, "killed")
    first.wait_for(lambda: checkpoint_reached(root) and mlflow_running(root) > 0, "a checkpoint of a logged training")
    models = root / "assets" / "models"
    killed = next(n for n in ("m2m-self", "m2m-dino") if (models / f"{n}.ckpt" / FIRST_CHECKPOINT).is_dir())
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
    return Interruptions(killed, first.output, second.output, second.proc.returncode, stopped)
