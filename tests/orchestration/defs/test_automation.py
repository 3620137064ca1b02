"""Declarative automation: the evaluation is requested again after a model it scores is materialized again,
and the sensor that would launch it starts stopped."""

from __future__ import annotations

import dagster as dg

from orchestration.defs.automation import EVALUATE_NEW_MODELS, EVALUATION
from orchestration.definitions import defs


def test_a_model_materialized_again_requests_the_evaluation_once():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    evaluation = dg.AssetKey(EVALUATION)
    upstream = sorted(graph.get(evaluation).parent_keys, key=lambda key: key.to_user_string())
    with dg.instance_for_test() as instance:
        def materialized(key: dg.AssetKey) -> None:
            partitions = graph.get(key).partitions_def
            for partition in partitions.get_partition_keys() if partitions else [None]:
                instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))

        for key in [*upstream, evaluation]:
            materialized(key)
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance)
        assert result.total_requested == 0  # everything is current
        materialized(dg.AssetKey("m2m_dino_pretrained"))
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        assert result.get_num_requested(evaluation) == 1 and result.total_requested == 1
        result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0  # requested once, not at every tick


def test_the_sensor_starts_stopped_and_targets_the_evaluation():
    sensor = defs().get_sensor_def(EVALUATE_NEW_MODELS)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.asset_selection.resolve(defs().resolve_asset_graph()) == {dg.AssetKey(EVALUATION)}
