"""Runs left behind by a killed main command: found, marked failed with a reason, their slots freed.

A run the main command starts carries the host and process that run it (``owner_tags``). When that
process is gone (``kill -9``, a crash, a reboot) the run stays STARTED in the Dagster instance and
keeps its ``gpu`` pool slot, so the next run would wait for that slot forever; its MLflow run, if
logging was under way, stays RUNNING. ``recover`` runs before every main command: each such run is
reported failed with the reason, its pool slots are freed, and the MLflow runs it opened are
terminated as FAILED with the same reason. The rerun then redoes the stage (DVC says it changed) and
training resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRunStatus

from orchestration import mlflow_runs

HOST_TAG, PID_TAG, START_TAG = "m2m/host", "m2m/pid", "m2m/process_start"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of the runs it starts."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: process_start(pid) or ""}


def owner_is_gone(tags: dict[str, str]) -> bool:
    """True when the run's owner ran on this host and that process no longer exists."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = tags.get(START_TAG)
    return bool(started) and process_start(pid) != started


def stale_runs(instance: dg.DagsterInstance) -> list:
    """In-progress runs whose owning main command is gone."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS))
    return [run for run in runs if owner_is_gone(run.tags)]


def _print(line: str) -> None:
    print(line, flush=True)


def recover(instance: dg.DagsterInstance, root: Path, log=_print) -> int:
    """Mark the runs of dead main commands failed, free their pool slots, fail their MLflow runs."""
    stale = stale_runs(instance)
    for run in stale:
        reason = (
            f"its main command (pid {run.tags[PID_TAG]} on {run.tags[HOST_TAG]}) ended without finishing the run; "
            "marked failed by the next main command"
        )
        instance.report_run_failed(run, reason)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(f"recovered run {run.run_id} ({run.job_name}): {reason}")
    from m2m import tracking

    uri = tracking.tracking_uri(root)
    if stale and (not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).is_file()):
        tracking.configure(str(root), uri)
        reason = "the pipeline was killed during this run; the stage runs or is logged again on rerun"
        stale_ids = {run.run_id for run in stale}
        for run_id in mlflow_runs.fail_running(reason, lambda run: run.data.tags.get("dagster.run_id") in stale_ids):
            log(f"marked MLflow run {run_id} FAILED: {reason}")
    return len(stale)
