"""Task fine-tuning on the default preset: does tiny M2M follow its task condition (paper section 6.2, 8.5)?

The novel-view fixture renders each object from 12 cameras round an orbit; the procedure fixture fills a
shape from the bottom up in 6 steps. Both keep their attributes, so the fixtures' detectors score a
generated image exactly: novel views by palette (object) and the nearest true view (rotation, within 15
degrees of the asked camera), procedures by palette, shape and fill level (progress).

1. Each pre-trained model (``--pretrained``, the shipped ``models/tiny-m2m-*`` by default) is fine-tuned on
   both fixtures for ``--minutes`` (steps sized by a timed calibration, so they depend on how busy the cores
   are) or for exactly ``--train-steps``, reading random subsets of each item's images (``--task-sample``).
2. On held-out objects / methods, views 1, 3, 6, 9 after view 0 and steps 3-6 after steps 1-2 are
   generated one after another (sequence) and each from the real context alone (jump), with the condition
   (s_C = 1 in eq. 7) and with it ignored (s_C = 0), next to the model before fine-tuning and chance.

Writes ``benchmarks/results/tasks_<M>min.json``, ``tasks_<M>min_<variant>_<task>.png`` (context | jump with the
condition | jump without | the true targets) and the "Task fine-tuning, M minutes per task" section of
``benchmarks/RESULTS.md`` (``tasks_<S>steps`` and "S steps per task" with ``--train-steps``): runs with other
budgets keep their own results.

    python benchmarks/bench_tasks.py                          # about 35 minutes on 2 CPU cores
    python benchmarks/bench_tasks.py --variants dino --tasks procedure --minutes 3   # a quicker look
    python benchmarks/bench_tasks.py --variants dino --tasks procedure --train-steps 3000   # the same steps anywhere
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from learning.common import load, offline_on_cpu, train_for
from learning.report import RESULTS, labelled_grid, run_header, save_atomic, save_json, table, write_section
from learning.tasks import PROTOCOLS, TASKS, chance, continue_items, fixtures, heldout_items, score
from m2m.models.context import context_encoder
from m2m.training.config import TASK_SAMPLES

CLEAR_MARGIN = 0.10  # points of the condition's attribute, jump with vs without the condition
VARIANT_NAMES = {name: context_encoder(name).display_name for name in ("self", "dino")}
WITH, WITHOUT, BEFORE = "fine-tuned, condition (s_C = 1)", "fine-tuned, condition ignored (s_C = 0)", "not fine-tuned"


def budget(settings) -> tuple[float, str]:
    """A run's fine-tuning budget per task: ``(--train-steps, "steps")`` or ``(--minutes, "minutes")``."""
    if isinstance(settings, dict):
        settings = argparse.Namespace(**settings)
    steps = getattr(settings, "train_steps", None)  # runs from before the option have minutes only
    return (steps, "steps") if steps else (settings.minutes, "minutes")


def stem(settings) -> str:
    """Results of a run are named by its budget, so that runs with other budgets keep theirs."""
    amount, unit = budget(settings)
    return f"tasks_{amount:g}{'min' if unit == 'minutes' else 'steps'}"


def task_name(task: str) -> str:
    """What a task's protocols generate, from ``TASKS`` (views are numbered from 0, steps from 1)."""
    k, targets, _ = TASKS[task]
    name, what, first = ("Novel views", "views", 0) if task == "nvs" else ("Procedures", "steps", 1)

    def numbers(positions) -> str:
        return ", ".join(str(first + p) for p in positions)

    return f"{name} ({what} {numbers(targets)} from {what} {numbers(range(k))})"


def heading(settings) -> str:
    amount, unit = budget(settings)
    return f"## Task fine-tuning, {amount:g} {unit} per task"


def task_study(variant: str, task: str, args) -> dict:
    """Fine-tune one pre-trained variant on one task and score it under both protocols."""
    from m2m.training.config import TrainConfig

    pretrained = args.pretrained / f"tiny-m2m-{variant}"
    train_root, heldout = fixtures(args.work, task, args.task_items, args.sets)
    config = TrainConfig(
        out=args.work / f"m2m-{variant}-{task}", variant=variant, data=None, init=pretrained, task=task,
        task_data=train_root, task_sample=args.task_sample, n_images=args.n_images, seed=args.seed, log_every=50,
    )
    amount, unit = budget(args)
    train_metrics = train_for(config, **{unit: amount}, reuse=args.reuse)
    tuned, before = load(config.out), load(pretrained)
    images, cond, attributes = heldout_items(task, heldout, args.sets, tuned.image_size)
    k, targets, _ = TASKS[task]
    result, generated = {"train": train_metrics}, {}
    for protocol in PROTOCOLS:
        rows = {}
        for name, pipe, s_C in ((WITH, tuned, 1.0), (WITHOUT, tuned, 0.0), (BEFORE, before, None)):
            generated[protocol, name] = continue_items(pipe, images, cond, k, targets, protocol, s_C, args)
            rows[name] = score(task, generated[protocol, name], images, cond, attributes, targets)
        rows["chance"] = chance(task, attributes)
        result[protocol] = rows
    picture = RESULTS / f"{stem(args)}_{variant}_{task}.png"
    columns = {
        "context": (images[:6, :k] + 1) / 2,
        "jump, s_C = 1": generated["jump", WITH][:6],
        "jump, s_C = 0": generated["jump", WITHOUT][:6],
        "true targets": (images[:6, list(targets)] + 1) / 2,
    }
    save_atomic(labelled_grid(columns, tuned.image_size), picture)
    result["picture"] = picture.name
    return result


def follows(result: dict, task: str) -> float:
    """Jump protocol: the condition's attribute with the condition minus without it."""
    attribute = TASKS[task][2]
    return result["jump"][WITH][attribute] - result["jump"][WITHOUT][attribute]


def section(report: dict) -> str:
    """The "Task fine-tuning" section of RESULTS.md for one run."""
    a = report["settings"]
    amount, unit = budget(a)
    lines = [
        heading(a),
        "",
        f"`{' '.join(['python benchmarks/bench_tasks.py', a['argv']]).strip()}` on {report['machine']} "
        f"({report['minutes_total']:.0f} min "
        f"in all): each pre-trained tiny model fine-tuned {amount:g} {unit} per task on {a['task_items']} "
        f"fixture items ({a['task_sample']}s of N = {a['n_images']} images), scored on {a['sets']} held-out items, "
        f"DDIM {a['steps']} steps. Sequence: targets one after another; jump: each target from the real context "
        "alone, where only the condition tells which view or step is asked for.",
        "",
    ]
    for variant, tasks in report["studies"].items():
        for task, result in tasks.items():
            gap, attribute = follows(result, task), TASKS[task][2]
            verdict = "follows its condition" if gap >= CLEAR_MARGIN else "does not follow its condition yet"
            lines.append(
                f"- **{VARIANT_NAMES[variant]}, {task}: {verdict}** — jump {attribute} "
                f"{result['jump'][WITH][attribute]:.2f} with it, {result['jump'][WITHOUT][attribute]:.2f} without "
                f"({gap:+.2f}; a clear margin is {CLEAR_MARGIN:.2f})."
            )
    lines.append("")
    for variant, tasks in report["studies"].items():
        lines += [f"### {VARIANT_NAMES[variant]}", ""]
        for task, result in tasks.items():
            t = result["train"]
            keys = [key for key in result["jump"]["chance"] if key != "score"] + ["score"]
            lines += [
                f"{task_name(task)}: fine-tuned {t['steps']} steps ({t['wall_time_s'] / 60:.1f} min, "
                f"final loss {t['final_loss']:.4f}).",
                "",
            ]
            for protocol in PROTOCOLS:
                lines += [*table(result[protocol], keys, protocol), ""]
            lines += [f"![{VARIANT_NAMES[variant]}, {task}: context | jump s_C = 1 | jump s_C = 0 | true targets]"
                      f"(results/{result['picture']})", ""]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", type=Path, default=Path("models"), help="folder of tiny-m2m-<variant>")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_NAMES), default=list(VARIANT_NAMES))
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--minutes", type=float, default=5.0, help="fine-tuning budget per task and variant (<= 15)")
    parser.add_argument("--train-steps", type=int, help="fine-tune exactly this many steps instead of --minutes")
    parser.add_argument("--task-sample", choices=TASK_SAMPLES, default="subset", help="m2m train --task-sample")
    parser.add_argument("--n-images", type=int, default=3, help="images N of a fine-tuning item (m2m train --n-images)")
    parser.add_argument("--task-items", type=int, default=64, help="objects / methods in each training fixture")
    parser.add_argument("--sets", type=int, default=32, help="held-out objects / methods scored")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=None, help="s_I of eq. 7; default: the model's own")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--work", type=Path, default=Path("assets/bench/tasks"), help="fixtures and models")
    parser.add_argument("--reuse", action="store_true", help="keep the fine-tuned models already in --work")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 15:
        parser.error("--minutes must be in (0, 15]")
    if args.train_steps is not None and args.train_steps < 1:
        parser.error(f"--train-steps must be at least 1, got {args.train_steps}")
    if args.sets < 2 or args.task_items < 1:
        parser.error("--sets must be >= 2 and --task-items >= 1")
    for variant in args.variants:
        if not (args.pretrained / f"tiny-m2m-{variant}" / "model_index.json").is_file():
            parser.error(f"--pretrained: {args.pretrained / f'tiny-m2m-{variant}'} is not a pipeline folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_on_cpu(args.threads)
    start = time.perf_counter()
    studies = {v: {t: task_study(v, t, args) for t in args.tasks} for v in args.variants}
    report = {**run_header(args, argv), "studies": studies, "minutes_total": (time.perf_counter() - start) / 60}
    save_json(report, f"{stem(args)}.json")
    write_section(section(report), heading(args))
    for variant, tasks in studies.items():
        for task, result in tasks.items():
            attribute = TASKS[task][2]
            print(f"{VARIANT_NAMES[variant]} {task}: jump {attribute} with/without the condition "
                  f"{result['jump'][WITH][attribute]:.2f}/{result['jump'][WITHOUT][attribute]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
