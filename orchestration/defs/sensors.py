"""Sensors: a new evaluation triggers the promotion job; a failed or canceled run fails the MLflow runs it
left RUNNING."""

from pathlib import Path

import dagster as dg

from orchestration.defs.promotion import promote_champion
from orchestration.runs.tags import MAIN_COMMAND_TAG


@dg.asset_sensor(
    asset_key=dg.AssetKey("evaluation"),
    job=promote_champion,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs promote_champion after each new materialization of `evaluation` made in the UI (the "
    "main command promotes after its own evaluation, or was told not to).",
)
def promote_after_evaluation(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    run = context.instance.get_run_by_id(asset_event.run_id) if asset_event.run_id else None
    if run is not None and MAIN_COMMAND_TAG in run.tags:
        return dg.SkipReason(f"evaluation of run {run.run_id} came from the main command, which promotes itself")
    return dg.RunRequest(run_key=context.cursor)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.FAILURE,
    name="fail_mlflow_runs_of_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    monitor_all_code_locations=False,
    description="Terminates as FAILED, with the Dagster run's failure as the reason, the MLflow runs a failed "
    "Dagster run left RUNNING (a training whose run worker was killed).",
)
def fail_mlflow_runs_of_failed_runs(context: dg.RunStatusSensorContext):
    _fail_mlflow_runs(context, "failed")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    name="fail_mlflow_runs_of_canceled_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Terminates as FAILED the MLflow runs a canceled Dagster run left RUNNING.",
)
def fail_mlflow_runs_of_canceled_runs(context: dg.RunStatusSensorContext):
    _fail_mlflow_runs(context, "canceled")


def _fail_mlflow_runs(context: dg.RunStatusSensorContext, how: str) -> None:
    from m2m import tracking
    from orchestration.mlflow.runs import fail_running
    from orchestration.project import project_root

    run = context.dagster_run
    message = " ".join((context.dagster_event.message or "").split())
    reason = f"Dagster run {run.run_id} {how}: {message}" if message else f"Dagster run {run.run_id} {how}"
    root = project_root()
    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return  # no MLflow store yet: nothing was logged
    tracking.configure(str(root), uri)
    for run_id in fail_running(reason, lambda mlflow_run: mlflow_run.data.tags.get("dagster.run_id") == run.run_id):
        context.log.info(f"marked MLflow run {run_id} FAILED: {reason}")
