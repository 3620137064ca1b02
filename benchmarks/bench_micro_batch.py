"""GPU memory and images/s of one sd21 training step per micro-batch size, to choose
``pretrain.micro_batch_size`` in params-sd21.yaml: SD-2.1-base UNet and DINOv2-giant architectures
(random weights), 512x512 latents, N = 5 images per set, bf16 autocast, gradient checkpointing, AdamW,
stored latents and DINOv2 features (as the sd21 chain trains). Needs a CUDA GPU; ``--device cpu --preset
tiny`` is a smoke run of the same code (no memory figures).

    python -m benchmarks.bench_micro_batch [--micro-batches 1 2 4 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.bench_gpu import cuda_seconds_per_call, peak_gib


def measure(variant: str, micro_batch: int, n_images: int, steps: int, device: str = "cuda",
            preset: str = "sd21") -> dict:
    from diffusers import DDPMScheduler

    from benchmarks.bench_sampling import build
    from m2m.training.objective import m2m_loss

    pipe = build(preset, variant, device, torch.float32)
    unet = pipe.unet.train()
    unet.enable_gradient_checkpointing()
    cfg, noise_scheduler = unet.config.unet_config, DDPMScheduler.from_config(pipe.scheduler.config)
    z0 = torch.randn(micro_batch, n_images, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], device=device)
    context = z0
    if pipe.context_encoder.external:
        encoder = pipe.image_encoder.config
        tokens = (unet.config.dino_image_size // encoder.patch_size) ** 2 + 1
        context = torch.randn(micro_batch, n_images, tokens, encoder.hidden_size, device=device)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = m2m_loss(pipe, noise_scheduler, None, precomputed=(z0, context))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        seconds = cuda_seconds_per_call(step, steps, warmup=1)
        row = {"img_per_s": micro_batch * n_images / seconds, "peak_gib": peak_gib()}
    except torch.cuda.OutOfMemoryError:
        row = {"img_per_s": None, "peak_gib": None, "oom": True}
    del pipe, optimizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--n-images", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", choices=["sd21", "tiny"], default="sd21", help="tiny: a smoke run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_micro_batch: needs a CUDA GPU")
    rows = {}
    for variant in ("self", "dino"):
        for micro in args.micro_batches:
            row = measure(variant, micro, args.n_images, args.steps, args.device, args.preset)
            rows[f"{variant}-{micro}"] = row
            print(f"M2M-{variant} micro-batch {micro}: {row}", flush=True)
    if args.json:
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
        args.json.write_text(json.dumps({"device": name, "preset": args.preset, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
