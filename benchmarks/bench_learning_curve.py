"""When does a set's shape appear? Consistency of every checkpoint of one training run, against images seen.

The judge is the one of ``bench_learning.py``: held-out sets of the same procedural MIS, K = 4 preceding
images, 4 generated images per set with DDIM 20 at the model's own guidance scale, the generator's detector
with its thresholds; palette, shape, texture and their mean (the score). A checkpoint is scored with the
weights the run would save at that step (its EMA weights when the run keeps an EMA).

Scores are kept per checkpoint in ``results/learning_curve_<variant>.json``: a rerun scores only the
checkpoints it has not seen (a run still training can be scored as it goes), and those scored before the
shape fits (diagnostic columns: the objects' IoU with their set's shape, and with the best-fitting shape of
any kind) while they still exist; rows of
checkpoints the run has since deleted are kept. Writes
``results/learning_curve.png`` and the "Learning curve" section of ``RESULTS.md``. A pilot (a run from
an ``m2m init --unet-config`` folder, say) is scored under ``--label NAME``: ``learning_curve_NAME.json``
and ``.png`` and a section of its own, so the main curve stays as it is.

    m2m train --variant dino --data assets/bench/learning/mis --out assets/bench/long/m2m-dino ...  # README
    python benchmarks/bench_learning_curve.py --checkpoints assets/bench/long/m2m-dino.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from learning.common import PRECEDING, mean_rows, offline_on_cpu, precision_stretches, train_command
from learning.control import CONTROL
from learning.report import ATTRIBUTES, RESULTS, run_header, save_atomic, save_json, write_section
from m2m.data.procedural_detect import MIN_SHAPE_FIT

SECTION = "## Learning curve"
VARIANT_NAMES = {"self": "M2M-Self", "dino": "M2M-DINO", CONTROL.name: CONTROL.display_name}
FIT_COLUMNS = ("shape_fit", "any_shape_fit", "kind_contrast")


def checkpoint_pipeline(folder: Path):
    """The pipeline a run would save at this checkpoint: the preset's model with the checkpoint's weights."""
    from safetensors.torch import load_file

    from m2m.build import build_pipeline
    from m2m.training.checkpoint import read_trainer_state

    settings = read_trainer_state(folder)["settings"]
    if settings.get("task"):
        raise ValueError(f"{folder}: a fine-tuning checkpoint; this curve is for pre-training runs")
    if settings.get("init"):  # pre-training from a folder: its architecture (m2m init --unet-config)
        from m2m.pipeline import M2MPipeline

        pipe = M2MPipeline.from_pretrained(settings["init"], dtype=torch.float32)
    else:
        pipe = build_pipeline(settings["preset"], settings["variant"], seed=settings["seed"])
    weights = folder / ("ema.safetensors" if settings.get("ema") else "model.safetensors")
    state = load_file(weights)
    missing, unexpected = pipe.unet.load_state_dict(state, strict=False)
    params = {name for name, _ in pipe.unet.named_parameters()}
    if unexpected or params & set(missing):
        raise ValueError(f"{weights}: does not fit the {settings['preset']} M2M-{settings['variant']} UNet")
    return pipe, settings


def score_checkpoint(folder: Path, mis: Path, args) -> dict:
    from m2m.evaluation.consistency import set_shape_fits
    from m2m.evaluation.evaluate import generate_continuations, preceding_images, set_consistency_per_position
    from m2m.evaluation.image_sets import read_mis_eval_sets
    from m2m.training.checkpoint import read_trainer_state

    pipe, settings = checkpoint_pipeline(folder)
    pipe.to(getattr(args, "device", "cpu"))  # float32 on either; the noise comes from CPU generators
    state = read_trainer_state(folder)
    sets, _ = read_mis_eval_sets(mis, "test", PRECEDING, pipe.image_size, args.sets)
    context, references = preceding_images(sets, PRECEDING), [s.attributes for s in sets]
    guidance = getattr(args, "guidance_scale", None)  # None: the model's own s
    generated = generate_continuations(pipe, context, args.generate, PRECEDING, args.steps, guidance, args.seed, 16)
    row = mean_rows(set_consistency_per_position(generated, references))
    per_image = [references[s] for s in range(generated.shape[0]) for _ in range(generated.shape[1])]
    row.update(set_shape_fits(generated.flatten(0, 1) * 2 - 1, per_image))
    images = state["step"] * settings["batch_size"] * settings["n_images"]
    return {"checkpoint": folder.name, "step": state["step"], "images_seen": images,
            "train_hours": state["train_s"] / 3600, **row}


def run_command(state: dict) -> str:
    """The ``m2m train`` command of a run from its newest checkpoint's trainer state: the MIS it trained on
    (which need not be the one its held-out sets are scored on) and the precision of its last stretch."""
    precision = state.get("precision", [])  # [first step, precision] of each stretch, where recorded
    return train_command({**state["settings"], "mixed_precision": precision[-1][1] if precision else None})


def lacks_per_kind(row: dict) -> bool:
    """Scored before the fit per kind, or (sets of several kinds) before the kind contrast."""
    return "shape_fit_by_kind" not in row or (len(row["shape_fit_by_kind"]) > 1 and "kind_contrast" not in row)


def reference_fits(mis: Path, sets: int, size: int = 32) -> dict[str, float]:
    """The shape fit of the held-out sets' own preceding images (what drawing the set's shape cleanly
    scores), of the same images blurred by 2 px (rounded edges: the detector accepts the shape of
    about 3 in 10 of them) and of every other shape kind on them (a clean object of the wrong kind); and
    the kind contrast of those images, where the sets have several kinds."""
    from PIL import ImageFilter

    from m2m.evaluation.consistency import kind_contrast, object_shape_fits
    from m2m.evaluation.image_sets import read_mis_eval_sets

    real, _ = read_mis_eval_sets(mis, "test", PRECEDING, size, sets)
    images = [(image, s.attributes["shape"]) for s in real for image in s.images]
    fits = [object_shape_fits(image) for image, _ in images]
    blurred = [object_shape_fits(image.filter(ImageFilter.GaussianBlur(2.0)))[shape] for image, shape in images]
    other = [v for fit, (_, shape) in zip(fits, images) for kind, v in fit.items() if kind != shape]
    own = [fit[shape] for fit, (_, shape) in zip(fits, images)]
    fitted = {"held-out images": float(sum(own) / len(own)), "blurred by 2 px": float(sum(blurred) / len(blurred)),
              "another shape kind": float(sum(other) / len(other))}
    kinds = [shape for _, shape in images]
    return {**fitted, "kind contrast": kind_contrast(fits, kinds)} if len(set(kinds)) > 1 else fitted


def plot(curves: dict[str, list[dict]], name: str = "learning_curve.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 3.5), squeeze=False)
    for ax, (variant, rows) in zip(axes[0], curves.items()):
        seen = [r["images_seen"] / 1000 for r in rows]
        for key in (*ATTRIBUTES, "score"):
            ax.plot(seen, [r[key] for r in rows], marker="o", label=key, linewidth=2 if key == "score" else 1)
        fitted = [(x, r["shape_fit"]) for x, r in zip(seen, rows) if "shape_fit" in r]
        if fitted:
            ax.plot(*zip(*fitted), marker="x", linestyle="--", color="grey", label="shape fit (IoU)")
            ax.axhline(MIN_SHAPE_FIT, color="grey", linewidth=0.5, linestyle=":")
        drawn = [(x, r["any_shape_fit"]) for x, r in zip(seen, rows) if "any_shape_fit" in r]
        if drawn:
            ax.plot(*zip(*drawn), marker="+", linestyle=":", color="black", label="any-shape fit (IoU)")
        contrasted = [(x, r["kind_contrast"]) for x, r in zip(seen, rows) if "kind_contrast" in r]
        if contrasted:
            ax.plot(*zip(*contrasted), marker="^", linestyle="-.", color="purple", label="kind contrast")
        ax.set(title=VARIANT_NAMES[variant], xlabel="training images seen (thousands)", ylabel="consistency",
               ylim=(-0.05, 1.02))  # room below 0 for the kind contrast
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = RESULTS / name
    save_atomic(fig, path)
    plt.close(fig)
    return path


def guidance_note(scale: float | None) -> str:
    """``, s = 2`` where the curve was scored at a guidance scale other than each model's own."""
    return "" if scale is None else f", guidance s = {scale:g} instead of the model's own"


def section(report: dict, heading: str = SECTION, stem: str = "learning_curve") -> str:
    raw = "results/learning_curve_<variant>.json" if stem == "learning_curve" else f"results/{stem}.json"
    if stem != "learning_curve" and len(report["runs"]) > 1:
        raw = f"results/{stem}-<variant>.json"
    lines = [heading, "", f"`python benchmarks/bench_learning_curve.py {report['settings']['argv']}` on "
             f"{report['machine']}: every checkpoint of each run, scored on {report['settings']['sets']} held-out "
             f"sets x {report['settings']['generate']} generated images (K = 4, DDIM {report['settings']['steps']}"
             f"{guidance_note(report['settings'].get('guidance_scale'))}; "
             f"the judge of the proof of learning). Raw numbers: `{raw}`.", ""]
    for variant, run in report["runs"].items():
        lines += [f"{VARIANT_NAMES[variant]}, trained by `{run['command']}`{precision_note(run)}:", "",
                  "| step | images seen | CPU hours | palette | shape | texture | score | shape fit | any-shape fit "
                  "| kind contrast |", "|---" * 10 + "|"]
        lines += [f"| {r['step']} | {r['images_seen']:,} | {r['train_hours']:.2f} | "
                  + " | ".join(f"{r[k]:.2f}" for k in (*ATTRIBUTES, "score"))
                  + "".join(f" | {r[k]:.2f}" if k in r else " | -" for k in FIT_COLUMNS) + " |"
                  for r in run["rows"]]
        last = run["rows"][-1]
        if "shape_fit_by_kind" in last:
            kinds = ", ".join(f"{kind} {fit:.2f}" for kind, fit in last["shape_fit_by_kind"].items())
            lines += ["", f"Shape fit by the set's shape kind at step {last['step']}: {kinds}."]
        lines.append("")
    reference = ", ".join(f"{name} {value:.2f}" for name, value in report.get("reference_fits", {}).items())
    lines += [f"Shape fit: the generated objects' area-weighted IoU with their set's shape (the detector's own "
              f"fit, a diagnostic beside the score); the detector accepts a shape from {MIN_SHAPE_FIT}. Any-shape "
              "fit: the same IoU with whichever shape kind fits the objects best (is a clean shape drawn at all, "
              "the set's or another?). Kind contrast (sets of several kinds): the fit to each kind of the objects "
              "in that kind's sets minus their fit to it in the other sets, averaged over the kinds (0: the same "
              "objects whatever the set's kind). `-`: scored before the column existed, or one kind."
              + (f" The same fit on the held-out sets' preceding images: {reference}." if reference else ""), "",
              f"![consistency of each checkpoint against images seen](results/{stem}.png)", ""]
    return "\n".join(lines)


def precision_note(run: dict) -> str:
    """Which steps of a run ran in which ``--mixed-precision``, where a resumed run changed it."""
    said = precision_stretches(run.get("precision"))
    return f" ({said})" if said else ""


def results_name(label: str | None, variant: str, runs: int) -> str:
    """The results file of one run: its variant, or the pilot's label (with the variant when the label
    names several runs)."""
    if label is None:
        return variant
    return label if runs == 1 else f"{label}-{variant}"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True, help="<out>.ckpt folders of runs")
    parser.add_argument("--data", type=Path, default=Path("assets/bench/learning/mis"), help="the runs' MIS")
    parser.add_argument("--sets", type=int, default=32, help="held-out sets scored")
    parser.add_argument("--generate", type=int, default=4, help="images generated per set")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="s of eq. 6 for every checkpoint (default: each model's own, 1 for tiny)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu",
                        help="where checkpoints generate (default cpu; cuda on a GPU machine, float32 on both)")
    parser.add_argument("--label", help="a pilot's name: its own results file, plot and RESULTS.md section")
    args = parser.parse_args(argv)
    if args.label is not None and not args.label.replace("-", "").isalnum():
        parser.error(f"--label: letters, digits and dashes only, got {args.label!r}")
    if args.sets < 2 or args.generate < 1 or args.steps < 1:
        parser.error("--sets must be >= 2; --generate and --steps >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from m2m.training.checkpoint import list_checkpoints, read_trainer_state

    args = parse_args(argv)
    offline_on_cpu(args.threads)
    runs = {}
    found_in = {root: list_checkpoints(root) for root in args.checkpoints}
    for root, found in found_in.items():
        if not found:
            raise SystemExit(f"{root}: no complete checkpoints")
    variants = {root: read_trainer_state(found[0])["settings"]["variant"] for root, found in found_in.items()}
    if len(set(variants.values())) < len(variants):
        raise SystemExit("--checkpoints: two runs of one variant; score each with its own --label")
    for root, variant in variants.items():
        found = found_in[root]
        cache = RESULTS / f"learning_curve_{results_name(args.label, variant, len(variants))}.json"
        protocol = {k: getattr(args, k) for k in ("sets", "generate", "steps", "seed")}
        if args.guidance_scale is not None:  # runs scored at their own s keep the protocol they were scored with
            protocol["guidance_scale"] = args.guidance_scale
        old = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
        same = old.get("protocol") == protocol and old.get("checkpoints") == str(root)
        done = {r["checkpoint"]: r for r in old.get("rows", [])} if same else {}
        for folder in found:
            row = done.get(folder.name, {})
            # not scored yet, or before the fits; the newest checkpoint also before the fit per kind
            if "any_shape_fit" not in row or (folder == found[-1] and lacks_per_kind(row)):
                start = time.perf_counter()
                done[folder.name] = score_checkpoint(folder, args.data, args)
                print(f"{variant} {folder.name}: score {done[folder.name]['score']:.2f} "
                      f"(shape {done[folder.name]['shape']:.2f}) in {time.perf_counter() - start:.0f} s", flush=True)
        rows = sorted(done.values(), key=lambda row: row["step"])  # a run keeps its newest checkpoints only
        state = read_trainer_state(found[-1])
        precision = state.get("precision", [])  # [first step, precision] of each stretch, where recorded
        command = run_command(state)
        runs[variant] = {"checkpoints": str(root), "protocol": protocol, "command": command, "rows": rows,
                         "precision": precision}
        if args.device != "cpu":
            runs[variant]["scored_on"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
        save_json({**runs[variant]}, cache.name)
    report = {**run_header(args, argv), "runs": runs, "reference_fits": reference_fits(args.data, args.sets)}
    stem = f"learning_curve_{args.label}" if args.label else "learning_curve"
    heading = f"{SECTION}: {args.label}" if args.label else SECTION
    plot({v: r["rows"] for v, r in runs.items()}, f"{stem}.png")
    write_section(section(report, heading, stem), heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
