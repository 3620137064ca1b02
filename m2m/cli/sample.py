"""``m2m sample``: preceding images in, the next images out (paper section 6.1, eq. 6; eq. 7 with conditions)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m import speed
from m2m.cli.flags import BooleanFlag, HelpFormatter


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sample",
        help="generate the next images of a set from its preceding images",
        description="Generate --num-images images that continue the given preceding images, one at a time; "
        "each generated image joins the context (the model sees the last --window images). Writes "
        "000.png, 001.png, ... and grid.png (preceding | generated) into --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="an M2M pipeline folder (m2m init / m2m train)")
    p.add_argument("--images", nargs="*", default=[], type=Path, help="preceding image files, in order")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--num-images", type=int, default=4, help="how many images to generate (M)")
    p.add_argument("--window", type=int, default=4, help="context window W")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (paper: 50)")
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="s of eq. 6 (default: the model's; sd21 7.5 as in the paper)"
    )
    p.add_argument("--steps-of-procedure", type=int, nargs="*", help="procedure step index of every image (eq. 7)")
    p.add_argument("--condition-guidance-scale", type=float, default=1.0, help="s_C of eq. 7")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--device", default="auto", help="auto ($M2M_DEVICE, else cuda when present), cpu or cuda")
    p.add_argument(
        "--compile", choices=speed.COMPILE_MODES,
        help="torch.compile the UNet's denoising step (reduce-overhead: CUDA graphs); the first step of each "
        "new shape compiles (default: eager; docs/model.md, Speed options)",
    )
    p.add_argument("--channels-last", action=BooleanFlag, default=False, help="the UNet in NHWC (default false)")
    p.add_argument(
        "--sdpa-backend", choices=list(speed.SDPA_BACKENDS),
        help="attention kernel for every scaled_dot_product_attention call (default: PyTorch's choice per call)",
    )
    return p


def load_images(paths: list[Path], size: int):
    """Open images as RGB, centre-cropped to a square and resized to the model's size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    images = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                images.append(ImageOps.fit(im.convert("RGB"), (size, size), Image.BICUBIC))
        except UnidentifiedImageError:
            raise ValueError(f"{path}: not an image file PIL can read") from None
        except OSError as err:  # e.g. "image file is truncated"
            raise ValueError(f"{path}: unreadable image ({err})") from None
    return images


def check_args(args: argparse.Namespace) -> None:
    """Values that cannot give a meaningful result are refused before the model loads."""
    import math

    for flag, value in (("--num-images", args.num_images), ("--window", args.window), ("--steps", args.steps)):
        if value < 1:
            raise ValueError(f"{flag}: must be at least 1, got {value}")
    for flag, value in (("--guidance-scale", args.guidance_scale), ("--condition-guidance-scale", args.condition_guidance_scale)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{flag}: must be a finite number, got {value}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from m2m.device import pick_device
    from m2m.grid import image_grid
    from m2m.pipeline import from_pil, load_on
    from m2m.speed import Speed

    check_args(args)
    if not (args.model / "model_index.json").exists():
        raise FileNotFoundError(f"{args.model}: not an M2M pipeline folder (no model_index.json)")
    device = pick_device(args.device)
    pipe = load_on(args.model, device).enable_speed(
        Speed(compile=args.compile, channels_last=args.channels_last, sdpa_backend=args.sdpa_backend)
    )
    context = load_images(args.images, pipe.image_size)
    conditions = None
    if args.steps_of_procedure is not None:
        if len(args.steps_of_procedure) != len(context) + args.num_images:
            raise ValueError(f"--steps-of-procedure needs {len(context) + args.num_images} values, one per image")
        conditions = torch.tensor([args.steps_of_procedure])
    images = from_pil([context]) if context else None
    out = pipe(
        images, num_images=args.num_images, window=args.window, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, conditions=conditions,
        condition_guidance_scale=args.condition_guidance_scale,
        generator=torch.Generator(device).manual_seed(args.seed),
    ).images[0]
    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(out):
        image.save(args.out / f"{i:03d}.png")
    image_grid([context + out], split=len(context) or None, scale=max(1, 128 // pipe.image_size)).save(args.out / "grid.png")
    print(f"wrote {len(out)} images and grid.png to {args.out}")
    return 0
