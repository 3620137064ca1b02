"""The main command: materialize the whole chain through Dagster, then say where to look.

    python -m orchestration.pipeline

Runs, in the project's Dagster instance (``DAGSTER_HOME``, default ``.dagster/``) so that they show
in ``dagster dev`` afterwards: the caption job, one run per MIS shard partition, the job that
trains and evaluates, and the promotion job. Each stage runs only when DVC says it changed, so a
second run is quick and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

from orchestration import recovery, team
from orchestration.command import INTERRUPTED
from orchestration.definitions import defs as load_defs
from orchestration.defs.jobs import PREPARE_JOB, SHARDS_JOB, TRAIN_JOB
from orchestration.defs.promotion import promote_champion
from orchestration.project import CODE_LOCATION, project_root
from orchestration.stages import PipelineError, load_pipeline

# The run log on the console: what the steps say (INFO), not every engine event (DEBUG).
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    """One line per failed step or check: the step and the failure's own description."""
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.event_specific_data
            user = getattr(data, "user_failure_data", None)
            message = (user.description if user and user.description else data.error.message).strip()
            lines.append(f"{event.step_key}: {message.splitlines()[-1] if message else 'failed'}")
    return lines


def code_location_tag() -> dict[str, str]:
    """The tag by which ``dagster dev`` lists a run on its job's page: ``__repository__@<code location>``.
    Runs started here are in-process and would otherwise carry no code location."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    return {REPOSITORY_LABEL_TAG: f"{SINGLETON_REPOSITORY_NAME}@{CODE_LOCATION}"}


def run_job(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    label: str,
    partition_key: str | None = None,
    run_config: dict | None = None,
) -> bool:
    print(f"\n=== {label} ===", flush=True)
    start = time.monotonic()
    result = job.execute_in_process(
        run_config=run_config or RUN_CONFIG, instance=instance, partition_key=partition_key, raise_on_error=False,
        tags={**recovery.owner_tags(), **code_location_tag()},
    )
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        ran = metadata.get("ran")
        state = "" if ran is None else " (ran)" if ran.value else " (up to date)"
        print(f"  materialized {event.asset_key.to_user_string()}{state}", flush=True)
    for evaluation in result.get_asset_check_evaluations():
        warn = evaluation.severity == dg.AssetCheckSeverity.WARN
        outcome = "passed" if evaluation.passed else "warning" if warn else "FAILED"
        print(f"  check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {outcome}"
              + ("" if evaluation.passed or not evaluation.description else f" ({evaluation.description})"))
    if not result.success:
        for line in failures(result) or [f"run {result.run_id} failed"]:
            print(f"  FAILED {line}", file=sys.stderr, flush=True)
        return False
    print(f"  done in {time.monotonic() - start:.0f} s (run {result.run_id})", flush=True)
    return True


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
    db = root / "mlflow" / "mlflow.db"
    lines += [
        "Sample grids: assets/models/*/samples.png, assets/eval/*/grid.png",
        "Open the UIs (both on 127.0.0.1):",
        f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev --host 127.0.0.1 --port 3000"
        "   -> http://127.0.0.1:3000",
        f"  .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1 --port 5000"
        "   -> http://127.0.0.1:5000",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-promote", action="store_true", help="leave the registry's champion alias alone")
    parser.add_argument(
        "--num-processes", type=int, metavar="N",
        help="training processes under accelerate launch (DDP; the compute resource's num_processes)",
    )
    args = parser.parse_args(argv)
    run_config = dict(RUN_CONFIG)
    if args.num_processes is not None:
        run_config["resources"] = {"compute": {"config": {"num_processes": args.num_processes}}}
    root = project_root()
    os.environ.setdefault("DAGSTER_HOME", str(root / ".dagster"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    try:
        load_pipeline(root)  # dvc.yaml and params.yaml, checked before anything runs
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = team.before_run(root)
    if note:
        print(note, flush=True)
    defs = load_defs()
    instance = dg.DagsterInstance.get()
    recovery.recover(instance, root)
    start = time.monotonic()
    shards = defs.resolve_job_def(SHARDS_JOB)
    keys = shards.partitions_def.get_partition_keys()
    steps = [(defs.resolve_job_def(PREPARE_JOB), "captions", None)]
    steps += [(shards, f"MIS shard {key} ({i + 1}/{len(keys)})", key) for i, key in enumerate(keys)]
    steps.append((defs.resolve_job_def(TRAIN_JOB), "dataset, task data, training, fine-tuning, evaluation", None))
    if not args.no_promote:
        steps.append((defs.resolve_job_def(promote_champion.name), "registry: promote challengers", None))
    for job, label, partition in steps:
        if not run_job(job, instance, label, partition, run_config):
            elapsed = time.monotonic() - start
            print(f"\nThe pipeline stopped after {elapsed:.0f} s; see the error above (the whole run log: "
                  "`dagster dev`, Runs).", file=sys.stderr)
            return 1
    print(summary(root))
    print(f"\nWhole chain done in {time.monotonic() - start:.0f} s.")
    note = team.after_run(root)
    if note:
        print(note)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the running command was stopped with the run
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
