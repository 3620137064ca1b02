"""What Dagster cannot do by itself on one machine when a main command is killed or stopped.

Most of a recovery is Dagster's own (``.dagster/dagster.yaml``): run monitoring finds a run whose
worker died (``LocalRunLauncher`` answers whether the process lives) and marks it failed with the
reason; run retries start it again; the pool slots of ended runs are freed; a run-failure sensor
(``orchestration/defs/sensors.py``) terminates the MLflow runs a failed run left RUNNING. All of that
needs the daemon, which runs only while the main command (or ``dagster dev``) does. Two things stay here:

- **Runs left in progress.** When the main command starts, runs of an earlier one may still be queued or
  in progress (it was killed with its daemon; monitoring now fails the dead ones and retries them).
  The new command follows them to their end before it submits its own, so two runs never write one
  stage's outputs at once.
- **Ctrl-C.** Ctrl-C reaches every process of the main command's group at once, the daemon included,
  so nothing is left to record the end of the runs it interrupted: the main command marks them
  canceled itself (a canceled run is not retried, and its slots are freed by the next daemon).
"""

from __future__ import annotations

import dagster as dg

UNFINISHED = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
]


def unfinished_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs of the instance that are queued or in progress, oldest first."""
    return list(reversed(instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))))


def run_name(run: dg.DagsterRun) -> str:
    """How the console names a run it did not submit: its assets (or job) and partition."""
    assets = sorted(key.to_user_string() for key in run.asset_selection or [])
    name = ", ".join(assets) if assets and len(assets) <= 2 else run.job_name
    partition = run.tags.get("dagster/partition")
    return f"{name} {partition}" if partition else name


def cancel_unfinished(instance: dg.DagsterInstance, run_ids: list[str], reason: str) -> list[str]:
    """Mark those of ``run_ids`` that have not ended canceled, with ``reason``; the ones marked."""
    marked = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in UNFINISHED:
            instance.report_run_canceled(run, reason)
            marked.append(run_id)
    return marked
