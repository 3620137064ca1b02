"""MIS generation throughput of the ``sd`` backend (section 4): images/s through ``StableDiffusionGenerator``.

Times the real generation path (Euler scheduler, classifier-free guidance, VAE decode, PIL output,
one generator per image) after one warm-up batch, on

- ``--sd-folder PATH``: a local SD-2.1-base folder (the real weights), or
- ``--random tiny``: a tiny random SD pipeline (CPU; checks the path, numbers mean little), or
- ``--random sd21``: random weights in SD-2.1-base's exact architecture (UNet 866M, OpenCLIP-H text
  encoder, SD VAE), which costs the same compute as the real weights; ANCHORS.md measures the same way.

Prints one result line per batch size and a markdown table; the mean pixel value shows the decoded
images are not NaN (black, 0). Per-step cost is given so runs with different step
counts (generate-mis: Euler, 25 steps by default; ANCHORS.md: DDIM 50) can be compared.

    python benchmarks/bench_sd_generation.py                                   # CPU, tiny
    python benchmarks/bench_sd_generation.py --random sd21 --image-size 512    # GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

# ANCHORS.md, one H200: SD-2.1-base sampling, DDIM 50 + CFG + VAE decode, 8 images per batch.
ANCHOR_SECONDS_PER_IMAGE, ANCHOR_STEPS = 0.307, 50

ARCHITECTURES = {
    "tiny": {
        "unet": dict(
            sample_size=16,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        ),
        "vae": dict(block_out_channels=(32, 64), layers_per_block=1),
        "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
    },
    # stabilityai/stable-diffusion-2-1-base: unet/, vae/ and text_encoder/ config.json
    "sd21": {
        "unet": dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
        "text": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            hidden_act="gelu",
            projection_dim=512,
        ),
    },
}


def random_sd_folder(folder: Path, arch: str, device: str) -> Path:
    """Save a StableDiffusionPipeline with random weights of architecture ``arch`` to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from m2m.data.tokenizer import write_tokenizer_folder

    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
        n_blocks = len(spec["vae"]["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * n_blocks,
            up_block_types=("UpDecoderBlock2D",) * n_blocks,
            **spec["vae"],
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=0,
                **spec["text"],
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(write_tokenizer_folder(folder / "clip-tokenizer")),
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = folder / f"random-{arch}"
    pipe.to(torch.float16 if device.startswith("cuda") else torch.float32).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sd-folder", type=Path, help="local SD-2.1-base folder (real weights)")
    source.add_argument("--random", choices=sorted(ARCHITECTURES), default="tiny", help="random weights of this shape")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8], help="one timed run per batch size")
    parser.add_argument("--images", type=int, default=16, help="images timed per run, after one warm-up batch")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from m2m.data.sd_generator import StableDiffusionGenerator
    from m2m.device import pick_device

    device = pick_device(args.device)
    name = str(args.sd_folder) if args.sd_folder else f"random {args.random}"
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.sd_folder or random_sd_folder(Path(tmp), args.random, device)
        for batch_size in args.batch_size:
            generator = StableDiffusionGenerator(
                folder,
                guidance_scale=args.guidance_scale,
                steps=args.steps,
                image_size=args.image_size,
                batch_size=batch_size,
                device=device,
            )
            size = generator.image_size
            rows.append((batch_size, *time_generation(generator, args.images, device)))
            del generator
    for batch_size, seconds, mean_pixel in rows:
        print(
            f"sd backend: {args.images / seconds:.2f} images/s ({seconds / args.images:.3f} s/image) at {size}x{size}, "
            f"{args.steps} Euler steps, batch {batch_size}, {where} ({name}); mean pixel {mean_pixel:.1f}"
        )
    print()
    print("| model | device | size | steps | batch | images | seconds | images/s | s/image | ms/image/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch_size, seconds, _ in rows:
        per_image = seconds / args.images
        print(
            f"| {name} | {where} | {size}² | {args.steps} | {batch_size} | {args.images} | {seconds:.2f} "
            f"| {args.images / seconds:.2f} | {per_image:.3f} | {1000 * per_image / args.steps:.2f} |"
        )
    if size == 512 and (args.sd_folder or args.random == "sd21"):
        anchor = ANCHOR_SECONDS_PER_IMAGE
        print(
            f"| ANCHORS.md SD-2.1-base, DDIM | H200 | 512² | {ANCHOR_STEPS} | 8 | | | {1 / anchor:.2f} | {anchor:.3f} "
            f"| {1000 * anchor / ANCHOR_STEPS:.2f} |"
        )


def time_generation(generator, images: int, device: str) -> tuple[float, float]:
    """(seconds for ``images`` images of one caption after a warm-up batch, mean pixel value)."""
    import numpy as np
    import torch

    from m2m.data.shards import image_seeds

    caption = "a red circle on a striped background, vector illustration"
    generator.generate([caption], [image_seeds(0, "warmup", generator.batch_size)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    sets = generator.generate([caption], [image_seeds(0, "timed", images)])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, float(np.mean([np.asarray(image).mean() for image in sets[0]]))


if __name__ == "__main__":
    main()
