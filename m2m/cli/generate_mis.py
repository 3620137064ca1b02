"""``m2m generate-mis``: filtered captions -> one MIS webdataset shard of image sets (section 4)."""

from __future__ import annotations

import argparse

from m2m.cli.flags import BooleanFlag, HelpFormatter

HELP = "draw 25 images per caption into one webdataset shard (procedural or Stable Diffusion)"
DESCRIPTION = """\
MIS, the paper's dataset, pairs every caption with a set of images drawn from different seeds, so
the images of a set are related through their shared caption. This writes shard K: captions
[K*S, (K+1)*S) of the filtered Parquet, one sample per caption (000.png..., txt, json), as
OUT/mis-K.tar plus a sidecar OUT/mis-K.json with its keys and sha256.

Backends:
  procedural  (default) sets whose caption fixes shape, palette and texture; CPU, no downloads
  sd          Stable Diffusion 2.1-base with the Euler scheduler and guidance 7.5, as in the paper;
              needs the weights in --sd-folder (huggingface-cli download
              stabilityai/stable-diffusion-2-1-base --local-dir weights/stable-diffusion-2-1-base)

--precompute stores each set's VAE latents (and DINOv2 features with --dino-folder) beside its
images, so that training does not encode them again.

Shards are independent: run them in parallel, one per worker. A complete shard is skipped on rerun;
an interrupted one is redone from scratch.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate-mis", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--captions", default="assets/captions/filtered.parquet", help="filtered captions Parquet")
    parser.add_argument("--out", default="assets/mis/shards", help="folder of the shards")
    parser.add_argument("--shard", type=int, required=True, metavar="K", help="shard index (0, 1, ...)")
    parser.add_argument("--samples-per-shard", type=int, default=64, metavar="S", help="captions per shard")
    parser.add_argument("--images-per-caption", type=int, default=25, help="images per set (paper: 25)")
    parser.add_argument("--backend", choices=["procedural", "sd"], default="procedural", help="image generator")
    parser.add_argument(
        "--image-size", type=int, default=None, help="image side in pixels (procedural: 32; sd: the model's, 512)"
    )
    parser.add_argument("--sd-folder", default="weights/stable-diffusion-2-1-base", help="local SD pipeline folder")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="sd: classifier-free guidance scale")
    parser.add_argument("--steps", type=int, default=25, help="sd: Euler sampling steps")
    parser.add_argument("--batch-size", type=int, default=8, help="sd: images per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="run seed; image seeds derive from it and the caption id")
    parser.add_argument(
        "--device", default="auto", help="sd and --precompute: auto ($M2M_DEVICE, else cuda when present), cuda or cpu"
    )
    parser.add_argument(
        "--precompute",
        action=BooleanFlag,
        help="also store each set's VAE latents (VAE of --sd-folder) as latents.safetensors: training skips encoding",
    )
    parser.add_argument(
        "--dino-folder", help="with --precompute: also store DINOv2 features (local model folder); read only then"
    )
    parser.add_argument("--dino-size", type=int, default=224, help="with --dino-folder: DINOv2 input size")
    return parser


def make_generator(args: argparse.Namespace):
    """The backend named by ``--backend``, configured from the arguments."""
    if args.backend == "sd":
        from m2m.data.sd_generator import StableDiffusionGenerator

        return StableDiffusionGenerator(
            args.sd_folder,
            guidance_scale=args.guidance_scale,
            steps=args.steps,
            image_size=args.image_size,
            batch_size=args.batch_size,
            device=args.device,
        )
    from m2m.data.procedural import ProceduralGenerator

    return ProceduralGenerator(image_size=args.image_size or 32)


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from m2m.data.shards import shard_captions, write_shard

    # One progress line per caption batch, on stdout: the pipeline's log shows each line as it comes.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)

    shard_captions(args.captions, args.shard, args.samples_per_shard)  # bad input fails before loading a model
    precompute = None
    if args.precompute:
        from m2m.data.sd_generator import LatentPrecomputer

        precompute = LatentPrecomputer(
            args.sd_folder, args.dino_folder, args.dino_size, batch_size=args.batch_size, device=args.device
        )
    elif args.dino_folder and args.precompute is None:
        raise ValueError("--dino-folder: only used with --precompute")
    sidecar, written = write_shard(
        args.captions,
        args.out,
        args.shard,
        make_generator(args),
        samples_per_shard=args.samples_per_shard,
        images_per_caption=args.images_per_caption,
        seed=args.seed,
        captions_per_call=max(1, args.batch_size),
        precompute=precompute,
    )
    state = "wrote" if written else "already complete:"
    print(f"{state} shard {args.shard}: {sidecar['count']} sets, sha256 {sidecar['sha256'][:12]} -> {args.out}")
    return 0
