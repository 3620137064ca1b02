"""MLflow runs of the stages that train and evaluate, and their models in the registry.

A run is keyed by the DVC hash of what the stage wrote: a stage that is materialized again without
changes finds its run and model version instead of logging new ones, so re-running the pipeline
changes nothing in MLflow either.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import dagster as dg

from orchestration.dvc.cli import Dvc
from orchestration.dvc.stages import Stage, StageGroup, producers

TRAINING_EXPERIMENT = "m2m-training"
REASON_TAG = "m2m.failure_reason"  # why a run was terminated as FAILED
EVALUATION_EXPERIMENT = "m2m-evaluation"


def flat_params(values: dict) -> dict[str, str]:
    """A stage's tracked params (``pretrain`` or ``pretrain.steps``) as flat ``{"pretrain.steps": "200"}``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_params({f"{key}.{k}": v for k, v in value.items()}))
        else:
            out[key] = str(value)
    return out


def data_inputs(stage: Stage, groups: dict[str, StageGroup], dvc: Dvc) -> dict[str, str]:
    """``{path: md5}`` of the stage's deps that other stages produce (its data, not its code)."""
    deps = dvc.hashes(stage.name, "deps")
    return {path: md5 for path, md5 in deps.items() if producers(groups, path)}


def run_tags(stage: Stage, root: Path, md5: str, dagster_run_id: str) -> dict[str, str]:
    """What a run of ``stage`` records about where it came from: the DVC stage and hash, the Dagster asset and
    run, and MLflow's own source, user and git commit (the runs table's Source column, the run page's
    "Created by")."""
    import getpass

    from m2m import tracking

    tags = {"dvc.stage": stage.name, "dvc.md5": md5, "dagster.asset": stage.asset, "dagster.run_id": dagster_run_id,
            "mlflow.source.type": "LOCAL", "mlflow.source.name": f"dvc.yaml:{stage.name}",
            "mlflow.user": getpass.getuser()}
    commit = tracking.git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def find_run(experiment_id: str, md5: str):
    """The newest finished run of the experiment that logged the output with DVC hash ``md5``, or None."""
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`dvc.md5` = '{md5}' and attributes.status = 'FINISHED'",
        max_results=1, output_format="list",
    )
    return runs[0] if runs else None


def fail_running(reason: str, select=lambda run: True, experiment_ids: list[str] | None = None) -> list[str]:
    """Terminate as FAILED, with ``reason`` in the ``REASON_TAG`` tag, the RUNNING runs that ``select``
    picks (of ``experiment_ids``, default all): runs whose logging was cut off by a killed pipeline."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    failed = []
    for run in mlflow.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", output_format="list"):
        if select(run):
            client.set_tag(run.info.run_id, REASON_TAG, reason)
            client.set_terminated(run.info.run_id, status="FAILED")
            failed.append(run.info.run_id)
    return failed


def fail_unfinished(experiment_id: str, md5: str) -> None:
    """The runs for ``md5`` still RUNNING lost their logging to a killed pipeline; the run about to be logged
    replaces them."""
    fail_running(
        "logging was cut off; the stage was logged again in a later run",
        lambda run: run.data.tags.get("dvc.md5") == md5, [experiment_id],
    )


def start_live_run(stage: Stage, root: Path, dagster_run_id: str) -> str | None:
    """A RUNNING run for a training stage about to run, which its command logs into as it trains (the loss,
    lr and speed at every log step, its settings as params); None for a stage of several models."""
    from mlflow.tracking import MlflowClient

    from m2m import tracking

    if len(stage.outs) != 1:
        return None
    tags = {k: v for k, v in run_tags(stage, root, "", dagster_run_id).items() if k != "dvc.md5"}
    tags["mlflow.runName"] = stage.asset
    return MlflowClient().create_run(tracking.experiment_id(TRAINING_EXPERIMENT), tags=tags).info.run_id


def record_placement(run_id: str | None, devices: str, env: dict[str, str]) -> None:
    """Where the stage's command computes, on its live run: the machine (``m2m.host``), the leased devices
    (``m2m.devices``) and the GPUs its ``CUDA_VISIBLE_DEVICES`` names (a Celery worker's own GPU)."""
    from mlflow.tracking import MlflowClient

    if run_id is None:
        return
    client = MlflowClient()
    client.set_tag(run_id, "m2m.host", socket.gethostname())
    client.set_tag(run_id, "m2m.devices", devices)
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        client.set_tag(run_id, "m2m.cuda_visible_devices", env["CUDA_VISIBLE_DEVICES"])


# The command that opens a live run samples CPU, memory, disk and (with pynvml) GPU use into it every few
# seconds: the run page's System metrics tab (mlflow's system metrics monitor, psutil).
SYSTEM_METRICS = {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2"}


def live_env(run_id: str | None) -> dict[str, str]:
    """What a stage command needs to log into ``run_id`` (accelerate's MLflow tracker reads it)."""
    import mlflow

    if run_id is None:
        return {}
    uri = mlflow.get_tracking_uri()
    return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_NAME": TRAINING_EXPERIMENT,
            **SYSTEM_METRICS}


def fail_live_run(run_id: str | None, reason: str) -> None:
    """The command of a live run failed or was interrupted: the run ends FAILED, with ``reason``."""
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        client.set_tag(run_id, REASON_TAG, reason.splitlines()[0][:5000] if reason else "failed")
        client.set_terminated(run_id, status="FAILED")
    except Exception:  # noqa: BLE001 - the stage's own error is the one to report; recovery fails the run later
        pass


# The one-value measurements of a training run (train_metrics.json) are logged under this prefix: MLflow's
# charts put them in a section of their own, apart from the curves logged while training (loss, lr, ...),
# and ``summary/images_per_s`` (the whole run) is not a point of the ``images_per_s`` curve.
SUMMARY = "summary/"


def split_train_metrics(train_metrics: dict) -> tuple[dict[str, float], dict[str, str]]:
    """``train_metrics.json`` as (measurements -> MLflow metrics, settings -> MLflow params)."""
    from m2m import tracking
    from m2m.training.metrics import MEASUREMENTS

    measured = tracking.flatten_numbers({k: v for k, v in train_metrics.items() if k in MEASUREMENTS})
    settings = {k: str(v) for k, v in train_metrics.items() if k not in MEASUREMENTS}
    return measured, settings


def model_description(stage: Stage, settings: dict[str, str], measured: dict[str, float]) -> str:
    """One paragraph for a registered version: what it is, how it was trained, where it came from."""
    task = settings.get("task")
    kind = f"fine-tuned for {task} from {settings.get('init')}" if task not in (None, "None") else "pre-trained"
    steps, loss = int(measured.get("steps", 0)), measured.get("loss_last_10pct")
    trained = f"{steps} steps of {settings.get('batch_size')} sets x {settings.get('n_images')} images"
    loss_text = f", loss over the last 10% of steps {loss:.4f}" if loss is not None else ""
    return (f"M2M-{settings.get('variant')} ({settings.get('preset')} preset), {kind}: {trained}{loss_text}. "
            f"Made by the DVC stage {stage.name} (Dagster asset {stage.asset}); the run has its params, DVC "
            "inputs and loss curve.")


def registered_model_description(name: str, settings: dict[str, str]) -> str:
    """The registered model's own page: what its versions are and how ``champion`` moves."""
    task = settings.get("task")
    what = (f"M2M-{settings.get('variant')} fine-tuned for {task} (section 6.2)" if task not in (None, "None")
            else f"M2M-{settings.get('variant')} pre-trained on multi-image sets (eq. 5)")
    return (f"{what}. Every version the pipeline trains gets the alias `challenger`; `champion` moves only "
            f"through the promotion (`promote_champion` in Dagster, or `m2m promote --model {name}`), which "
            "compares the two on the evaluation's metrics (`metric.*` tags) and says why when it refuses. Do "
            "not move `champion` with the alias pencil (docs/pipeline.md, \"Who may move champion\").")


def evaluation_note(name: str, version, ui, training_run: tuple[str, str] | None) -> str:
    """The evaluation run's description (the top of its page): the model version it scored, as links."""
    if version is None:
        return f"Table 1 metrics of `{name}` (no registered version matched the model it read)."
    text = f"Table 1 metrics of [{name} v{version.version}]({ui.model_url(name, version.version)})"
    if training_run is not None:
        text += f", trained in [its training run]({ui.run_url(*training_run)})"
    return text + ". Its means are also on the version, as `metric.*` tags that promotion compares."


def log_training(
    stage: Stage, groups: dict[str, StageGroup], dvc: Dvc, ui, dagster_run_id: str, live_run_id: str | None = None
) -> dict:
    """Log each model folder the stage wrote (params, git commit, DVC inputs, loss curve, samples,
    the pyfunc model) and register it under the folder's name with the alias ``challenger``.

    ``live_run_id``: the run the stage's command logged into while it trained (``start_live_run``); it is
    completed rather than a new one started, and its loss curve is already there."""
    import mlflow

    from m2m import registry, tracking

    root, outs, meta = dvc.root, dvc.hashes(stage.name, "outs"), {}
    experiment = tracking.experiment_id(TRAINING_EXPERIMENT)
    for out in stage.outs:
        folder, name, md5 = root / out, Path(out).name, outs[out]
        version = registry.find_version(name, registry.DVC_TAG, md5)
        if version is None:
            fail_unfinished(experiment, md5)
            measured, settings = split_train_metrics(json.loads((folder / "train_metrics.json").read_text("utf-8")))
            tags = run_tags(stage, root, md5, dagster_run_id)
            opened = dict(run_id=live_run_id) if live_run_id else dict(experiment_id=experiment, run_name=stage.asset)
            with mlflow.start_run(**opened) as run:
                mlflow.set_tags(tags)
                logged = run.data.params if live_run_id else {}
                mlflow.log_params({k: v for k, v in settings.items() if k not in logged})
                mlflow.log_params({**flat_params(stage.params), "command": " && ".join(stage.cmds)})
                tracking.log_dvc_inputs(data_inputs(stage, groups, dvc), root, context="training")
                if (folder / "loss.csv").is_file():
                    if not live_run_id:
                        tracking.log_loss_curve(folder / "loss.csv")
                    mlflow.log_artifact(str(folder / "loss.csv"))
                mlflow.log_metrics({f"{SUMMARY}{key}": value for key, value in measured.items()})
                for artifact in ("samples.png", "train_metrics.json"):
                    if (folder / artifact).is_file():
                        mlflow.log_artifact(str(folder / artifact))
                info = tracking.log_model_folder(folder)
            tags = {registry.DVC_TAG: md5, "run_id": run.info.run_id, "dagster.asset": stage.asset}
            version = registry.register(
                info.model_uri, name, tags, model_description(stage, settings, measured),
                model_description=registered_model_description(name, settings),
                model_tags={"variant": settings.get("variant", ""), "preset": settings.get("preset", ""),
                            "task": settings.get("task") or "pre-training", "dagster.asset": stage.asset},
            )
            registry.set_metrics(name, version.version, {k: v for k, v in measured.items() if "loss" in k})
        run_id = version.tags.get("run_id") or version.run_id
        meta["mlflow run"] = dg.MetadataValue.url(ui.run_url(experiment, run_id))
        meta["samples"] = dg.MetadataValue.url(ui.artifact_url(experiment, run_id, "samples.png"))
        meta["registered model"] = dg.MetadataValue.text(f"{name} v{version.version}")
        meta["registered model url"] = dg.MetadataValue.url(ui.model_url(name, version.version))
        meta["aliases"] = dg.MetadataValue.text(", ".join(registry.aliases_of(name, version.version)) or "-")
    return meta


def log_evaluation(stage: Stage, groups: dict[str, StageGroup], dvc: Dvc, ui, dagster_run_id: str) -> dict:
    """Log each evaluation folder (Table 1 means and stds, per-position curves, grids) and put its
    metrics on the evaluated model version as ``metric.<name>`` tags, which promotion compares."""
    import mlflow

    from m2m import registry, tracking

    root, outs, deps, meta = dvc.root, dvc.hashes(stage.name, "outs"), dvc.hashes(stage.name, "deps"), {}
    experiment = tracking.experiment_id(EVALUATION_EXPERIMENT)
    for out in stage.outs:
        folder, name, md5 = root / out, Path(out).name, outs[out]
        report = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        means = {key: value["mean"] for key, value in report["summary"].items()}
        model_path = next((path for path in deps if Path(path).name == name), None)
        version = None
        if model_path and model_path in deps:
            version = registry.find_version(name, registry.DVC_TAG, deps[model_path])
        model_id = registry.logged_model_id(version) if version is not None else None
        run = find_run(experiment, md5)
        if run is None:
            fail_unfinished(experiment, md5)
            models = {dep for dep in deps if any(s.role == "train" for s in producers(groups, dep))}
            inputs = {p: d for p, d in data_inputs(stage, groups, dvc).items() if p == model_path or p not in models}
            tags = run_tags(stage, root, md5, dagster_run_id)
            trained = version.tags.get("run_id") or version.run_id if version is not None else None
            tags["mlflow.note.content"] = evaluation_note(
                name, version, ui, (tracking.experiment_id(TRAINING_EXPERIMENT), trained) if trained else None
            )
            if version is not None:
                tags["model"] = f"{name} v{version.version}"
            with mlflow.start_run(experiment_id=experiment, run_name=f"{stage.asset} {name}", tags=tags) as run:
                mlflow.log_params({**flat_params(stage.params), "model": model_path or name})
                tracking.log_dvc_inputs(inputs, root, context="evaluation")
                # with the evaluated model's id, the run lists it as an input (its Models column) and the
                # model's page shows these metrics
                mlflow.log_metrics(means, model_id=model_id)
                mlflow.log_metrics({f"{key}_std": value["std"] for key, value in report["summary"].items()})
                for row in report["per_position"]:
                    position = int(row["position"])
                    mlflow.log_metrics(
                        {f"{key}_at_n": value for key, value in row.items() if key != "position"}, step=position
                    )
                mlflow.log_artifacts(str(folder))
        meta[f"mlflow run ({name})"] = dg.MetadataValue.url(ui.run_url(experiment, run.info.run_id))
        meta[f"samples ({name})"] = dg.MetadataValue.url(ui.artifact_url(experiment, run.info.run_id, "grid.png"))
        if version is not None:
            registry.set_metrics(name, version.version, means)
            registry.tag_version(name, version.version, "eval_run_id", run.info.run_id)
            registry.note_evaluation(name, version.version, ui.run_url(experiment, run.info.run_id))
            meta[f"evaluated version ({name})"] = dg.MetadataValue.text(f"{name} v{version.version}")
    return meta
