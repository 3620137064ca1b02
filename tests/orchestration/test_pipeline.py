"""The main command end to end on a tiny copy of the project (run after a killed and a stopped run,
tests/orchestration/interrupted.py): every asset, partition and check through Dagster; DVC left clean;
MLflow runs and registered models; a second run changes nothing; the data comes back from the DVC
remote in a fresh clone."""

from __future__ import annotations

import hashlib
import subprocess

import dagster as dg
import pytest
import yaml

from orchestration.defs.resources import TRAINING_VIEW
from orchestration.dvc.cli import Dvc
from orchestration.dvc.stages import load_pipeline
from tests.orchestration.projects import git, run_main_command

pytestmark = pytest.mark.slow

MODELS = {"m2m-self", "m2m-dino", "m2m-dino-nvs", "m2m-dino-procedure"}


def lock(root) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def instance(root) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(root / ".dagster"))


def latest(inst: dg.DagsterInstance, asset: str, partition: str | None = None):
    records = inst.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0].asset_materialization if records else None


def test_main_command_materializes_every_asset_with_its_dvc_hash(chain):
    assert chain.exit_code == 0, chain.output
    groups = load_pipeline(chain.root)
    locked, inst = lock(chain.root), instance(chain.root)
    assert latest(inst, "raw_captions") is not None
    for name, group in groups.items():
        for stage in group.stages:
            materialization = latest(inst, name, stage.item)
            assert materialization is not None, stage.name
            outs = {out["path"]: out["md5"] for out in locked[stage.name]["outs"]}
            version = materialization.tags["dagster/data_version"]
            if len(outs) == 1:
                assert version == next(iter(outs.values()))
            assert materialization.metadata["dvc md5"].value == version


def test_its_runs_went_through_the_instance_like_the_uis(chain):
    """The main command's runs were launched through the webserver into the queue, by run workers of the
    project's code location (as `dagster dev` lists runs on a job's page), never in-process."""
    import tomllib

    from orchestration.project import CODE_LOCATION, REPO
    from orchestration.runs.tags import MAIN_COMMAND_TAG

    location = tomllib.loads((REPO / "dg.toml").read_text())["project"]["code_location_name"]
    assert location == CODE_LOCATION == tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"]
    inst = instance(chain.root)
    runs = [run for run in inst.get_runs() if MAIN_COMMAND_TAG in run.tags]
    assert {r.job_name for r in runs} >= {"prepare_captions", "generate_mis_shards", "train_and_evaluate",
                                          "promote_champion"}
    assert {r.remote_job_origin.location_name for r in runs} == {location}
    for run in runs[:5]:
        events = {e.dagster_event.event_type for e in inst.all_logs(run.run_id) if e.dagster_event}
        assert dg.DagsterEventType.PIPELINE_ENQUEUED in events, run.run_id  # through the run queue
        assert any("Started process for run" in (e.message or "") for e in inst.all_logs(run.run_id)), run.run_id


def first_materialization(inst: dg.DagsterInstance, asset: str):
    records = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset)), limit=1, ascending=True)
    return records.records[0].asset_materialization


def test_assets_show_counts_grids_losses_metrics_and_links(chain):
    inst = instance(chain.root)
    captions = first_materialization(inst, "filtered_captions").metadata
    assert captions["captions kept"].value > 0 and "| too_long |" in captions["dropped by reason"].value
    shards = first_materialization(inst, "mis_shards").metadata
    assert shards["image sets"].value == 8 and "data:image/png;base64," in shards["first image set"].value
    dataset = first_materialization(inst, "mis_dataset").metadata
    assert dataset["train sets"].value + dataset["test sets"].value == dataset["image sets"].value == 16
    model = first_materialization(inst, "m2m_self_pretrained").metadata
    assert "| step | loss |" in model["last losses"].value
    assert model["registered model"].value == "m2m-self v1"
    run_url = model["mlflow run"].value
    assert run_url.startswith("http://127.0.0.1:5000/#/experiments/") and run_url.endswith(TRAINING_VIEW)
    # the grid is one click away, as an MLflow image, and not base64 in the event log
    assert model["samples"].value == run_url.replace(f"?{TRAINING_VIEW}", f"/artifacts/samples.png?{TRAINING_VIEW}")
    assert not [key for key, value in model.items() if "base64" in str(value.value)]
    evaluation = first_materialization(inst, "evaluation").metadata
    table = evaluation["Table 1"].value.splitlines()
    assert "M2M-Self (m2m-self)" in table[0] and "M2M-DINO (m2m-dino)" in table[0]  # a column per model ...
    assert any(row.startswith("| fid |") for row in table) and len(table[0].split("|")) == 5  # a row per metric
    assert evaluation["evaluated version (m2m-dino)"].value == "m2m-dino v1"
    assert evaluation["samples (m2m-dino)"].value.split("?")[0].endswith("/artifacts/grid.png")


def test_shards_are_one_partition_each(chain):
    items = load_pipeline(chain.root)["mis_shards"].items
    assert instance(chain.root).get_materialized_partitions(dg.AssetKey("mis_shards")) == set(items)
    for item in items:
        assert (chain.root / f"assets/mis/shards/mis-{item}.tar").is_file()


def test_every_asset_check_passed(chain):
    inst = instance(chain.root)
    checks = {
        ("mis_dataset", "shards_match_manifest"),
        ("m2m_self_pretrained", "loss_is_finite"),
        ("m2m_dino_pretrained", "loss_is_finite"),
        ("m2m_nvs_finetuned", "loss_is_finite"),
        ("m2m_procedure_finetuned", "loss_is_finite"),
        ("evaluation", "metrics_in_range"),
    }
    # the data freshness checks, run last by the main command: every stage asset up to date
    checks |= {(asset, "up_to_date") for asset in load_pipeline(chain.root)}
    for asset, name in checks:
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        record = inst.event_log_storage.get_asset_check_execution_history(key, limit=1)[0]
        assert record.status.value == "SUCCEEDED", (asset, name, record.status)


def test_dvc_is_clean_and_repro_has_nothing_to_do(chain):
    dvc = Dvc(chain.root)
    assert dvc.run("status", "--json").strip() == "{}"
    before = (chain.root / "dvc.lock").read_bytes()
    assert "up to date" in dvc.run("repro")
    assert (chain.root / "dvc.lock").read_bytes() == before


def test_dvc_lock_records_exactly_the_commands_that_ran(chain):
    locked = lock(chain.root)
    for group in load_pipeline(chain.root).values():
        for stage in group.stages:
            cmd = locked[stage.name]["cmd"]
            assert (cmd if isinstance(cmd, list) else [cmd]) == list(stage.cmds)


def test_mlflow_runs_record_commit_inputs_and_register_every_model(chain):
    import mlflow
    from mlflow.tracking import MlflowClient

    from m2m import registry, tracking

    tracking.configure(chain.root)
    client = MlflowClient()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=chain.root, capture_output=True, text=True).stdout.strip()
    assert {m.name for m in client.search_registered_models()} == MODELS
    locked, params = lock(chain.root), yaml.safe_load((chain.root / "params.yaml").read_text())
    for model in MODELS:
        champion = registry.alias_version(model, registry.CHAMPION)
        assert champion is not None and str(champion.version) == "1"
        assert champion.description.startswith("M2M-") and "steps of" in champion.description
        assert set(champion.aliases) == {"challenger", "champion"}
        run = client.get_run(champion.tags["run_id"])
        assert run.data.tags["mlflow.source.git.commit"] == head
        stage = run.data.tags["dvc.stage"]
        assert champion.tags["dvc.md5"] == locked[stage]["outs"][0]["md5"]
        inputs = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
        deps = {d["path"]: d["md5"] for d in locked[stage]["deps"]}
        assert inputs and all(deps[path] == digest for path, digest in inputs.items())
        # logged by the command as it trained (the loss at every step, its last point the final loss), settings
        # as params, the one-value measurements in their own section
        section = params["pretrain" if stage.endswith("_pretrained") else "finetune"]
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(1, section["steps"] + 1)), model
        assert {"lr", "images_per_s"} <= set(run.data.metrics) and "images_per_step" in run.data.params
        assert {"lr", "batch_size", "variant"} <= set(run.data.params)
        assert run.data.metrics["summary/final_loss"] == pytest.approx(history[-1].value, rel=1e-5)
        assert not [k for k in run.data.metrics if k in ("final_loss", "steps") or k.startswith("final.")]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "images_per_s")][0] > 0
        assert run.info.end_time - run.info.start_time > 1000  # ... and the run lasted as long as training
        assert "samples.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    for model in ("m2m-self", "m2m-dino"):
        tags = registry.alias_version(model, registry.CHAMPION).tags
        assert {"metric.fid", "metric.clip_image_image", "eval_run_id"} <= set(tags)
        evaluation = mlflow.get_run(tags["eval_run_id"])
        assert evaluation.data.metrics["fid"] >= 0
        version = registry.alias_version(model, registry.CHAMPION)
        assert [m.model_id for m in evaluation.inputs.model_inputs] == [registry.logged_model_id(version)]
        assert registry.logged_model_id(version).startswith("m-")  # the evaluation is linked to the model


def test_the_summary_says_where_to_look(chain):
    assert "m2m-self v1: challenger, champion" in chain.output
    assert "http://127.0.0.1:3000" in chain.output and "http://127.0.0.1:5000" in chain.output
    assert "assets/eval/m2m-self/metrics.md" in chain.output


def test_a_second_run_is_quick_and_changes_nothing(chain):
    from mlflow.tracking import MlflowClient

    from m2m import tracking

    tracking.configure(chain.root)
    client = MlflowClient()
    lock_before = (chain.root / "dvc.lock").read_bytes()
    versions = {m: len(client.search_model_versions(f"name = '{m}'")) for m in MODELS}
    runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    materializations = len(instance(chain.root).fetch_materializations(dg.AssetKey("evaluation"), limit=100).records)
    again = run_main_command(chain.root)
    assert again.exit_code == 0, again.output
    assert "(ran)" not in again.output and "=== 0 runs," in again.output
    assert "not run (no new materialization):" in again.output and "evaluation" in again.output
    # "last materialized" in Dagster stays the time the data last changed
    assert len(instance(chain.root).fetch_materializations(dg.AssetKey("evaluation"), limit=100).records) == (
        materializations)
    assert (chain.root / "dvc.lock").read_bytes() == lock_before
    tracking.configure(chain.root)
    assert {m: len(client.search_model_versions(f"name = '{m}'")) for m in MODELS} == versions
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs
    assert again.seconds < chain.seconds


def md5_tree(root, paths) -> dict[str, str]:
    out = {}
    for path in paths:
        target = root / path
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            out[str(file.relative_to(root))] = hashlib.md5(file.read_bytes()).hexdigest()
    return out


def test_a_teammate_reproduces_the_run_from_git_and_dvc(chain, tmp_path):
    """Clone A ran the chain; it pushes to a shared remote and commits dvc.lock; clone B pulls both and gets
    the same data, DVC clean and a main command with nothing to run."""
    from orchestration.dvc import team

    a = chain.root
    assert "dvc.lock has changes git does not have" in chain.output  # the run says what a teammate needs
    outs = [out["path"] for entry in lock(a).values() for out in entry.get("outs", [])]
    shared = tmp_path / "shared-remote"
    Dvc(a).run("remote", "add", "-d", "shared", str(shared))  # docs/pipeline.md: the one command
    Dvc(a).run("push")
    git(a, "add", "dvc.lock", ".dvc/config")
    git(a, "-c", "user.name=a", "-c", "user.email=a@example.org", "commit", "-q", "-m", "the run's dvc.lock")
    assert team.after_run(a) is None

    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    assert "output(s) this clone does not have" in team.before_run(b)
    Dvc(b).run("pull")
    assert team.before_run(b) is None
    assert md5_tree(b, outs) == md5_tree(a, outs)
    assert Dvc(b).run("status", "--json").strip() == "{}"
    again = run_main_command(b)
    assert again.exit_code == 0, again.output
    assert "(ran)" not in again.output and "dvc.lock has changes" not in again.output


def test_a_clone_without_dvc_lock_is_told_what_it_misses(tmp_path):
    from orchestration.dvc import team

    assert "dvc.lock: none in this clone" in team.before_run(tmp_path)
