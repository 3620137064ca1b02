"""Check what the Dagster and MLflow UIs show after the main command, in the real UIs.

    .venv/bin/python scripts/check_ui.py [--screenshots docs/img]

Starts ``dagster dev`` (the project's instance, ``.dagster/``) and ``mlflow ui`` (``mlflow/mlflow.db``)
on free 127.0.0.1 ports, asks each what its pages show (Dagster's GraphQL API, MLflow's REST API),
prints one PASS/FAIL line per check, optionally saves screenshots of the pages taken by headless
chromium, stops both servers, and exits 1 when a check failed. Run it after ``bash scripts/pipeline.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
LOCATION, REPOSITORY = "m2m", "__repository__"
JOBS = ("prepare_captions", "generate_mis_shards", "train_and_evaluate", "promote_champion")
SENSOR = "promote_after_evaluation"
REFUSED_TAG = "m2m/promotion_refused"
TRAIN_PARAMS = ("lr", "batch_size", "variant", "images_per_step")
MAX_PNG_BYTES = 300_000
# words of MLflow's GenAI view (its overview's charts, its sidebar's name for runs), which a model-training
# experiment must not open on
GENAI_WORDS = ("Token Usage", "Latency", "Tool calls", "Evaluation runs")
SYSTEM_CHARTS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")
MIN_PRETRAIN_POINTS = 100
LINKED_ASSET = "m2m_dino_pretrained"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class CheckFailed(Exception):
    """A check saw something other than what the UI should show."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server in its own process group, its output going to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a server and everything it started (its process group): Ctrl-C, then SIGKILL for what is left."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their parent
    process.wait()


def wait_until(ready, name: str, log: Path, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``ready()`` until it is true; stop with one line naming the server and its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: {name} exited with status {process.returncode} before answering; see {log}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    sys.exit(f"error: {name} did not come up within {timeout:.0f} s; see {log}")


class Dagster:
    """The Dagster webserver's GraphQL API."""

    def __init__(self, url: str):
        self.url = url

    def query(self, text: str, **variables) -> dict:
        answer = requests.post(f"{self.url}/graphql", json={"query": text, "variables": variables}, timeout=60)
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise CheckFailed(f"GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]

    def loaded(self) -> bool:
        data = self.query("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
        entries = data["workspaceOrError"].get("locationEntries", [])
        return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)

    def runs(self, job: str, created_after: float | None = None) -> list[dict]:
        """The runs the job's page lists (the UI filters by job name and code-location tag)."""
        location_tag = {"key": ".dagster/repository", "value": f"{REPOSITORY}@{LOCATION}"}
        run_filter = {"pipelineName": job, "tags": [location_tag]}
        if created_after is not None:
            run_filter["createdAfter"] = created_after
        data = self.query(
            "query($f: RunsFilter) { runsOrError(filter: $f) { ... on Runs { results {"
            " runId status creationTime tags { key value } } } } }", f=run_filter,
        )
        return data["runsOrError"]["results"]

    def sensor_ticks(self, after: float) -> tuple[str, list[dict]]:
        data = self.query(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState {"
            " status ticks(limit: 20, afterTimestamp: %f) { status timestamp skipReason runIds error { message } }"
            " } } } }" % after,
            s={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR},
        )
        state = data["sensorOrError"]["sensorState"]
        return state["status"], sorted(state["ticks"], key=lambda t: t["timestamp"])


class Mlflow:
    """The MLflow server's REST API (``/api/2.0/mlflow``, and ``/ajax-api`` for what only the UI uses)."""

    def __init__(self, url: str):
        self.url = url

    def get(self, endpoint: str, body: dict | None = None, **params) -> dict:
        """GET ``endpoint`` with ``params``, or POST ``body`` to it."""
        url = f"{self.url}/api/2.0/mlflow/{endpoint}"
        answer = requests.post(url, json=body, timeout=60) if body else requests.get(url, params=params, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def experiment(self, name: str) -> dict:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]

    def finished_runs(self, name: str) -> list[dict]:
        query = {"experiment_ids": [self.experiment(name)["experiment_id"]], "max_results": 200,
                 "filter": "attributes.status = 'FINISHED'"}
        return self.get("runs/search", query).get("runs", [])

    def versions(self) -> list[dict]:
        return self.get("model-versions/search", max_results=200).get("model_versions", [])

    @staticmethod
    def model_id(version: dict) -> str:
        """The logged model a version was registered from (its source is ``models:/<id>``)."""
        return version.get("model_id") or version["source"].removeprefix("models:/").split("/")[0]

    def model_file(self, version: dict) -> str:
        """The version's MLmodel file, as the model's page reads it."""
        url = f"{self.url}/ajax-api/2.0/mlflow/logged-models/{self.model_id(version)}/artifacts/files"
        answer = requests.get(url, params={"artifact_file_path": "MLmodel"}, timeout=60)
        answer.raise_for_status()
        return answer.text


def tags_of(entity: dict) -> dict[str, str]:
    """A GraphQL run's or an MLflow entity's tags as a dict."""
    return {t["key"]: t.get("value", "") for t in entity.get("tags", [])}


# --- the checks: each returns what it saw, or raises CheckFailed ---------------------------------------------------

def check_job_pages(dagster: Dagster) -> str:
    """Each job of the main command lists its runs on its page."""
    counts = {job: len(dagster.runs(job)) for job in JOBS}
    if not all(counts.values()):
        raise CheckFailed(f"a job page lists no runs: {counts}")
    return ", ".join(f"{job} {n} run(s)" for job, n in counts.items())


def check_sensor(dagster: Dagster, started: float, timeout: float = 180) -> str:
    """The sensor's first ticks under this ``dagster dev`` launch no promotion run: the first after the main
    command skips its evaluation as the main command's, later ones find no new evaluation."""
    deadline = time.monotonic() + timeout
    status, ticks = dagster.sensor_ticks(started)
    while not ticks and time.monotonic() < deadline:
        time.sleep(5)
        status, ticks = dagster.sensor_ticks(started)
    if not ticks:
        raise CheckFailed(f"sensor {SENSOR} ({status}) did not tick within {timeout:.0f} s")
    time.sleep(5)  # a run a tick requested is created right after it
    launched = dagster.runs("promote_champion", created_after=started)
    seen = "; ".join(f"{t['status']}: {t['skipReason'] or (t['error'] or {}).get('message', '')}" for t in ticks)
    if launched or any(t["runIds"] for t in ticks) or any(t["status"] == "FAILURE" for t in ticks):
        raise CheckFailed(f"{len(ticks)} tick(s) [{seen}], {len(launched)} new promote_champion run(s)")
    reasons = [t["skipReason"] or "" for t in ticks]
    if not all("main command" in reason or reason.startswith("No new materialization") for reason in reasons):
        raise CheckFailed(f"unexpected skip reason(s): {seen}")
    return f"{status}, {len(ticks)} tick(s), no new run [{seen}]"


def check_promotion_tag(dagster: Dagster) -> str:
    """The latest promotion run shows which promotions it refused (``none`` when it refused none)."""
    runs = dagster.runs("promote_champion")
    values = [tags_of(run).get(REFUSED_TAG) for run in runs]
    if not runs or values[0] is None:
        raise CheckFailed(f"the latest promote_champion run has no tag {REFUSED_TAG}")
    tagged = sum(value is not None for value in values)
    return f"latest run {runs[0]['runId'][:8]}: {REFUSED_TAG}={values[0]!r} ({tagged}/{len(runs)} runs tagged)"


def check_asset_graph(dagster: Dagster) -> str:
    """The graph shows every asset and asset check the code location defines, each asset materialized."""
    sys.path.insert(0, str(ROOT))  # this checkout's definitions, as `dagster dev` here loads them
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    expected = {key.to_user_string() for key in graph.get_all_asset_keys()}
    expected_checks = {f"{key.asset_key.to_user_string()}.{key.name}" for key in graph.asset_check_keys}
    nodes = dagster.query(
        "{ assetNodes(loadMaterializations: true) { assetKey { path } assetMaterializations(limit: 1) { timestamp }"
        " assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
    )["assetNodes"]
    shown = {"/".join(n["assetKey"]["path"]) for n in nodes}
    checks = {f"{'/'.join(n['assetKey']['path'])}.{c['name']}" for n in nodes
              for c in n["assetChecksOrError"].get("checks", [])}
    unmaterialized = sorted("/".join(n["assetKey"]["path"]) for n in nodes if not n["assetMaterializations"])
    if shown != expected or checks != expected_checks or unmaterialized:
        raise CheckFailed(f"missing assets {sorted(expected - shown)}, missing checks "
                          f"{sorted(expected_checks - checks)}, never materialized {unmaterialized}")
    return f"{len(shown)} assets (all materialized), {len(checks)} asset checks"


def links(url: str):
    """The project's MLflow links (``MlflowResource``) for the UI served at ``url``."""
    sys.path.insert(0, str(ROOT))
    from orchestration.defs.resources import MlflowResource

    return MlflowResource(ui_url=url)


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


# --- what a page shows, as headless chromium renders it --------------------------------------------------------------

def page(url: str, budget_ms: int = 20000, height: int = 900) -> str:
    """The DOM of ``url`` once headless chromium has run its scripts for ``budget_ms`` of virtual time: what a
    user's browser shows, redirects and all (the pages are single-page apps: their HTML alone is empty), in a
    window ``height`` pixels high (charts below it are drawn only when scrolled to)."""
    if not CHROMIUM:
        raise CheckFailed("chromium not found on PATH: the pages cannot be rendered")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             f"--window-size=1400,{height}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=240,
        )
    if done.returncode != 0 or not done.stdout.strip():
        raise CheckFailed(f"chromium could not render {url}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def page_until(url: str, shows, height: int = 900, budgets=(20000, 45000, 90000)) -> str:
    """``page(url)`` rendered with a longer budget each time until ``shows(dom)``: on a busy machine a page's
    charts may take longer to draw than its frame. The last DOM when none shows it."""
    for budget in budgets:
        dom = page(url, budget_ms=budget, height=height)
        if shows(dom):
            break
    return dom


def text_of(dom: str) -> str:
    """The visible words of a DOM (tags, scripts and styles dropped), whitespace squeezed."""
    dom = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", dom)
    return " ".join(html.unescape(re.sub(r"(?s)<[^>]+>", " ", dom)).split())


def hrefs(dom: str) -> list[str]:
    return [html.unescape(link) for link in re.findall(r'href="([^"]+)"', dom)]


# --- screenshots -----------------------------------------------------------------------------------------------------

def screenshot(url: str, out: Path, window=(1400, 900), box=None, width: int | None = None,
               budget_ms: int = 25000) -> str:
    """Save ``url`` as headless chromium renders it in a ``window`` (width, height), cut to ``box``
    (left, top, right, bottom) and scaled to ``width``, quantized (and shrunk if needed) below MAX_PNG_BYTES."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={window[0]},{window[1]}",
             "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", url],
            check=True, capture_output=True, timeout=240,
        )
    image = Image.open(out).convert("RGB")
    if box:
        image = image.crop(box)
    if width and image.width != width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    while out.stat().st_size > MAX_PNG_BYTES:
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.LANCZOS)
        image.quantize(colors=256).save(out, optimize=True)
    return f"{out} ({out.stat().st_size // 1000} KB)"


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


def links_ui() -> str:
    """Where the project's links say the MLflow UI is (``MlflowResource``: ``$M2M_MLFLOW_UI_URL`` or port 5000
    on 127.0.0.1): the check serves the store there, so that the links it follows are the ones users get."""
    sys.path.insert(0, str(ROOT))
    from orchestration.defs.resources import MlflowResource

    url = MlflowResource(tracking_uri="sqlite:///").ui()
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or not parts.port:
        sys.exit(f"error: the project's MLflow links go to {url}; set M2M_MLFLOW_UI_URL to a 127.0.0.1 port")
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", parts.port)) == 0:
            sys.exit(f"error: port {parts.port} of {url} (where the project's MLflow links go) is taken; "
                     "stop what listens there or set M2M_MLFLOW_UI_URL to a free port")
    return url


def start_servers(servers: list[subprocess.Popen], logs: Path, timeout: float) -> tuple[Dagster, Mlflow]:
    """Start ``dagster dev`` and ``mlflow ui`` on free 127.0.0.1 ports (added to ``servers`` as they start)
    and wait until both answer: Dagster with the code location loaded, MLflow healthy."""
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(ROOT / ".dagster"))}
    bin_dir, store = Path(sys.executable).parent, f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    dagster = Dagster(f"http://127.0.0.1:{free_port()}")
    mlflow = Mlflow(links_ui())
    commands = {
        "dagster dev": [str(bin_dir / "dagster"), "dev", "--host", "127.0.0.1",
                        "--port", dagster.url.rsplit(":", 1)[1]],
        "mlflow ui": [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                      "--port", mlflow.url.rsplit(":", 1)[1], "--workers", "1"],  # one page at a time
    }
    for name, command in commands.items():
        servers.append(start(command, logs / f"{name.split()[0]}.log", env))
    wait_until(dagster.loaded, "dagster dev", logs / "dagster.log", servers[0], timeout)
    wait_until(lambda: requests.get(f"{mlflow.url}/health", timeout=5).ok, "mlflow ui", logs / "mlflow.log",
               servers[1], timeout)
    return dagster, mlflow


def run_checks(checks: dict) -> int:
    """Run each check, print its PASS/FAIL line, and return how many failed."""
    failed = 0
    for name, check in checks.items():
        try:
            print(f"PASS {name}: {check()}", flush=True)
        except CheckFailed as err:
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
        except Exception as err:  # an answer of another shape than expected is a failure too
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="also save screenshots of the pages here")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each server (default 240)")
    args = parser.parse_args()
    if args.screenshots and not CHROMIUM:
        sys.exit("error: --screenshots needs chromium (not found on PATH)")
    logs = Path(tempfile.mkdtemp(prefix="check_ui-"))
    started, servers = time.time(), []
    try:
        dagster, mlflow = start_servers(servers, logs, args.timeout)
        print(f"dagster dev on {dagster.url}, mlflow ui on {mlflow.url} (logs in {logs})", flush=True)
        failed = run_checks({
            "dagster: job pages list the main command's runs": lambda: check_job_pages(dagster),
            "dagster: promotion run tagged": lambda: check_promotion_tag(dagster),
            "dagster: asset graph": lambda: check_asset_graph(dagster),
            "mlflow: training runs": lambda: check_training_runs(mlflow),
            "mlflow: model versions": lambda: check_model_versions(mlflow),
            "mlflow: evaluation runs list their model": lambda: check_evaluation_inputs(mlflow),
            "page: experiments open on their runs": lambda: check_landing(mlflow),
            "page: Source column and user": lambda: check_source_column(mlflow),
            "page: System metrics tab": lambda: check_system_metrics(mlflow),
            "page: an evaluation run names its model": lambda: check_evaluation_model(mlflow),
            "page: sample grids drawn": lambda: check_grids(mlflow),
            "page: Dagster's MLflow links": lambda: check_dagster_links(dagster, mlflow),
            f"dagster: sensor {SENSOR} first ticks": lambda: check_sensor(dagster, started),
        })
        if args.screenshots:
            for line in screenshots(args.screenshots, dagster, mlflow):
                print(f"screenshot {line}", flush=True)
        print(f"{failed} check(s) failed" if failed else "all checks passed", flush=True)
        return 1 if failed else 0
    finally:
        for server in servers:
            stop(server)


if __name__ == "__main__":
    sys.exit(main())
