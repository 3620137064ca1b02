"""Proof of learning on the default preset: does tiny M2M learn what the images of a set share?

Procedural MIS sets share a palette, a shape kind and a background texture (the structure of the paper's
MIS, section 4, made exact), and the generator's own detector reads those attributes back from any image.
So the consistency score — the share of generated images whose attributes match their set's — measures
exactly whether a model continues a set (chance: about 0.16 for a uniform guess).

1. A procedural MIS from the shipped CC12M-format sample captions (filter -> shards -> manifest, 20% test).
2. Tiny M2M-Self and M2M-DINO trained on it (eq. 5) for ``--minutes`` each.
3. On held-out test sets, K = 4 preceding images, the consistency of the next ``--generate`` images for:
   the trained model, its untrained initialisation, the trained model with the context zeroed (s = 0 in
   eq. 6 leaves the unconditional ε(z_t, 0, t)), and chance; then against K = 1..4 (section 8.2) and along
   a long generated sequence of ``--long`` images with W = 4 (does quality decay? section 9).
4. Each pre-trained model fine-tuned (section 6.2) on the novel-view and procedure fixtures for
   ``--task-minutes``, scored by the task consistency with its condition, with the condition ignored
   (s_C = 0 in eq. 7), without fine-tuning, and by chance.

Writes ``benchmarks/results/learning.json``, ``learning_<variant>.png`` (preceding | trained | init |
context zeroed), ``learning_curves.png`` and the "Proof of learning" section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_learning.py                  # about 15 minutes per variant on 1 CPU thread
    python benchmarks/bench_learning.py --minutes 15     # the longest budget
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Proof of learning"
TEST_PERCENT = 20
CALIBRATION_STEPS = 10
PRECEDING = 4
ATTRIBUTES = ("palette", "shape", "texture")
VARIANT_NAMES = {"self": "M2M-Self", "dino": "M2M-DINO"}
PROCEDURE_STEPS = 6  # steps per fixture method; the first 2 are the context
NVS_VIEWS = 12


# -- data and training ---------------------------------------------------------------------------


def build_mis(root: Path) -> Path:
    """A procedural MIS from the shipped sample captions; complete shards are kept on a rerun."""
    from m2m.data.captions import filter_captions
    from m2m.data.procedural import ProceduralGenerator
    from m2m.data.shards import build_manifest, write_shard
    from m2m.resources import resource_path

    sample = resource_path("cc12m_sample.tsv")
    report = filter_captions([sample], root / "captions.parquet", root / "filter_report.json")
    for shard in range(math.ceil(report["kept"] / 64)):
        write_shard(root / "captions.parquet", root / "shards", shard, ProceduralGenerator(32), samples_per_shard=64)
    build_manifest(root / "shards", root / "manifest.json", test_percent=TEST_PERCENT)
    return root


def train_for(config, minutes: float) -> dict:
    """Train for about ``minutes``: a short run measures seconds per step, then resuming from its checkpoint
    trains to the step count that fits (the same weights as one uninterrupted run of that length)."""
    from m2m.training.loop import train

    shutil.rmtree(config.checkpoints, ignore_errors=True)
    first = train(replace(config, steps=CALIBRATION_STEPS, checkpoint_every=CALIBRATION_STEPS))
    total = max(CALIBRATION_STEPS, round(minutes * 60 / first["s_per_step"]))
    if total == CALIBRATION_STEPS:
        return first
    return train(replace(config, steps=total, checkpoint_every=total, resume=True))


def load(folder: Path):
    from m2m.pipeline import M2MPipeline

    return M2MPipeline.from_pretrained(folder)


# -- scoring -------------------------------------------------------------------------------------


def mean_rows(rows: list[dict], keys=None) -> dict:
    """Per-key mean of per-position consistency rows."""
    keys = keys or [k for k in rows[0] if k != "n_images"]
    return {k: float(np.mean([row[k] for row in rows])) for k in keys}


def mis_pair_chance(references: list[dict]) -> dict:
    """Per-attribute chance that two different test sets share the attribute, and their mean."""
    chance = {a: pair_chance([r[a] for r in references]) for a in ATTRIBUTES}
    return {**chance, "score": float(np.mean(list(chance.values())))}


def mis_consistency(pipe, context, references, generate, guidance, args) -> tuple[list[dict], torch.Tensor]:
    """Consistency per generated position after ``context`` ``(S, K, 3, H, W)``, and the images."""
    from m2m.evaluation.evaluate import generate_continuations, set_consistency_per_position

    generated = generate_continuations(
        pipe, context, generate, PRECEDING, args.steps, guidance, args.seed, args.batch_size
    )
    return set_consistency_per_position(generated, references), generated


def learning_study(variant: str, mis: Path, work: Path, args) -> dict:
    """Train one variant on the MIS and score it against its init, the zeroed context and chance."""
    from m2m.evaluation.consistency import chance_level
    from m2m.evaluation.evaluate import preceding_images
    from m2m.evaluation.image_sets import read_mis_eval_sets
    from m2m.training.config import TrainConfig
    from m2m.training.loop import load_pipeline

    config = TrainConfig(out=work / f"m2m-{variant}", variant=variant, data=mis, seed=args.seed, log_every=50)
    start = time.perf_counter()
    train_metrics = train_for(config, args.minutes)
    trained, init = load(config.out), load_pipeline(config.resolved())
    sets, _ = read_mis_eval_sets(mis, "test", PRECEDING, trained.image_size, args.sets)
    context, references = preceding_images(sets, PRECEDING), [s.attributes for s in sets]
    m, s = args.generate, args.guidance_scale

    along, trained_images = mis_consistency(trained, context, references, max(args.long, m), s, args)
    init_rows, init_images = mis_consistency(init, context, references, m, s, args)
    zeroed_rows, zeroed_images = mis_consistency(trained, context, references, m, 0.0, args)
    by_k = {PRECEDING: mean_rows(along[:m])}
    for k in range(1, PRECEDING):
        by_k[k] = mean_rows(mis_consistency(trained, context[:, :k], references, m, s, args)[0])
    conditions = {
        "trained": mean_rows(along[:m]),
        "untrained init": mean_rows(init_rows),
        "trained, context zeroed (s = 0)": mean_rows(zeroed_rows),
        "chance (uniform guess)": mean_rows([chance_level()]),
        "chance (two test sets agree)": mis_pair_chance(references),
    }
    picture = RESULTS / f"learning_{variant}.png"
    columns = {"preceding": (context[:6] + 1) / 2, "trained": trained_images[:6, :m]}
    columns.update({"untrained init": init_images[:6], "context zeroed": zeroed_images[:6]})
    save_atomic(labelled_grid(columns, trained.image_size), picture)
    return {
        "variant": VARIANT_NAMES[variant],
        "train": {k: train_metrics[k] for k in ("steps", "final_loss", "loss_last_10pct", "s_per_step", "wall_time_s")},
        "test_sets": len(sets),
        "conditions": conditions,
        "by_preceding": {str(k): by_k[k] for k in sorted(by_k)},
        "by_position": [row["score"] for row in along],
        "picture": picture.name,
        "tasks": task_study(variant, config.out, work, args),
        "seconds": time.perf_counter() - start,
    }


# -- task fine-tuning (section 6.2) ----------------------------------------------------------------


def fixtures(work: Path, args) -> dict:
    """Training and held-out fixtures for both tasks (held-out objects/methods come from another seed)."""
    from m2m.data.tasks_nvs import write_nvs_fixture
    from m2m.data.tasks_procedure import write_procedure_fixture

    roots = {}
    for task, write, extra in (
        ("nvs", write_nvs_fixture, {}),
        ("procedure", write_procedure_fixture, {"n_steps": PROCEDURE_STEPS}),
    ):
        roots[task] = work / "tasks" / task, work / "tasks" / f"{task}-heldout"
        if not roots[task][0].is_dir():
            write(roots[task][0], args.task_items, seed=0, **extra)
        if not roots[task][1].is_dir():
            write(roots[task][1], args.sets, seed=1, **extra)
    return roots


def pair_chance(values: list) -> float:
    """Probability that two different items of ``values`` agree: ``sum_v c_v (c_v - 1) / (n (n - 1))``.

    What a model that ignores its context but draws attributes as often as the data has them would score.
    """
    _, counts = np.unique(np.asarray(values), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def nvs_scores(pipe, heldout: Path, args, s_C: float | None) -> dict:
    """Novel views from one view (Fig. 7): views 1..M generated after view 0, given every camera."""
    from m2m.data.tasks_nvs import NVSDataset
    from m2m.evaluation.consistency import nvs_consistency
    from m2m.evaluation.evaluate import generate_continuations

    dataset = NVSDataset(heldout, n_images=NVS_VIEWS, sample="first", image_size=pipe.image_size)
    items = [dataset[i] for i in range(args.sets)]
    views, cameras = torch.stack([it["images"] for it in items]), torch.stack([it["cond"] for it in items])
    m = args.task_generate
    conditions = None if s_C is None else cameras[:, : 1 + m]
    generated = generate_continuations(
        pipe, views[:, :1], m, PRECEDING, args.steps, args.guidance_scale, args.seed, args.batch_size,
        conditions=conditions, condition_guidance_scale=s_C,
    )
    rows = [
        nvs_consistency(list(generated[i] * 2 - 1), cameras[i, 1 : 1 + m].numpy(), list(views[i]), cameras[i].numpy())
        for i in range(len(items))
    ]
    return mean_rows(rows, ["object", "rotation", "score"])


def procedure_scores(pipe, heldout: Path, args, s_C: float | None) -> dict:
    """Future steps (Fig. 8): steps 3..6 of each method generated after its first two."""
    from m2m.data.tasks_procedure import ProcedureDataset
    from m2m.evaluation.consistency import procedure_consistency
    from m2m.evaluation.evaluate import generate_continuations

    dataset = ProcedureDataset(heldout, n_images=PROCEDURE_STEPS, sample="first", image_size=pipe.image_size)
    items = [dataset[i] for i in range(args.sets)]
    steps, indices = torch.stack([it["images"] for it in items]), torch.stack([it["cond"] for it in items])
    attributes = [json.loads((heldout / it["id"] / "method.json").read_text())["attributes"] for it in items]
    k = 2
    generated = generate_continuations(
        pipe, steps[:, :k], PROCEDURE_STEPS - k, PRECEDING, args.steps, args.guidance_scale, args.seed,
        args.batch_size, conditions=None if s_C is None else indices, condition_guidance_scale=s_C,
    )
    rows = [
        procedure_consistency(list(generated[i] * 2 - 1), indices[i, k:].tolist(), PROCEDURE_STEPS, attributes[i])
        for i in range(len(items))
    ]
    return mean_rows(rows, ["palette", "shape", "progress", "score"])


def task_chance(task: str, heldout: Path, args) -> dict:
    """Chance per task score: two different held-out items agree on palette/shape; a uniform view (1 of 12)
    or step (1 of 6) guess."""
    if task == "nvs":
        objects = [json.loads((heldout / d / "object.json").read_text()) for d in sorted(os.listdir(heldout))]
        palettes = [o["palette"] for o in objects]
        chance = {"object": pair_chance(palettes[: args.sets]), "rotation": 1 / NVS_VIEWS}
    else:
        methods = [json.loads((heldout / d / "method.json").read_text()) for d in sorted(os.listdir(heldout))]
        attributes = [m["attributes"] for m in methods]
        attributes = attributes[: args.sets]
        chance = {
            "palette": pair_chance([a["palette"] for a in attributes]),
            "shape": pair_chance([a["shape"] for a in attributes]),
            "progress": 1 / PROCEDURE_STEPS,
        }
    return {**chance, "score": float(np.mean(list(chance.values())))}


def task_study(variant: str, pretrained: Path, work: Path, args) -> dict:
    """Fine-tune the pre-trained model on each task and score it with and without its condition."""
    from m2m.training.config import TrainConfig

    scorers = {"nvs": nvs_scores, "procedure": procedure_scores}
    results = {}
    for task, (train_root, heldout) in fixtures(work, args).items():
        config = TrainConfig(
            out=work / f"m2m-{variant}-{task}", variant=variant, data=None, init=pretrained, task=task,
            task_data=train_root, seed=args.seed, log_every=50,
        )
        train_metrics = train_for(config, args.task_minutes)
        tuned, score = load(config.out), scorers[task]
        results[task] = {
            "steps": train_metrics["steps"],
            "fine-tuned": score(tuned, heldout, args, 1.0),
            "fine-tuned, condition ignored (s_C = 0)": score(tuned, heldout, args, 0.0),
            "pre-trained, not fine-tuned": score(load(pretrained), heldout, args, None),
            "chance": task_chance(task, heldout, args),
        }
    return results


# -- pictures and the report ---------------------------------------------------------------------


def labelled_grid(columns: dict[str, torch.Tensor], image_size: int) -> Image.Image:
    """Column groups side by side (rows = sets), each under its label; tensors ``(S, n, 3, H, W)`` in [0, 1]."""
    from m2m.grid import image_grid
    from m2m.pipeline import to_pil

    scale = max(1, 64 // image_size)
    grids = {label: image_grid(to_pil(images), scale=scale) for label, images in columns.items()}
    gap, header = 12, 16
    width = sum(g.width for g in grids.values()) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, header + max(g.height for g in grids.values())), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for label, grid in grids.items():
        draw.text((x + 2, 2), label, fill="black")
        canvas.paste(grid, (x, header))
        x += grid.width + gap
    return canvas


def save_atomic(image_or_figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        if isinstance(image_or_figure, Image.Image):
            image_or_figure.save(tmp, format="PNG")
        else:
            image_or_figure.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_curves(studies: list[dict]) -> Path:
    """Consistency against K preceding images and along the generated sequence, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_k, along) = plt.subplots(1, 2, figsize=(10, 3.5))
    for study in studies:
        ks = sorted(study["by_preceding"], key=int)
        scores = [study["by_preceding"][k]["score"] for k in ks]
        by_k.plot([int(k) for k in ks], scores, marker="o", label=study["variant"])
        positions = range(1, len(study["by_position"]) + 1)
        line = along.plot(positions, study["by_position"], marker=".", label=f"{study['variant']} trained")[0]
        init = study["conditions"]["untrained init"]["score"]
        along.axhline(init, color=line.get_color(), ls=":", label=f"{study['variant']} init")
    chance = studies[0]["conditions"]["chance (two test sets agree)"]["score"]
    for ax in (by_k, along):
        ax.axhline(chance, color="grey", ls="--", label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("consistency")
    by_k.set_xlabel("preceding images K")
    by_k.set_xticks(range(1, PRECEDING + 1))
    along.set_xlabel(f"n-th generated image (W = {PRECEDING})")
    along.legend(fontsize=7)
    by_k.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / "learning_curves.png"
    save_atomic(fig, path)
    plt.close(fig)
    return path


def table(rows: dict[str, dict], keys: list[str], first: str) -> list[str]:
    lines = [f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |" for name, row in rows.items()]


def section(report: dict) -> str:
    """The "Proof of learning" section of RESULTS.md."""
    a = report["settings"]
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_learning.py {a['argv']}` on {report['machine']} "
        f"({report['minutes_total']:.0f} min in all). Tiny M2M (32x32 pixel space) trained on a procedural MIS "
        f"from the shipped sample captions ({report['mis']['train']} training sets, {report['mis']['test']} "
        f"held out). Score: the share of generated images whose palette, shape and texture — read back by the "
        f"procedural generator's own detector — match their set's, over {a['sets']} held-out sets, K = "
        f"{PRECEDING} preceding images, the next {a['generate']} images, DDIM {a['steps']} steps, s = "
        f"{a['guidance_scale']}.",
        "",
    ]
    for study in report["studies"]:
        t = study["train"]
        lines += [
            f"### {study['variant']}",
            "",
            f"Trained {t['steps']} steps of 8 sets x 5 images ({t['wall_time_s'] / 60:.1f} min, "
            f"{t['s_per_step']:.2f} s/step), final loss {t['final_loss']:.4f}.",
            "",
            *table(study["conditions"], [*ATTRIBUTES, "score"], "model"),
            "",
            "Against the number of preceding images (section 8.2):",
            "",
            *table({f"K = {k}": v for k, v in study["by_preceding"].items()}, [*ATTRIBUTES, "score"], "context"),
            "",
            f"Along a sequence of {len(study['by_position'])} generated images (W = {PRECEDING}): "
            + ", ".join(f"{n + 1}: {v:.2f}" for n, v in enumerate(study["by_position"])) + ".",
            "",
            f"![{study['variant']}: preceding | trained | untrained init | context zeroed](results/{study['picture']})",
            "",
        ]
        for task, result in study["tasks"].items():
            keys = [k for k in result["chance"] if k != "score"] + ["score"]
            rows = {name: value for name, value in result.items() if name != "steps"}
            name = "Novel views: views 1..M from view 0" if task == "nvs" else "Procedures: steps 3..6 from steps 1..2"
            lines += [f"{name}, fine-tuned {result['steps']} steps:", "", *table(rows, keys, "model"), ""]
    lines += ["![consistency against K and along the sequence](results/learning_curves.png)", ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace (or add) the "Proof of learning" section of RESULTS.md, leaving other sections alone."""
    old = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else ""
    start = old.find(SECTION + "\n")
    if start < 0:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1 :] if end >= 0 else "")
    tmp = RESULTS_MD.with_name(f".tmp-{RESULTS_MD.name}")
    tmp.write_text(new.rstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS_MD)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="pre-training budget per variant (<= 15)")
    parser.add_argument("--task-minutes", type=float, default=1.5, help="fine-tuning budget per task and variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_NAMES), default=["self", "dino"])
    parser.add_argument("--sets", type=int, default=16, help="held-out sets (and task items) scored")
    parser.add_argument("--generate", type=int, default=4, help="images generated per set for the comparisons")
    parser.add_argument("--long", type=int, default=20, help="length of the long generated sequence")
    parser.add_argument("--task-items", type=int, default=64, help="objects / methods in each task's training fixture")
    parser.add_argument("--task-generate", type=int, default=4, help="novel views generated per object")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="s of eq. 6 (s_I of eq. 7)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--work", type=Path, default=Path("assets/bench/learning"), help="data and models")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 15 or not 0 < args.task_minutes <= 15:
        parser.error("--minutes and --task-minutes must be in (0, 15]")
    if args.sets < 2 or args.generate < 1 or args.long < 1 or args.task_generate < 1:
        parser.error("--sets must be >= 2; --generate, --long and --task-generate >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mis = build_mis(args.work / "mis")
    manifest = json.loads((mis / "manifest.json").read_text())
    studies = [learning_study(variant, mis, args.work, args) for variant in args.variants]
    plot_curves(studies)
    report = {
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "argv": " ".join(sys.argv[1:] if argv is None else argv)},
        "machine": f"CPU, {args.threads} torch thread(s)",
        "mis": manifest["split"],
        "studies": studies,
        "minutes_total": (time.perf_counter() - start) / 60,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / ".tmp-learning.json"
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS / "learning.json")
    write_section(section(report))
    for study in studies:
        c = study["conditions"]
        print(
            f"{study['variant']}: trained {c['trained']['score']:.2f}, init {c['untrained init']['score']:.2f}, "
            f"zeroed {c['trained, context zeroed (s = 0)']['score']:.2f}, "
            f"chance {c['chance (two test sets agree)']['score']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
