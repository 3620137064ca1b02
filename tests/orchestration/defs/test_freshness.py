"""The `up_to_date` checks: DVC's view of each stage asset, in their own job and schedule, out of the chain's jobs."""

from __future__ import annotations

import dagster as dg

from orchestration.defs.freshness import CHECK, JOB, build_freshness_checks, freshness_selection
from orchestration.dvc.stages import load_pipeline, read_yaml, select
from tests.orchestration.projects import materialize, project_env, project_resources


def check_results(root, monkeypatch) -> dict[str, dg.AssetCheckEvaluation]:
    """Run the `check_freshness` job on the project at ``root``: each asset's `up_to_date` evaluation."""
    from orchestration.defs.assets import build_stage_assets, raw_captions

    for key, value in project_env(root).items():
        monkeypatch.setenv(key, value)
    groups = load_pipeline(root, strict=False)
    defs = dg.Definitions(
        assets=[raw_captions, *build_stage_assets(root)],
        asset_checks=build_freshness_checks(groups),
        jobs=[dg.define_asset_job(JOB, selection=freshness_selection(groups))],
        resources=project_resources(root),
    )
    result = defs.resolve_job_def(JOB).execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert not result.get_asset_materialization_events()  # it only looks
    evaluations = result.get_asset_check_evaluations()
    assert all(e.check_name == CHECK for e in evaluations)
    return {e.asset_key.to_user_string(): e for e in evaluations}


def changed(evaluation: dg.AssetCheckEvaluation) -> str:
    return evaluation.metadata["changed"].value if "changed" in evaluation.metadata else ""


def test_a_stage_made_is_up_to_date_until_its_input_changes(project, monkeypatch):
    assert materialize(project, "filtered_captions").success
    results = check_results(project, monkeypatch)
    assert set(results) == set(load_pipeline(project, strict=False))  # one per stage asset
    assert results["filtered_captions"].passed and changed(results["filtered_captions"]) == ""
    # not made yet: stale, each shard's stage named, a warning (not an error)
    shards = results["mis_shards"]
    assert not shards.passed and shards.severity == dg.AssetCheckSeverity.WARN
    assert "mis_shards@000000" in changed(shards) and "mis_shards@000001" in changed(shards)
    # a teammate adds a caption to the raw file: the filtered captions are stale, the file is named
    raw = project / str(select(read_yaml(project / "params.yaml"), "captions.input", "params.yaml"))
    raw.write_text(raw.read_text() + "https://example.org/a.jpg\ta new caption of a red house\n")
    stale = check_results(project, monkeypatch)["filtered_captions"]
    assert not stale.passed and stale.metadata["stale"].value == 1
    assert f"changed deps: {raw.relative_to(project)}" in changed(stale)


def test_the_chain_jobs_leave_the_checks_to_their_own_job_and_schedule():
    from orchestration.definitions import defs

    definitions = defs()
    for job in ("prepare_captions", "generate_mis_shards", "train_and_evaluate"):
        names = {key.name for key in definitions.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys}
        assert CHECK not in names, job
    own = definitions.resolve_job_def(JOB).asset_layer.asset_graph.asset_check_keys
    assert {key.name for key in own} == {CHECK} and len(own) == 10
    schedule = definitions.resolve_schedule_def("freshness_hourly")
    assert schedule.job_name == JOB and schedule.default_status == dg.DefaultScheduleStatus.STOPPED
