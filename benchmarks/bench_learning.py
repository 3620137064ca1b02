"""Proof of learning on the default preset: does tiny M2M learn what the images of a set share?

Procedural MIS sets share a palette, a shape kind and a background texture (the structure of the paper's
MIS, section 4, made exact), and the generator's own detector reads those attributes back from any image.
So the consistency score — the share of generated images whose attributes match their set's — measures
exactly whether a model continues a set (chance: about 0.16 for a uniform guess).

1. A procedural MIS from the shipped CC12M-format sample captions (filter -> shards -> manifest, 20% test).
2. Tiny M2M-Self and M2M-DINO trained on it (eq. 5) for ``--minutes`` each.
3. On held-out test sets, K = 4 preceding images, the consistency of the next ``--generate`` images for:
   the trained model, its untrained initialisation, the trained model with the context zeroed (s = 0 in
   eq. 6 leaves the unconditional ε(z_t, 0, t)), and chance; then against the guidance scale s, against
   K = 1..4 (section 8.2) and along a long generated sequence of ``--long`` images with W = 4 (does quality
   decay? section 9).

Task fine-tuning of these models (section 6.2) is ``benchmarks/bench_tasks.py``.

Writes ``benchmarks/results/learning.json``, ``learning_<variant>.png`` (preceding | trained | init |
context zeroed), ``learning_curves.png`` and the "Proof of learning" section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_learning.py                  # about 25 minutes per variant on 2 CPU cores
    python benchmarks/bench_learning.py --minutes 5 --variants dino   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from learning.common import (
    PRECEDING,
    export_fp16,
    load,
    mean_rows,
    offline_on_cpu,
    pair_chance,
    precision_stretches,
    train_command,
    train_for,
)
from learning.report import (
    ATTRIBUTES, RESULTS, labelled_grid, plot_curves, run_header, save_atomic, save_json, section, write_section,
)
from learning.control import CONTROL
from m2m.models.context import context_encoder

TEST_PERCENT = 20
VARIANT_NAMES = {name: context_encoder(name).display_name for name in ("self", "dino", CONTROL.name)}
GUIDANCE_SWEEP = (0.0, 1.0, 2.0, 4.0, 7.5)


def build_mis(root: Path, prefix: str | Sequence[str] | None = None) -> Path:
    """A procedural MIS from the shipped sample captions; complete shards are kept on a rerun.

    ``prefix``: a word put before every caption, or several taken in turn (caption i gets word
    i mod n). The caption grammar takes an attribute from its first keyword, so a shape keyword gives
    every set that shape ("ball": circles only, the one-kind pilot of docs/model.md; ("ball", "box"):
    circles and squares, the two-kind pilot) and leaves the palettes and textures as they were."""
    from m2m.resources import resource_path

    sample = resource_path("cc12m_sample.tsv")
    if prefix:
        words = [prefix] if isinstance(prefix, str) else list(prefix)
        root.mkdir(parents=True, exist_ok=True)
        rows = [line.split("\t", 1) for line in sample.read_text(encoding="utf-8").splitlines() if line]
        sample = root / "captions.tsv"
        sample.write_text(
            "".join(f"{url}\t{words[i % len(words)]} {caption}\n" for i, (url, caption) in enumerate(rows)),
            encoding="utf-8",
        )
    return mis_from_captions(root, sample, TEST_PERCENT)


def mis_from_captions(root: Path, captions: Path, test_percent: float) -> Path:
    """Filter a caption TSV, write its procedural shards (64 sets each; complete ones are kept on a rerun)
    and the manifest with ``test_percent`` held out, all under ``root``."""
    from m2m.data.captions import filter_captions
    from m2m.data.procedural import ProceduralGenerator
    from m2m.data.shards import build_manifest, write_shard

    report = filter_captions([captions], root / "captions.parquet", root / "filter_report.json")
    for shard in range(math.ceil(report["kept"] / 64)):
        write_shard(root / "captions.parquet", root / "shards", shard, ProceduralGenerator(32), samples_per_shard=64)
    build_manifest(root / "shards", root / "manifest.json", test_percent=test_percent)
    return root


def build_training_mis(
    root: Path,
    n_sets: int,
    shapes: Sequence[str] | None = None,
    seed: int = 0,
    palettes: Sequence[str] | None = None,
    textures: Sequence[str] | None = None,
) -> Path:
    """A training-only procedural MIS of ``n_sets`` sets (no test split) from generated captions.

    The shipped sample gives 240 training sets, which a run of 2,000 steps x 4 sets sees 33 times each;
    the held-out sets stay those of ``build_mis``. Each caption names a palette, a shape kind (one of
    ``shapes``, default all) and a texture drawn uniformly by a seeded generator, then a serial number, so
    every attribute combination is common and no two captions are alike; the images are the same
    generator's. ``palettes`` and ``textures`` narrow those attributes as ``shapes`` does the kind (one
    palette and one texture: sets that differ in their shape kind alone). Complete shards are kept on a
    rerun."""
    import numpy as np

    from m2m.data.procedural import PALETTES, SHAPES, TEXTURES

    if n_sets < 1:
        raise ValueError(f"build_training_mis: n_sets must be >= 1, got {n_sets}")
    chosen = {}
    for name, given, values in (("palettes", palettes, tuple(PALETTES)), ("shapes", shapes, SHAPES),
                                ("textures", textures, TEXTURES)):
        chosen[name] = list(given or values)
        unknown = sorted(set(chosen[name]) - set(values))
        if unknown:
            raise ValueError(f"build_training_mis: {name} must be among {values}, got {unknown}")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        f"https://example.org/set/{i}\t{rng.choice(chosen['palettes'])} {rng.choice(chosen['shapes'])} "
        f"{rng.choice(chosen['textures'])} {i:06d}\n"
        for i in range(n_sets)
    ]
    (root / "captions.tsv").write_text("".join(rows), encoding="utf-8")
    return mis_from_captions(root, root / "captions.tsv", test_percent=0)


def mis_pair_chance(references: list[dict]) -> dict:
    """Per-attribute chance that two different test sets share the attribute, and their mean."""
    chance = {a: pair_chance([r[a] for r in references]) for a in ATTRIBUTES}
    return {**chance, "score": sum(chance.values()) / len(chance)}


def mis_consistency(pipe, context, references, generate, guidance, args) -> tuple[list[dict], torch.Tensor]:
    """Consistency per generated position after ``context`` ``(S, K, 3, H, W)``, and the images.

    ``guidance`` None is the model's own s (``pipe.config.guidance_scale``)."""
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

    models = args.models or work
    config = TrainConfig(out=models / f"m2m-{variant}", variant=variant, data=mis, seed=args.seed, log_every=50)
    start = time.perf_counter()
    train_metrics = train_for(config, args.minutes, reuse=args.reuse or args.models is not None)
    if train_metrics["variant"] != variant or train_metrics.get("task"):
        raise ValueError(f"{config.out}: not a pre-trained M2M-{variant} (train_metrics.json)")
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
    own = trained.config.guidance_scale if s is None else s
    by_guidance = {own: mean_rows(along[:m]), 0.0: mean_rows(zeroed_rows)}
    for scale in GUIDANCE_SWEEP:
        if scale not in by_guidance:
            by_guidance[scale] = mean_rows(mis_consistency(trained, context, references, m, scale, args)[0])
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
    train_keys = (
        "steps", "batch_size", "n_images", "final_loss", "loss_last_10pct", "s_per_step", "wall_time_s", "lr",
        "lr_schedule", "lr_warmup_steps", "snr_gamma", "ema_decay", "device", "mixed_precision", "precision_from_step",
    )
    return {
        "variant": VARIANT_NAMES[variant],
        "train": {k: train_metrics.get(k) for k in train_keys},
        "trained_by": train_command(train_metrics, out=config.out) if args.models else None,
        "test_sets": len(sets),
        "generate": m,
        "guidance_scale": own,
        "conditions": conditions,
        "by_guidance": {str(k): by_guidance[k] for k in sorted(by_guidance)},
        "by_preceding": {str(k): by_k[k] for k in sorted(by_k)},
        "by_position": [row["score"] for row in along],
        "picture": picture.name,
        "seconds": time.perf_counter() - start,
    }


def model_card(study: dict, report: dict, folder: str) -> str:
    """README.md of an exported model: what it is, how it was trained, what it scores, how to use it."""
    t, c = study["train"], study["conditions"]
    command = study["trained_by"] or f"python benchmarks/bench_learning.py {report['settings']['argv']}"
    where = f"{t['device']}, one process" if study["trained_by"] else report["machine"]
    stretches = precision_stretches(t.get("precision_from_step"))
    where += f"; {stretches}" if stretches else ""
    chance = c["chance (two test sets agree)"]
    above = [a for a in ATTRIBUTES if c["trained"][a] >= chance[a] + 0.1]
    below = [a for a in ATTRIBUTES if a not in above]
    return f"""# Tiny {study['variant']} (32x32, procedural MIS)

The default-preset {study['variant']} of this project, trained from scratch on CPU by
`{command}`: {t['steps']} steps of {t['batch_size']} sets x
{t['n_images']} images ({t['steps'] * t['batch_size'] * t['n_images']:,} training images seen;
{t['wall_time_s'] / 60:.1f} min on {where}) on the procedural MIS built from
the shipped sample captions. Weights in float16 safetensors; `m2m sample` / `m2m evaluate` run them in
float32 on CPU. Its default guidance scale is s = {study['guidance_scale']:g} (docs/model.md).

Consistency with {study['test_sets']} held-out sets (palette, shape, texture read back by the generator's
detector; benchmarks/RESULTS.md): trained {c['trained']['score']:.2f}, untrained init
{c['untrained init']['score']:.2f}, context zeroed {c['trained, context zeroed (s = 0)']['score']:.2f}, chance
{chance['score']:.2f}. Attributes it continues at least 0.10 above chance: {', '.join(above) or 'none'}; not:
{', '.join(below) or 'none'}.

    m2m sample --model {folder} --images a.png b.png c.png d.png --out out/

A stand-in for checking the code end to end, not a model of natural images.
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="pre-training budget per variant (<= 15)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_NAMES), default=["self", "dino"],
                        help="control: the context a token stating the set's shape kind (learning/control.py)")
    parser.add_argument("--sets", type=int, default=32, help="held-out sets scored")
    parser.add_argument("--generate", type=int, default=4, help="images generated per set for the comparisons")
    parser.add_argument("--long", type=int, default=20, help="length of the long generated sequence")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="s of eq. 6 (s_I of eq. 7); default: the model's own"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    parser.add_argument("--work", type=Path, default=Path("assets/bench/learning"), help="data and models")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the models already trained in --work; train only missing ones"
    )
    parser.add_argument("--export", type=Path, help="also save the pre-trained models here in float16, with a card")
    parser.add_argument(
        "--models", type=Path,
        help="score the models already in MODELS/m2m-<variant> (a longer `m2m train` run) instead of training",
    )
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 15:
        parser.error("--minutes must be in (0, 15]")
    if args.sets < 2 or args.generate < 1 or args.long < 1:
        parser.error("--sets must be >= 2; --generate and --long >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_on_cpu(args.threads)
    start = time.perf_counter()
    mis = build_mis(args.work / "mis")
    manifest = json.loads((mis / "manifest.json").read_text())
    studies = [learning_study(variant, mis, args.work, args) for variant in args.variants]
    plot_curves(studies)
    report = {
        **run_header(args, argv),
        "guidance_scale": studies[0]["guidance_scale"],
        "mis": manifest["split"],
        "studies": studies,
        "minutes_total": (time.perf_counter() - start) / 60,
    }
    save_json(report, "learning.json")
    write_section(section(report))
    if args.export:
        for variant, study in zip(args.variants, studies, strict=True):
            out = args.export / f"tiny-m2m-{variant}"
            folder = (args.models or args.work) / f"m2m-{variant}"
            size = export_fp16(folder, out, model_card(study, report, str(out)))
            print(f"exported {out} ({size / 2**20:.1f} MiB)")
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
