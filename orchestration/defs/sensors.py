"""Sensors: a new evaluation triggers the promotion job."""

import dagster as dg

from orchestration.defs.promotion import promote_champion


@dg.asset_sensor(
    asset_key=dg.AssetKey("evaluation"),
    job=promote_champion,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs promote_champion after each new materialization of `evaluation`.",
)
def promote_after_evaluation(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    return dg.RunRequest(run_key=context.cursor)
