"""Procedural MIS generation speed on CPU (one process), and how well the attribute detector reads images.

Prints two markdown tables: images/s for ``ProceduralGenerator.generate`` (PIL images) and with PNG encoding
(what a shard stores), per image size; then the detector's accuracy per attribute on clean, blurred and
noisy images.

    python benchmarks/bench_procedural.py
    python benchmarks/bench_procedural.py --sizes 32 64 128 --images 5000 --detect 500
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter

import numpy as np
from PIL import Image, ImageFilter

from m2m.data.procedural import ATTRIBUTES, ProceduralGenerator
from m2m.data.procedural_detect import detect_attributes

SEEDS_PER_CAPTION = 25


def captions(count: int) -> list[str]:
    return [f"untitled photo {i}" for i in range(count)]


def generation_rate(size: int, n_images: int, encode: bool) -> float:
    """Images per second for ``n_images`` images, 25 seeds per caption (as MIS)."""
    generator = ProceduralGenerator(size)
    batch = captions(max(1, n_images // SEEDS_PER_CAPTION))
    seeds = [list(range(SEEDS_PER_CAPTION))] * len(batch)
    start = time.perf_counter()
    sets = generator.generate(batch, seeds)
    if encode:
        for image in (image for images in sets for image in images):
            image.save(io.BytesIO(), format="PNG")
    return len(batch) * SEEDS_PER_CAPTION / (time.perf_counter() - start)


def corrupt(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "blur 1px":
        return image.filter(ImageFilter.GaussianBlur(1.0))
    if kind == "noise 30":
        noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 30.0, (image.height, image.width, 3))
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image


def detector_accuracy(size: int, n_images: int, kind: str) -> tuple[dict[str, float], float]:
    """Per-attribute accuracy on ``n_images`` images of distinct captions, and images/s read."""
    generator, rng = ProceduralGenerator(size), np.random.default_rng(0)
    hits, elapsed = Counter(), 0.0
    for seed, caption in enumerate(captions(n_images)):
        image = corrupt(generator.generate([caption], [[seed]])[0][0], kind, rng)
        start = time.perf_counter()
        detected = detect_attributes(image)
        elapsed += time.perf_counter() - start
        reference = generator.attributes(caption)
        hits.update(a for a in ATTRIBUTES if detected[a] == reference[a])
    return {a: hits[a] / n_images for a in ATTRIBUTES}, n_images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--images", type=int, default=5000, help="images timed per size")
    parser.add_argument("--detect", type=int, default=300, help="images read per detector row (0: skip)")
    args = parser.parse_args()

    print("| image size | images/s (generate) | images/s (generate + PNG) |")
    print("|---:|---:|---:|")
    for size in args.sizes:
        plain = generation_rate(size, args.images, encode=False)
        encoded = generation_rate(size, args.images, encode=True)
        print(f"| {size}x{size} | {plain:,.0f} | {encoded:,.0f} |")
    if not args.detect:
        return
    print()
    print(f"| detector on 32x32 ({args.detect} images) | palette | shape | texture | images/s |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("clean", "blur 1px", "noise 30"):
        accuracy, rate = detector_accuracy(32, args.detect, kind)
        cells = " | ".join(f"{accuracy[a]:.1%}" for a in ATTRIBUTES)
        print(f"| {kind} | {cells} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
