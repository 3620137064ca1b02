"""Two pre-trainings side by side: the ``gpu`` pool at limit 1 against limit 2, on this machine's CPU.

The main command's own machinery on a throw-away copy of the project (tiny preset): ``dagster dev`` for
the benchmark's length, the runs submitted as the main command submits them (``orchestration/runs``).
First the inputs (captions, shards, data), then for each pool limit the two pre-training runs
(M2M-Self and M2M-DINO, submitted together) with a fresh ``pretrain.seed`` so both train again.
Each heavy step leases its device (``orchestration/runs/devices.py``): at limit 1 the CPU is one
device with every core, at limit 2 two devices of half the cores each (one thread each on 2 cores).

Reported per limit, from the runs' own event logs: the train stage's wall time (first pre-training
step's start to the last one's end), how long the two steps overlapped, and the device each one said
it ran on; the ratio of the two wall times.

Writes ``results/pool_overlap.json`` and the "Two trainings at once" section of ``RESULTS.md``.

    python benchmarks/bench_pool_overlap.py              # about 5 minutes on 2 quiet cores
    python benchmarks/bench_pool_overlap.py --steps 20 --no-write
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from learning.report import run_header, save_json, write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## Two trainings at once: the gpu pool on CPU"
TRAININGS = ("m2m_self_pretrained", "m2m_dino_pretrained")


def step_span(instance, run_id: str, step: str) -> tuple[float, float, str]:
    """When ``step`` of the run started and ended, and the device its log says it ran on."""
    import dagster as dg

    start = end = None
    device = "?"
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            if entry.user_message.startswith(f"{step}: on "):
                device = entry.user_message.split(": on ", 1)[1]
            continue
        if event.step_key == step and event.event_type == dg.DagsterEventType.STEP_START:
            start = entry.timestamp
        if event.step_key == step and event.event_type in (dg.DagsterEventType.STEP_SUCCESS,
                                                           dg.DagsterEventType.STEP_FAILURE):
            end = entry.timestamp
    if start is None or end is None:
        raise RuntimeError(f"run {run_id}: step {step} has no start or end in the event log")
    return start, end, device


def measure(root: Path, limit: int, seed: int, server, instance, follower, specs) -> dict:
    """The two pre-trainings at pool ``limit`` (trained with ``pretrain.seed`` = ``seed``)."""
    import dagster as dg

    from orchestration.runs import pool
    from tests.orchestration.projects import set_param

    set_param(root, "pretrain.seed", seed)
    instance.event_log_storage.set_concurrency_slots(pool.POOL, limit)
    runs = [follower.submit(spec) for spec in specs]
    follower.wait_for({})
    spans = {}
    for spec, followed in zip(specs, runs):
        run = instance.get_run_by_id(followed.run_id)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            raise RuntimeError(f"limit {limit}: {spec.key} ended {run.status.value}")
        spans[spec.key] = step_span(instance, followed.run_id, spec.key)
    (a0, a1, _), (b0, b1, _) = spans.values()
    return {
        "limit": limit,
        "wall_s": max(a1, b1) - min(a0, b0),
        "overlap_s": max(0.0, min(a1, b1) - max(a0, b0)),
        "steps": {name: {"start": s, "end": e, "seconds": e - s, "device": d} for name, (s, e, d) in spans.items()},
    }


def section(report: dict) -> str:
    rows = report["rows"]
    lines = [
        SECTION, "",
        f"`{' '.join(['python benchmarks/bench_pool_overlap.py', report['settings']['argv']]).strip()}`",
        f"({report['machine']}). The two pre-training runs of the tiny preset ({report['settings']['steps']} steps of "
        f"{report['settings']['batch_size']} sets each) submitted together through the project's Dagster instance, "
        "at each pool limit; times from the runs' event logs.", "",
        "| gpu pool limit | train stage wall time | overlap | M2M-Self | M2M-DINO |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        steps = row["steps"]
        cells = [f"{steps[name]['seconds']:.0f} s on {steps[name]['device']}" for name in TRAININGS]
        lines.append(f"| {row['limit']} | {row['wall_s']:.0f} s | {row['overlap_s']:.0f} s | {cells[0]} | {cells[1]} |")
    one, two = rows[0]["wall_s"], rows[-1]["wall_s"]
    slower = {name: rows[-1]["steps"][name]["seconds"] / rows[0]["steps"][name]["seconds"] for name in TRAININGS}
    lines += ["", f"Limit 2 against limit 1: the train stage takes **{two / one:.2f}x** the time "
              f"({one / two:.2f}x faster); the two trainings overlap for {rows[-1]['overlap_s']:.0f} s. Each "
              f"training is slower on half the cores (M2M-Self {slower[TRAININGS[0]]:.2f}x, M2M-DINO "
              f"{slower[TRAININGS[1]]:.2f}x its time on all of them): the gain is the overlap less that. On a "
              "machine with a GPU per slot nothing is shared and the stage takes the longer training's time.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="pre-training steps of each model (default 60)")
    parser.add_argument("--batch-size", type=int, default=4, help="sets per step (default 4)")
    parser.add_argument("--keep", action="store_true", help="keep the project copy (its path is printed)")
    parser.add_argument("--no-write", action="store_true", help="print the table only (no results, no RESULTS.md)")
    args = parser.parse_args(argv)

    from orchestration import pipeline
    from orchestration.dvc.stages import load_pipeline
    from orchestration.runs import plan
    from orchestration.runs.follow import Follower
    from orchestration.runs.server import DagsterServer
    from tests.orchestration.projects import TINY_TEST_PARAMS, make_project, merge, project_env

    folder = Path(tempfile.mkdtemp(prefix="m2m-pool-"))
    params = merge(TINY_TEST_PARAMS, {"pretrain": {"steps": args.steps, "batch_size": args.batch_size,
                                                   "checkpoint_every": 0}})
    root = make_project(folder / "project", params)
    os.environ.update(project_env(root))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    home = root / ".dagster"
    instance = pipeline.prepare_instance(home)
    server = DagsterServer(root, home)
    server.start()
    try:
        follower = Follower(server, instance)
        jobs = {"prepare": "prepare_captions", "shards": "generate_mis_shards", "train": "train_and_evaluate",
                "promote": "promote_champion"}
        specs = plan.plan(load_pipeline(root), jobs, pipeline.train_job_checks(), promote=False)
        trainings = [spec for spec in specs if spec.key in TRAININGS]
        inputs = [spec for spec in specs if spec.assets is None or spec.key == plan.DATA]  # captions, shards, data
        print(f"inputs: {[spec.key for spec in inputs]}", flush=True)
        outcome = follower.run(inputs)
        failed = [key for key, status in outcome.items() if status is None or status.value != "SUCCESS"]
        if failed:
            raise RuntimeError(f"the inputs did not materialize: {failed}")
        independent = [plan.RunSpec(s.key, s.job, s.assets, s.partition, (), s.checks) for s in trainings]
        rows = [measure(root, limit, seed, server, instance, follower, independent)
                for seed, limit in enumerate((1, 2), start=1)]
    finally:
        server.stop()
    report = {**run_header(args, argv), "rows": rows,
              "ratio_limit2_over_limit1": rows[1]["wall_s"] / rows[0]["wall_s"]}
    text = section(report)
    print(text)
    if not args.no_write:
        save_json(report, "pool_overlap.json")
        write_section(text, SECTION)
    if args.keep:
        print(f"project kept: {root}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
