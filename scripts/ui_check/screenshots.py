"""The screenshots docs/ shows, taken after the checks."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from ui_check.apis import Dagster, Mlflow
from ui_check.browser import screenshot
from ui_check.common import LINKED_ASSET, LOCATION, links


def screenshots(folder: Path, dagster: Dagster, mlflow: Mlflow) -> list[str]:
    """The pages the docs show. Window sizes and crops are chosen for them: the asset graph draws its
    nodes in full only when wide enough, and MLflow's assistant panel takes the right quarter."""
    folder.mkdir(parents=True, exist_ok=True)
    dagster.query("mutation { setNuxSeen }")  # what "Skip" on the first visit's community pop-up does
    training = mlflow.experiment("m2m-training")["experiment_id"]
    run = next(r for r in mlflow.finished_runs("m2m-training") if r["info"]["run_name"] == "m2m_dino_pretrained")
    version = max((v for v in mlflow.versions() if v["name"] == "m2m-dino"), key=lambda v: int(v["version"]))
    groups = ",".join(f"global@global:{group}" for group in ("data", "training", "evaluation"))
    chart = "&".join(f"{key}={quote(json.dumps(value))}" for key, value in {
        "runs": [run["info"]["run_id"]], "metric": "loss", "experiments": [training], "plot_metric_keys": ["loss"],
    }.items()) + "&x_axis=relative"
    mlflow_window, mlflow_box = (1880, 900), (0, 0, 1400, 900)
    link = links(mlflow.url)
    evaluation = mlflow.experiment("m2m-evaluation")["experiment_id"]
    scored = next(r for r in mlflow.finished_runs("m2m-evaluation") if r["info"]["run_name"].endswith("m2m-dino"))
    run_url = link.run_url(training, run["info"]["run_id"])
    pages = {
        "mlflow_evaluation_run.png": (link.run_url(evaluation, scored["info"]["run_id"]),
                                      dict(window=mlflow_window, box=(0, 0, 1400, 620))),
        "mlflow_system_metrics.png": (run_url.replace("?", "/system-metrics?", 1),
                                      dict(window=mlflow_window, box=(0, 0, 1400, 760), budget_ms=90000)),
        "mlflow_samples.png": (link.artifact_url(training, run["info"]["run_id"], "samples.png"),
                               dict(window=mlflow_window, box=(0, 0, 1400, 760), budget_ms=45000)),
        "dagster_asset_page.png": (f"{dagster.url}/assets/{LINKED_ASSET}", dict(window=(1400, 1100))),
        "dagster_asset_graph.png": (f"{dagster.url}/asset-groups?expanded={groups}",
                                    dict(window=(2200, 1550), box=(600, 170, 2140, 1240), width=1400)),
        "dagster_job_runs.png": (f"{dagster.url}/locations/{LOCATION}/jobs/train_and_evaluate/runs",
                                 dict(box=(0, 0, 1400, 420))),
        "mlflow_training_runs.png": (link.experiment_url(training),
                                     dict(window=mlflow_window, box=(0, 0, 1400, 480))),
        "mlflow_loss_chart.png": (f"{mlflow.url}/#/metric?{chart}",
                                  dict(window=mlflow_window, box=(0, 0, 1400, 620), budget_ms=60000)),
        "mlflow_model_version.png": (f"{mlflow.url}/#/models/m2m-dino/versions/{version['version']}",
                                     dict(window=mlflow_window, box=mlflow_box)),
    }
    return [screenshot(url, folder / name, **options) for name, (url, options) in pages.items()]
