"""Training step time with the encodings stored in the shards (``generate-mis --precompute``) against
encoding every set with the VAE and DINOv2, as a ratio within one run.

Default: the weight-shaped folders of the tests (SD-2.1-base / DINOv2 layouts, tiny random networks) on
the CPU, 32x32 images, sets of N = 5, DINOv2 at the sd21 preset's 224 px. ``--full-size`` builds the
SD-2.1-base and DINOv2-giant architectures (random weights) at 512x512 instead, for a GPU.

    python -m benchmarks.bench_precomputed [--device cuda --full-size] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def weight_shaped_pipeline(variant: str, device: str):
    from m2m.build import build_pipeline
    from m2m.weight_folders import write_dino_folder, write_sd_folder

    root = Path(tempfile.mkdtemp())
    sd, dino = write_sd_folder(root / "sd"), write_dino_folder(root / "dino")
    return build_pipeline("sd21", variant, sd_folder=sd, dino_folder=dino).to(device)


def full_size_pipeline(variant: str, device: str):
    from benchmarks.bench_sampling import build

    return build("sd21", variant, device, torch.float32)


def step_seconds(pipe, sets: int, n_images: int, device: str, stored: bool, steps: int) -> float:
    """Seconds per training step (context + eq. 5 loss, backward, AdamW) under bf16 autocast on a GPU."""
    from diffusers import DDPMScheduler

    from m2m.training.objective import clean_context, m2m_loss

    size = pipe.image_size
    images = torch.rand(sets, n_images, 3, size, size, device=device) * 2 - 1
    latents, features = clean_context(pipe, images)  # what generate-mis --precompute stores (fp16 on disk)
    encodings = (latents.half(), features.half() if pipe.context_encoder.external else None) if stored else (None, None)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def step():
        with autocast:
            context = clean_context(pipe, images, *encodings)
            loss = m2m_loss(pipe, noise_scheduler, images, precomputed=context)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-size", action="store_true", help="SD-2.1-base / DINOv2-giant architectures")
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--n-images", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    make = full_size_pipeline if args.full_size else weight_shaped_pipeline
    rows = {}
    for variant in ("self", "dino"):
        pipe = make(variant, args.device)
        torch.manual_seed(0)
        encode = step_seconds(pipe, args.sets, args.n_images, args.device, False, args.steps)
        stored = step_seconds(pipe, args.sets, args.n_images, args.device, True, args.steps)
        rows[variant] = {"encode_s": encode, "stored_s": stored, "ratio": stored / encode}
        print(f"M2M-{variant}: encoding {encode:.3f} s/step, stored {stored:.3f} s/step, ratio {stored / encode:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
