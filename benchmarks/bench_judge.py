"""Score models with the judge: balanced held-out sets, bootstrap 95% intervals, s = 1 and s = 2.

Every model continues the same held-out sets of one protocol (``six-kind``: every shape kind, palette and
texture; ``two-kind``: circles and squares; ``kind-only``: circles and squares, one palette, plain
background), each set in as many sets as every other value (``learning/judge.py`` says why). A model is a
saved pipeline folder (``models/tiny-m2m-dino``) or a training run's ``<out>.ckpt`` folder, scored with
its newest checkpoint's weights. The held-out sets' own next images are scored beside them: what a model
that continues every set perfectly would get.

Writes ``results/judge_<label>.json`` and the "Judge: <label>" section of ``RESULTS.md`` (dated).

    python benchmarks/bench_judge.py --protocol six-kind --models models/tiny-m2m-dino models/tiny-m2m-self \\
        --label shipped
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import learning.control  # noqa: F401 - the control variant, whose saved models name this module
from learning.common import load, offline_on_cpu
from learning.judge import (
    GUIDANCE_SCALES, MIN_SETS, PROTOCOLS, RESAMPLES, SCORED,
    heldout_mis, heldout_root, interval, judge, judge_images, read_heldout,
)
from learning.report import RESULTS, run_header, save_json, write_section

COLUMNS = (*SCORED, "score", "kind_contrast")


def pipeline_of(folder: Path, device: str):
    """A saved pipeline folder, or a run's checkpoints folder (its newest checkpoint), on ``device``."""
    from m2m.training.checkpoint import list_checkpoints

    if folder.name.endswith(".ckpt"):
        from bench_learning_curve import checkpoint_pipeline

        found = list_checkpoints(folder)
        if not found:
            raise SystemExit(f"{folder}: no complete checkpoints")
        pipe, _ = checkpoint_pipeline(found[-1])
        return pipe.to(device), found[-1].name
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"{folder}: neither a pipeline folder (model_index.json) nor a run's .ckpt folder")
    return load(folder).to(device), None


def scored_before(path: Path, protocol: dict) -> dict[str, dict]:
    """Rows of ``path`` (an earlier run of the label) scored under the same protocol; {} otherwise."""
    import json

    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return old.get("rows", {}) if old.get("protocol") == protocol else {}


def table(rows: dict[str, dict]) -> list[str]:
    """One row per model and s: every number with its interval (``-``: one shape kind, no contrast)."""
    header = "| model | s | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for name, by_scale in rows.items():
        for scale, numbers in by_scale.items():
            cells = [interval(numbers[c]) if c in numbers else "-" for c in COLUMNS]
            lines.append(f"| {name} | {scale.removeprefix('s = ')} | " + " | ".join(cells) + " |")
    return lines


def section(report: dict, heading: str) -> str:
    a = report["settings"]
    held = report["heldout"]
    return "\n".join([
        heading, "",
        f"`python benchmarks/bench_judge.py {a['argv']}` on {report['machine']}, {report['date']} "
        f"({report['minutes']:.0f} min): the {a['protocol']} protocol's {held['sets']} balanced held-out sets "
        f"({held['per_value']}), K = 4 preceding images, {a['generate']} generated per set, DDIM {a['steps']}"
        f"{' (' + a['timestep_spacing'] + ' spacing)' if a.get('timestep_spacing') else ''}, "
        f"the detector's thresholds; each number with its bootstrap 95% interval ({report['resamples']} "
        "resamples of the sets within their shape kind). Raw numbers: "
        f"`results/judge_{a['label']}.json`; why the judge is so: docs/evaluation.md.", "",
        *table(report["rows"]), "",
    ])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True,
                        help="pipeline folders or <out>.ckpt folders of training runs")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="six-kind")
    parser.add_argument("--label", required=True, help="names the results file and the RESULTS.md section")
    parser.add_argument("--sets", type=int, default=MIN_SETS,
                        help=f"at least this many held-out sets (>= {MIN_SETS}; rounded up to a balanced count)")
    parser.add_argument("--generate", type=int, default=4, help="images generated per set")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--timestep-spacing", choices=("leading", "trailing", "linspace"), default=None,
                        help="DDIM's timestep spacing (default: each model's scheduler config; the tiny models' "
                        "is leading)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=list(GUIDANCE_SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--workers", type=int, default=1, help="processes that run the detector")
    parser.add_argument("--work", type=Path, default=Path("assets/bench/judge"), help="the held-out MIS")
    parser.add_argument("--smoke", action="store_true",
                        help="a check that the code runs: --sets may be below the bar, and no RESULTS.md section")
    args = parser.parse_args(argv)
    if not args.label.replace("-", "").isalnum():
        parser.error(f"--label: letters, digits and dashes only, got {args.label!r}")
    if args.sets < (2 if args.smoke else MIN_SETS):
        parser.error(f"--sets: at least {MIN_SETS}, the judge's bar (a --smoke run: 2)")
    if args.generate < 1 or args.steps < 1:
        parser.error("--generate and --steps: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_on_cpu(args.threads)
    start = time.perf_counter()
    protocol = PROTOCOLS[args.protocol]
    n_sets = protocol.set_count(args.sets)
    mis = heldout_mis(heldout_root(args.work, protocol, n_sets), protocol, n_sets, args.seed)
    protocol_settings = {k: getattr(args, k) for k in ("protocol", "generate", "steps", "guidance_scales", "seed")}
    protocol_settings["sets"] = n_sets
    if args.timestep_spacing:  # a sampler setting: rows sampled otherwise are not reused
        protocol_settings["timestep_spacing"] = args.timestep_spacing
    done = scored_before(RESULTS / f"judge_{args.label}.json", protocol_settings)
    held = read_heldout(mis, 32, args.generate)  # the tiny preset's 32 px; another size is refused below
    ceiling = "held-out images (the ceiling)"
    rows = {ceiling: done.get(ceiling) or {"s = -": judge_images(held.following, held.attributes, args.seed,
                                                                   args.workers)}}
    per_value = ", ".join(f"{n_sets // len(v)} of each {a}" for a, v in protocol.values().items())
    report = {**run_header(args, argv), "protocol": protocol_settings, "date": datetime.date.today().isoformat(),
              "resamples": RESAMPLES, "heldout": {"mis": str(mis), "sets": n_sets, "per_value": per_value},
              "rows": rows, "checkpoints": {}}
    for folder in args.models:
        pipe, checkpoint = pipeline_of(folder, args.device)
        if args.timestep_spacing:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                              timestep_spacing=args.timestep_spacing)
        if pipe.image_size != 32:
            raise SystemExit(f"{folder}: {pipe.image_size} px images; the judge's held-out sets are 32 px")
        name = folder.name + (f" ({checkpoint})" if checkpoint else "")
        report["checkpoints"][name] = checkpoint
        rows[name] = done.get(name) or judge(pipe, held, args.generate, args.steps, args.seed, args.batch_size,
                                             args.guidance_scales, args.workers)
        report["minutes"] = (time.perf_counter() - start) / 60
        save_json(report, f"judge_{args.label}.json")  # after every model: a rerun resumes, a stop keeps it
        if not args.smoke:
            write_section(section(report, f"## Judge: {args.label}"), f"## Judge: {args.label}")
        print(f"{name}: " + "; ".join(f"{s} score {interval(n['score'])}" for s, n in rows[name].items()), flush=True)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
