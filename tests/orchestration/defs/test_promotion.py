"""The registry jobs from Dagster: promotion accepted and refused, rollback, and the sensor that
runs the promotion after each evaluation."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest

from m2m import registry, tracking
from orchestration.defs.promotion import (
    PROMOTION_CHECK,
    REFUSED_TAG,
    challengers_promoted,
    promote_champion,
    rollback_champion,
)
from orchestration.defs.resources import DvcResource, MlflowResource
from orchestration.defs.sensors import promote_after_evaluation
from orchestration.runs.tags import MAIN_COMMAND_TAG, MAIN_COMMAND_VALUE


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(tmp_path)
    return tmp_path


def resources(root) -> dict:
    return {"dvc": DvcResource(project_root=str(root)), "mlflow": MlflowResource()}


def new_version(root, metrics: dict[str, float]) -> str:
    version = registry.register((root / uuid.uuid4().hex).as_uri(), "m2m-self", tags={"dvc.md5": uuid.uuid4().hex})
    registry.set_metrics("m2m-self", version.version, metrics)
    return str(version.version)


def promote(root, metrics: list[str] | None = None, instance=None) -> dg.ExecuteInProcessResult:
    config = {"models": ["m2m-self"], **({"metrics": metrics} if metrics else {})}
    defs = dg.Definitions(
        assets=[dg.AssetSpec("evaluation")], asset_checks=[challengers_promoted], jobs=[promote_champion],
        resources=resources(root),
    )
    return defs.resolve_job_def(promote_champion.name).execute_in_process(
        run_config={"ops": {f"evaluation_{PROMOTION_CHECK}": {"config": config}}}, raise_on_error=False,
        instance=instance,
    )


def check(result: dg.ExecuteInProcessResult):
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def decisions(result: dg.ExecuteInProcessResult) -> str:
    return check(result).metadata["decisions"].value


def champion() -> str:
    return str(registry.alias_version("m2m-self", registry.CHAMPION).version)


def test_promotion_job_accepts_a_better_challenger_and_refuses_a_worse_one(store):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    assert "| m2m-self | changed | v1 | first champion" in decisions(promote(store))
    worse = new_version(store, {"fid": 14, "clip_image_image": 80})
    table = decisions(promote(store))
    assert f"| m2m-self | refused | v{first} | v{worse} does not beat v{first}: worse fid" in table
    assert champion() == first
    better = new_version(store, {"fid": 7, "clip_image_image": 81})
    assert "| m2m-self | changed |" in decisions(promote(store))
    assert champion() == better


def test_a_refused_promotion_is_tagged_on_its_run(store):
    new_version(store, {"fid": 10, "clip_image_image": 80})
    with dg.instance_for_test() as instance:
        accepted = promote(store, instance=instance)
        assert instance.get_run_by_id(accepted.run_id).tags[REFUSED_TAG] == "none"
        new_version(store, {"fid": 14, "clip_image_image": 80})
        refused = promote(store, instance=instance)
        assert refused.success and instance.get_run_by_id(refused.run_id).tags[REFUSED_TAG] == "m2m-self"
        warning = check(refused)  # the run shows a warning, not a plain success
        assert not warning.passed and warning.severity == dg.AssetCheckSeverity.WARN
        assert check(accepted).passed


def test_promotion_rules_come_from_the_run_config(store):
    new_version(store, {"fid": 10})
    promote(store)
    lower_fid_is_worse_now = new_version(store, {"fid": 5})
    assert "refused" in decisions(promote(store, ["fid:max"]))
    assert champion() != lower_fid_is_worse_now
    bad = promote(store, ["fid:smallest"])
    assert not bad.success


def test_rollback_job_restores_the_previous_champion(store):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    promote(store)
    new_version(store, {"fid": 5, "clip_image_image": 90})
    promote(store)
    result = rollback_champion.execute_in_process(
        run_config={"ops": {"rollback_model": {"config": {"model": "m2m-self"}}}}, resources=resources(store)
    )
    assert result.success and champion() == first
    refused = rollback_champion.execute_in_process(
        run_config={"ops": {"rollback_model": {"config": {"model": "m2m-self", "to_version": 9}}}},
        resources=resources(store),
        raise_on_error=False,
    )
    assert not refused.success and champion() == first


def test_each_new_evaluation_requests_one_promotion_run():
    with dg.instance_for_test() as instance:
        idle = promote_after_evaluation.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert not idle.run_requests and "No new materialization" in idle.skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization("evaluation"))
        tick = promote_after_evaluation.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert len(tick.run_requests) == 1 and tick.run_requests[0].job_name in (None, "promote_champion")
        after = promote_after_evaluation.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
        assert not after.run_requests


def test_an_evaluation_of_the_main_command_requests_no_promotion_run():
    """The main command promotes after its own evaluation: the first `dagster dev` after it starts nothing."""

    @dg.asset(name="evaluation")
    def evaluation():
        return None

    with dg.instance_for_test() as instance:
        dg.materialize([evaluation], instance=instance, tags={MAIN_COMMAND_TAG: MAIN_COMMAND_VALUE})
        tick = promote_after_evaluation.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert not tick.run_requests and "main command" in tick.skip_message
        dg.materialize([evaluation], instance=instance)  # materialized from the UI
        tick = promote_after_evaluation.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
        assert len(tick.run_requests) == 1
