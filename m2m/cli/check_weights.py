"""``m2m check-weights``: validate local weights folders before a long run reads them."""

from __future__ import annotations

import argparse

from m2m.cli.flags import HelpFormatter

HELP = "validate weights folders (classes, configs, tensor shapes and dtypes, missing or truncated files)"
DESCRIPTION = """\
Check the local weights the sd21 preset reads, before a run spends GPU hours on them. Each PATH is
recognised by its layout:

  a Stable Diffusion pipeline folder (model_index.json)  weights/stable-diffusion-2-1-base
  a DINOv2 model folder (config.json, model_type dinov2)  weights/dinov2-giant
  a CLIP model folder (config.json, model_type clip)      weights/clip-vit-large-patch14
  the Inception-v3 weights file or its folder             weights/inception

and checked for the classes its configs name, configs that parse, safetensors files present and
complete, every tensor the config's architecture has with its shape and a float dtype, and (SD) the
UNet, VAE and text encoder agreeing with each other. Prints one line per problem and exits 1 when
there is any; else one line per PATH and exit 0.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check-weights", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="weights folders (or the Inception file)")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m.weights import check_weights

    failed = False
    for path in args.paths:
        kind, problems = check_weights(path)
        for line in problems:
            print(line)
        failed = failed or bool(problems)
        if not problems:
            print(f"{path}: ok ({kind})")
    return 1 if failed else 0
