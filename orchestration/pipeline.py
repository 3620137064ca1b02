"""The main command: materialize the whole chain through the project's Dagster instance, then say where to look.

    python -m orchestration.pipeline

It starts ``dagster dev`` (webserver, daemon, code server; ``runs/server.py``) for its own length,
sets the ``gpu`` pool's limit (``runs/pool.py``), follows to their end any runs an earlier command left
in progress (``runs/recovery.py``), then submits the runs of ``runs/plan.py`` as their dependencies
succeed, printing what each does (``runs/follow.py``): the captions, one run per MIS shard partition,
the data steps, one run per training, fine-tuning and the evaluation, the promotion and the data
freshness checks. Runs go through the instance's queue like the UI's, so the pool, run monitoring and
run retries apply and the runs show in ``dagster dev`` afterwards. Each stage runs only when DVC says it
changed, so a second run is quick and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg

from orchestration.defs.assets import RAW_CAPTIONS
from orchestration.defs.jobs import PREPARE_JOB, SHARDS_JOB, TRAIN_JOB
from orchestration.defs import freshness
from orchestration.defs.promotion import promote_champion
from orchestration.defs.resources import ComputeResource, MlflowResource
from orchestration.dvc import team
from orchestration.dvc.cli import Dvc
from orchestration.dvc.stages import PipelineError, load_pipeline
from orchestration.materialize.stage import data_version
from orchestration.mlflow import runs as mlflow_runs
from orchestration.project import REPO, project_root
from orchestration.runs import plan, pool, recovery
from orchestration.runs.follow import Follower
from orchestration.runs.server import DagsterServer, ServerError

INSTANCE_CONFIG = "dagster.yaml"


def prepare_instance(home: Path) -> dg.DagsterInstance:
    """The instance at ``home``, with the project's instance settings when it has none of its own."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / INSTANCE_CONFIG).is_file():
        shutil.copy(REPO / ".dagster" / INSTANCE_CONFIG, home / INSTANCE_CONFIG)
    return dg.DagsterInstance.from_config(str(home))


def prepare_mlflow(root: Path) -> None:
    """Create the project's MLflow store (a SQLite file by default) before runs side by side open it:
    two processes creating its tables at once collide."""
    from mlflow.tracking import MlflowClient

    from m2m import tracking

    tracking.configure(root)
    MlflowClient().search_experiments(max_results=1)


def set_pool_limit(instance: dg.DagsterInstance) -> str:
    """The ``gpu`` pool's limit from the machine's devices (the instance's own setting wins); a line saying so."""
    compute = ComputeResource()
    kind = compute.resolved_device()
    count = compute.devices().count if kind == "cuda" else 1  # a CPU is one device until the pool splits it
    limit = pool.set_limit(instance, count)
    source = "concurrency.pools.default_limit" if pool.configured_default(instance) is not None else f"{count} {kind} device(s)"
    cores = f"; the CPU split into {limit} device(s)" if kind == "cpu" else ""
    return f"gpu pool: {limit} heavy step(s) at once ({source}){cores}"


def summary(root: Path) -> str:
    """Where to look: registered versions and aliases, evaluation metrics, how to open the UIs."""
    from mlflow.tracking import MlflowClient

    from m2m import tracking

    uri = tracking.configure(root)
    lines = ["", "=== Where to look ===", f"MLflow store: {uri}", "Registered models:"]
    client = MlflowClient()
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(model.name).aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        versions = sorted(client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version))
        for version in versions:
            aliases = ", ".join(sorted(by_version.get(str(version.version), []))) or "-"
            lines.append(f"  {model.name} v{version.version}: {aliases}")
    lines.append("Evaluation (mean ± std over the generated positions):")
    for metrics in sorted((root / "assets" / "eval").glob("*/metrics.json")):
        table = json.loads(metrics.read_text(encoding="utf-8"))["summary"]
        values = ", ".join(f"{k} {v['mean']:.2f} ± {v['std']:.2f}" for k, v in table.items())
        lines.append(f"  {metrics.parent.name}: {values}  ({metrics.with_name('metrics.md').relative_to(root)})")
    ui = MlflowResource().ui()
    port = urlsplit(ui).port or 80
    serve = (f"  the team's MLflow server -> {ui}" if uri.startswith(("http://", "https://")) else
             f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}   -> {ui}")
    training = client.get_experiment_by_name(mlflow_runs.TRAINING_EXPERIMENT)
    groups = ",".join(f"global@global:{group}" for group in ("data", "training", "evaluation"))
    lines += [
        "Sample grids: assets/models/*/samples.png, assets/eval/*/grid.png",
        "Open the UIs (both on 127.0.0.1):",
        f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev --host 127.0.0.1 --port 3000"
        f"   -> http://127.0.0.1:3000/asset-groups?expanded={groups}",
        serve,
    ]
    if training is not None:
        lines.append(f"  training runs: {MlflowResource().experiment_url(training.experiment_id)}")
    return "\n".join(lines)


def follow_leftovers(follower: Follower, left: list[dg.DagsterRun]) -> None:
    """Follow to their end (their retries included) the runs an earlier command left queued or in progress."""
    if not left:
        return
    say = f"{len(left)} run(s) left unfinished by an earlier command: following them to their end first"
    print(f"\n=== {say} ===", flush=True)
    follower.wait_for({f"{recovery.run_name(run)} ({run.run_id[:8]})": run.run_id for run in left})


def train_job_checks() -> list[tuple[str, str]]:
    """The asset checks of the train job, (asset, check name)."""
    from orchestration.definitions import defs

    graph = defs().resolve_job_def(TRAIN_JOB).asset_layer.asset_graph
    return sorted((key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys)


def stale(spec: plan.RunSpec, groups, dvc: Dvc, instance: dg.DagsterInstance) -> bool:
    """Whether ``spec`` has work to do: DVC sees a stage it makes changed, or Dagster's latest materialization
    of an asset (or partition) it makes is missing or records other data than dvc.lock has (a fresh clone
    after ``dvc pull``; a step whose command ran but whose reporting failed)."""
    if spec.key == plan.CAPTIONS and latest_metadata(instance, RAW_CAPTIONS, None) is None:
        return True
    for name in spec.makes:
        stage = groups[name].stage(spec.partition)
        if dvc.status(stage.name):
            return True
        recorded = latest_metadata(instance, name, spec.partition)
        if recorded is None or recorded.get("dvc md5") != data_version(dvc.hashes(stage.name, "outs")):
            return True
    return False


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None) -> dict | None:
    """The metadata values of the asset's (partition's) latest materialization; None when it has none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        return None
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


def run_chain(server: DagsterServer, instance: dg.DagsterInstance, root: Path, promote: bool,
              left: list[dg.DagsterRun]) -> int:
    follower = Follower(server, instance)
    try:
        follow_leftovers(follower, left)
        jobs = {"prepare": PREPARE_JOB, "shards": SHARDS_JOB, "train": TRAIN_JOB, "promote": promote_champion.name,
                "freshness": freshness.JOB}
        groups = load_pipeline(root)
        specs, current = plan.to_run(plan.plan(groups, jobs, train_job_checks(), promote),
                                     lambda spec: stale(spec, groups, Dvc(root), instance), ran_before=bool(left))
        if current:
            print(f"\nup to date, not run (no new materialization): {', '.join(current)}", flush=True)
        print(f"\n=== {len(specs)} runs, each as its inputs are ready ===", flush=True)
        outcome = follower.run(specs)
    except KeyboardInterrupt:
        interrupted(server, instance, follower.run_ids)
        raise
    failed = [name for name, status in outcome.items() if status != dg.DagsterRunStatus.SUCCESS]
    if failed:
        print(f"\nThe pipeline did not finish: {', '.join(failed)} did not succeed; see the lines marked FAILED "
              "above (the whole run log: `dagster dev`, Runs).", file=sys.stderr)
        return 1
    return 0


def interrupted(server: DagsterServer, instance: dg.DagsterInstance, run_ids: list[str]) -> None:
    """Ctrl-C: stop ``dagster dev`` and every process under it, and mark the runs it left unfinished canceled."""
    import psutil

    children = psutil.Process().children(recursive=True)
    server.stop()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    for run_id in recovery.cancel_unfinished(instance, run_ids, "interrupted (Ctrl-C in the main command)"):
        print(f"run {run_id} canceled", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-promote", action="store_true", help="leave the registry's champion alias alone")
    args = parser.parse_args(argv)
    root = project_root()
    os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    home = Path(os.environ["DAGSTER_HOME"])
    try:
        load_pipeline(root)  # dvc.yaml and params.yaml, checked before anything runs
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = team.before_run(root)
    if note:
        print(note, flush=True)
    instance = prepare_instance(home)
    print(set_pool_limit(instance), flush=True)
    prepare_mlflow(root)
    start = time.monotonic()
    left = recovery.unfinished_runs(instance)  # before the daemon starts and fails the dead ones
    server = DagsterServer(root, home)
    try:
        server.start()
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Dagster: {server.url} (this command's runs, live; its log: {server.log_path})", flush=True)
    try:
        code = run_chain(server, instance, root, promote=not args.no_promote, left=left)
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 1
    finally:
        server.stop()
    if code:
        print(f"The pipeline stopped after {time.monotonic() - start:.0f} s.", file=sys.stderr)
        return code
    print(summary(root))
    print(f"\nWhole chain done in {time.monotonic() - start:.0f} s.")
    note = team.after_run(root)
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the runs were stopped and marked canceled
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
