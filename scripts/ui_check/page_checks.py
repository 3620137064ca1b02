"""Checks of what a user sees on the pages themselves: an experiment's landing view, the Source column,
system metrics, the model an evaluation scored, the sample grids, Dagster's links into MLflow."""

from __future__ import annotations

import re
from urllib.parse import unquote

import requests

from ui_check.apis import Dagster, Mlflow
from ui_check.browser import hrefs, page, page_until, text_of
from ui_check.common import GENAI_WORDS, LINKED_ASSET, SYSTEM_CHARTS, CheckFailed, links, tags_of


def check_landing(mlflow: Mlflow) -> str:
    """Each experiment, opened by the link the project gives, lands on its runs table (the run names and the
    Source column), not on MLflow's GenAI overview (traces, latency, token usage)."""
    seen = []
    for name in ("m2m-training", "m2m-evaluation"):
        experiment = mlflow.experiment(name)["experiment_id"]
        runs = [run["info"]["run_name"] for run in mlflow.finished_runs(name)]
        words = text_of(page(links(mlflow.url).experiment_url(experiment)))
        genai = [word for word in GENAI_WORDS if word in words]  # as the GenAI view writes them
        missing = [run for run in runs if run not in words]
        if genai or missing or "Source" not in words:
            raise CheckFailed(f"{name}: GenAI words {genai}, runs not shown {missing}, Source column "
                              f"{'shown' if 'Source' in words else 'absent'}; the page read: {words[:300]!r}")
        seen.append(f"{name}: {len(runs)} runs listed")
    return "; ".join(seen)


def check_source_column(mlflow: Mlflow) -> str:
    """The training runs table shows each run's Source (its dvc.yaml stage), not "-"; each run's page says who
    made it ("Created by", MLflow's user)."""
    experiment = mlflow.experiment("m2m-training")["experiment_id"]
    words = text_of(page(links(mlflow.url).experiment_url(experiment)))
    runs = mlflow.finished_runs("m2m-training")
    sources = {tags_of(run["data"]).get("mlflow.source.name", "") for run in runs}
    shown = [source for source in sources if source and source in words]
    if not runs or len(shown) != len(sources):
        raise CheckFailed(f"sources {sorted(sources)}, shown in the runs table: {sorted(shown)}")
    users = set()
    for run in runs:
        user = tags_of(run["data"]).get("mlflow.user", "")
        run_page = text_of(page(links(mlflow.url).run_url(experiment, run["info"]["run_id"])))
        if not user or f"Created by {user}" not in run_page:
            raise CheckFailed(f"{run['info']['run_name']}: its page does not say who made it (mlflow.user {user!r})")
        users.add(user)
    return f"{len(runs)} runs; sources shown: {', '.join(sorted(shown))}; created by {', '.join(sorted(users))}"


def check_system_metrics(mlflow: Mlflow) -> str:
    """Each training run's System metrics tab lists its CPU and memory charts: their legends once drawn, or, on a
    machine too busy to draw them in time, the tab's "System metrics (N)" header with N the run's system
    metrics (CPU and memory among them), where a run without them shows an empty tab."""
    experiment = mlflow.experiment("m2m-training")["experiment_id"]
    seen = []
    for run in mlflow.finished_runs("m2m-training"):
        logged = {m["key"] for m in run["data"].get("metrics", []) if m["key"].startswith("system/")}
        header = f"System metrics ({len(logged)})"
        url = links(mlflow.url).run_url(experiment, run["info"]["run_id"]).replace("?", "/system-metrics?", 1)
        words = text_of(page_until(url, lambda dom: all(key in dom for key in SYSTEM_CHARTS), height=3000,
                                   budgets=(20000, 45000)))
        charts = [key for key in SYSTEM_CHARTS if key in words]
        drawn = len(charts) == len(SYSTEM_CHARTS)
        if not set(SYSTEM_CHARTS) <= logged or not (drawn or header in words):
            raise CheckFailed(f"{run['info']['run_name']}: System metrics tab shows {charts}, logged "
                              f"{sorted(logged)}: {words[200:700]!r}")
        seen.append(f"{run['info']['run_name']} ({'charts drawn' if drawn else header})")
    return "CPU and memory on " + ", ".join(seen)


def check_evaluation_model(mlflow: Mlflow) -> str:
    """An evaluation run's page names the model version it scored, as a link to that version's page; and the
    version's page links back to the run."""
    experiment = mlflow.experiment("m2m-evaluation")["experiment_id"]
    versions = {mlflow.model_id(v): v for v in mlflow.versions()}
    seen = []
    for run in mlflow.finished_runs("m2m-evaluation"):
        full = mlflow.get("runs/get", run_id=run["info"]["run_id"])["run"]
        scored = [versions[m["model_id"]] for m in full.get("inputs", {}).get("model_inputs", [])
                  if m["model_id"] in versions]
        if not scored:
            raise CheckFailed(f"{run['info']['run_name']}: no registered version among its model inputs")
        version = scored[0]
        dom = page(links(mlflow.url).run_url(experiment, run["info"]["run_id"]))
        target = f"#/models/{version['name']}/versions/{version['version']}"
        label = f"{version['name']} v{version['version']}"
        if not any(link.endswith(target) for link in hrefs(dom)) or label not in text_of(dom):
            raise CheckFailed(f"{run['info']['run_name']}: its page has no link to {label} ({target})")
        back = page(f"{mlflow.url}/{target}")
        if not any(run["info"]["run_id"] in link for link in hrefs(back)):
            raise CheckFailed(f"{label}: its page has no link to the evaluation run {run['info']['run_id']}")
        seen.append(f"{run['info']['run_name']} -> {label} -> back")
    return "; ".join(seen)


def draws_grid(url: str) -> bool:
    """Whether the artifact view at ``url`` opened on ``samples.png`` and draws it: the file selected (its path
    shown) and an image the page fetched for it (MLflow draws artifacts from a ``blob:`` URL)."""
    shows = lambda dom: ("Path: " in dom and "samples.png" in text_of(dom).split("Path: ", 1)[1][:300]  # noqa: E731
                         and bool(re.search(r'<img[^>]+src="blob:', dom)))
    return shows(page_until(url, shows))


def check_dagster_links(dagster: Dagster, mlflow: Mlflow) -> str:
    """A trained model's asset page links its MLflow run and its sample grid at the MLflow UI that serves the
    store (whatever its port), and the grid link opens a drawn image: one click from the asset page."""
    dom = page(f"{dagster.url}/assets/{LINKED_ASSET}")
    targets = [link for link in hrefs(dom) if "/#/experiments/" in link]
    wrong = [link for link in targets if not link.startswith(f"{mlflow.url}/")]
    samples = [link for link in targets if "/artifacts/samples.png" in link]
    if not targets or wrong or not samples:
        raise CheckFailed(f"{LINKED_ASSET}: MLflow links {targets} (not at {mlflow.url}: {wrong}); "
                          f"the page read: {text_of(dom)[:300]!r}")
    if not draws_grid(samples[0]):
        raise CheckFailed(f"{LINKED_ASSET}: its samples link {samples[0]} draws no image")
    return f"{len(targets)} MLflow link(s) at {mlflow.url}; the samples link draws the grid"


def check_grids(mlflow: Mlflow) -> str:
    """Each training run shows its final sample grid (the artifact view draws the image, and it loads as a PNG)
    and its grids along training: the Model metrics tab draws the image chart ``samples`` (MLflow opens it on
    step 0, where the grid before the first step is), and grids were logged at step 0, at a checkpoint before
    the last step and at the last."""
    experiment = mlflow.experiment("m2m-training")["experiment_id"]
    seen = []
    for run in mlflow.finished_runs("m2m-training"):
        run_id, name = run["info"]["run_id"], run["info"]["run_name"]
        run_url = links(mlflow.url).run_url(experiment, run_id)
        if not draws_grid(links(mlflow.url).artifact_url(experiment, run_id, "samples.png")):
            raise CheckFailed(f"{name}: the artifact view of samples.png draws no image")
        drawn = requests.get(f"{mlflow.url}/get-artifact", params={"path": "samples.png", "run_uuid": run_id},
                             timeout=60)
        if not drawn.ok or not drawn.content.startswith(b"\x89PNG"):
            raise CheckFailed(f"{name}: samples.png, the image the page draws, does not load ({drawn.status_code})")
        # tall enough to reach the image chart below the summary/ section's charts (drawn only in view)
        charts = page_until(run_url.replace("?", "/model-metrics?", 1), lambda dom: "samples%2Bstep" in dom,
                            height=5000, budgets=(45000, 90000))
        chart = [unquote(src) for src in re.findall(r'<img[^>]+src="([^"]+)"', charts) if "samples%2Bstep" in src]
        logged = sorted(int(m) for m in re.findall(r"samples\+step\+(\d+)\+", " ".join(
            f["path"] for f in mlflow.get("artifacts/list", run_id=run_id, path="images").get("files", [])
            if f["path"].endswith(".png"))))
        last = int(next((p["value"] for p in run["data"].get("params", []) if p["key"] == "steps"), -1))
        if not chart or len(logged) < 3 or logged[0] != 0 or logged[-1] != last:
            raise CheckFailed(f"{name}: Model metrics draws {len(chart)} sample image(s); grids logged at steps "
                              f"{logged} (want step 0, one before the last step {last}, and the last)")
        seen.append(f"{name} (final {len(drawn.content) // 1000} KB; along training at steps {logged})")
    return "; ".join(seen)
