"""Sensors: a new evaluation triggers the promotion job."""

import dagster as dg

from orchestration.defs.promotion import promote_champion
from orchestration.recovery import PID_TAG


@dg.asset_sensor(
    asset_key=dg.AssetKey("evaluation"),
    job=promote_champion,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs promote_champion after each new materialization of `evaluation` made in the UI (the "
    "main command promotes after its own evaluation, or was told not to).",
)
def promote_after_evaluation(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    run = context.instance.get_run_by_id(asset_event.run_id) if asset_event.run_id else None
    if run is not None and PID_TAG in run.tags:
        return dg.SkipReason(f"evaluation of run {run.run_id} came from the main command, which promotes itself")
    return dg.RunRequest(run_key=context.cursor)
