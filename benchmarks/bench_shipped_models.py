"""The shipped tiny models (``models/``) on another device and dtype: do they still continue a set?

Generates M images after K = 4 procedural preceding images of ``--sets`` sets (captions of the shipped
sample, image seeds no training set used) with the same noise on the CPU in float32 and on ``--device``
in ``--dtype``, and prints per model the consistency score of both, their mean and largest pixel
difference (images in [0, 1]) and the seconds per generated image.

    python benchmarks/bench_shipped_models.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from learning.common import PRECEDING, mean_rows

MODELS = Path(__file__).resolve().parent.parent / "models"


def procedural_sets(count: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """``(S, K, 3, 32, 32)`` preceding images in [-1, 1] and each set's attributes."""
    from m2m.data.procedural import ProceduralGenerator
    from m2m.pipeline import from_pil
    from m2m.resources import resource_path

    rows = resource_path("cc12m_sample.tsv").read_text(encoding="utf-8").splitlines()
    captions = [row.split("\t", 1)[1] for row in rows[:count]]
    generator = ProceduralGenerator(32)
    seeds = [[seed + 10 * i + j for j in range(PRECEDING)] for i in range(count)]
    return from_pil(generator.generate(captions, seeds)), [generator.attributes(c) for c in captions]


def run(folder: Path, device: str, dtype: torch.dtype, context, references, args) -> tuple[dict, torch.Tensor, float]:
    from m2m.evaluation.evaluate import generate_continuations, set_consistency_per_position
    from m2m.pipeline import M2MPipeline

    pipe = M2MPipeline.from_pretrained(folder, dtype=dtype).to(device)
    generate_continuations(pipe, context[:2], 1, PRECEDING, 2, None, 0, args.batch_size)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = generate_continuations(pipe, context, args.generate, PRECEDING, args.steps, None, 0, args.batch_size)
    seconds = (time.perf_counter() - start) / (images.shape[0] * images.shape[1])
    return mean_rows(set_consistency_per_position(images, references)), images, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16")
    parser.add_argument("--sets", type=int, default=32)
    parser.add_argument("--generate", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7000, help="first image seed of the preceding images")
    args = parser.parse_args(argv)
    context, references = procedural_sets(args.sets, args.seed)
    target = f"{args.device} {args.dtype}"
    print(f"| model | consistency, cpu float32 | consistency, {target} | pixel diff mean / max | s/img cpu | s/img {target} |")
    print("|---|---|---|---|---|---|")
    for folder in sorted(MODELS.glob("tiny-m2m-*")):
        ref, ref_images, ref_s = run(folder, "cpu", torch.float32, context, references, args)
        out, images, out_s = run(folder, args.device, getattr(torch, args.dtype), context, references, args)
        diff = (images - ref_images).abs()
        print(f"| {folder.name} | {ref['score']:.2f} (palette {ref['palette']:.2f}) | {out['score']:.2f} "
              f"(palette {out['palette']:.2f}) | {float(diff.mean()):.4f} / {float(diff.max()):.3f} | {ref_s:.3f} | {out_s:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
