"""Checks of what MLflow stores for its pages: training runs' params and curves, model versions, evaluation
inputs."""

from __future__ import annotations

from datetime import datetime

from ui_check.apis import Mlflow
from ui_check.common import MIN_PRETRAIN_POINTS, TRAIN_PARAMS, CheckFailed, tags_of


def check_training_runs(mlflow: Mlflow) -> str:
    """Params, no ``final.*`` metrics, and a ``loss`` curve logged while training: a point per log step up
    to the last step, each later than the one before."""
    runs, lengths = mlflow.finished_runs("m2m-training"), []
    if not runs:
        raise CheckFailed("no finished run in m2m-training")
    for run in runs:
        name, data = run["info"]["run_name"], run["data"]
        params = {p["key"] for p in data.get("params", [])}
        finals = [m["key"] for m in data.get("metrics", []) if m["key"].startswith("final.")]
        history = mlflow.get("metrics/get-history", run_id=run["info"]["run_id"], metric_key="loss").get("metrics", [])
        steps, stamps = [m["step"] for m in history], [int(m["timestamp"]) for m in history]
        last = int(next((p["value"] for p in data.get("params", []) if p["key"] == "steps"), -1))
        live = (len(history) >= 2 and steps == sorted(set(steps)) and steps[-1] == last
                and all(a < b for a, b in zip(stamps, stamps[1:])))
        pretraining = name.endswith("_pretrained")
        if pretraining and len(history) < MIN_PRETRAIN_POINTS:
            raise CheckFailed(f"{name}: its loss curve has {len(history)} points (< {MIN_PRETRAIN_POINTS})")
        summary = {m["key"]: m["value"] for m in data.get("metrics", []) if m["key"].startswith("summary/")}
        if history and summary.get("summary/final_loss") != history[-1]["value"]:
            raise CheckFailed(f"{name}: summary/final_loss {summary.get('summary/final_loss')} is not the last loss "
                              f"point {history[-1]['value']}")
        if not set(TRAIN_PARAMS) <= params or finals or not live:
            raise CheckFailed(f"{name}: missing params {sorted(set(TRAIN_PARAMS) - params)}, final.* metrics {finals}, "
                              f"loss history {len(history)} points, steps {steps[:5]}..., timestamps {stamps[:5]}...")
        lengths.append(f"{name} {len(history)} (steps {steps[0]}-{steps[-1]}, {(stamps[-1] - stamps[0]) / 1000:.0f} s)")
    return f"{len(runs)} runs with params {', '.join(TRAIN_PARAMS)}, no final.*; loss points: " + "; ".join(lengths)


def check_model_versions(mlflow: Mlflow) -> str:
    """Each version: a description, a model with a signature, and ISO 8601 ``champion_since`` tags."""
    versions = mlflow.versions()
    if not versions:
        raise CheckFailed("no registered model version")
    for version in versions:
        label = f"{version['name']} v{version['version']}"
        if not version.get("description", "").strip():
            raise CheckFailed(f"{label} has no description")
        if "signature:" not in mlflow.model_file(version):
            raise CheckFailed(f"{label}: its MLmodel has no signature")
        since = tags_of(version).get("champion_since")
        if since is not None:
            try:
                datetime.fromisoformat(since)
            except ValueError:
                raise CheckFailed(f"{label}: champion_since={since!r} is not ISO 8601") from None
        unrounded = {k: v for k, v in tags_of(version).items() if k.startswith("metric.") and len(v) > 12}
        if unrounded:
            raise CheckFailed(f"{label}: metric tags not rounded: {unrounded}")
    for name in sorted({v["name"] for v in versions}):
        model = mlflow.get("registered-models/get", name=name)["registered_model"]
        if not model.get("description", "").strip() or not tags_of(model):
            raise CheckFailed(f"registered model {name} has no description or no tags")
    champions = [f"{v['name']} v{v['version']} since {tags_of(v)['champion_since']}" for v in versions
                 if "champion_since" in tags_of(v)]
    return (f"{len(versions)} versions with description, signature and rounded metric tags; registered models "
            "described and tagged; champion_since: " + "; ".join(champions))


def check_evaluation_inputs(mlflow: Mlflow) -> str:
    """Each evaluation run lists the evaluated model as its input (the run page reads ``runs/get``;
    ``runs/search`` leaves model inputs out)."""
    runs = mlflow.finished_runs("m2m-evaluation")
    if not runs:
        raise CheckFailed("no finished run in m2m-evaluation")
    model_names = {mlflow.model_id(v): f"{v['name']} v{v['version']}" for v in mlflow.versions()}
    seen = []
    for run in runs:
        full = mlflow.get("runs/get", run_id=run["info"]["run_id"])["run"]
        inputs = [m["model_id"] for m in full.get("inputs", {}).get("model_inputs", [])]
        if not inputs:
            raise CheckFailed(f"{run['info']['run_name']} lists no model input")
        seen.append(f"{run['info']['run_name']} <- {', '.join(model_names.get(i, i) for i in inputs)}")
    return "; ".join(seen)
