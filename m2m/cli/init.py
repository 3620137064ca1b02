"""``m2m init``: a fresh M2M pipeline folder from a preset (section 6.1: initialised from Stable Diffusion)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m.cli.flags import HelpFormatter
from m2m.models import presets
from m2m.models.context import context_encoder_names

HELP = "write a fresh M2M model folder (preset tiny|sd21, variant self|dino)"
DESCRIPTION = """\
Build an untrained M2M model and save it as a pipeline folder that `m2m train --init`, `m2m sample`
and `m2m evaluate` read. Its UNet is Stable Diffusion's with every text cross-attention replaced by
Image-Set Attention (output projection zero-initialised, so it starts as the SD UNet).

Presets:
  tiny   32x32 pixel-space images, a small random UNet (and for --variant dino the small DINOv2 pre-trained
         on procedural images, weights/tiny/dinov2); CPU, no downloads
  sd21   SD-2.1-base weights from --sd-folder (and DINOv2-giant from --dino-folder for --variant dino)

--condition adds a zero-initialised task-condition embedder (section 6.2): camera (novel views) or
procedure (step positions).

--unet-config (tiny only) is a JSON object of UNet2DConditionModel config entries that replace the tiny
preset's, e.g. {"block_out_channels": [64, 128, 128]} for a wider UNet; `m2m train --init` trains it.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "init", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--preset", choices=presets.PRESETS, default="tiny", help="model size (default tiny)")
    parser.add_argument("--variant", choices=context_encoder_names(), default="self", help="M2M-Self or M2M-DINO")
    parser.add_argument("--condition", choices=["camera", "procedure"], help="add a task-condition embedder")
    parser.add_argument("--out", required=True, type=Path, help="the model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (tiny) and new layers")
    parser.add_argument("--sd-folder", type=Path, default=presets.SD21_FOLDER, help="SD-2.1-base folder (sd21)")
    parser.add_argument("--dino-folder", type=Path, default=None,
                        help=f"DINOv2 folder (dino; default: {presets.TINY_DINO_FOLDER} for tiny, {presets.DINO_FOLDER} for sd21)")
    parser.add_argument("--unet-config", type=Path, help="JSON file of UNet config entries replacing tiny's")
    return parser


def read_unet_config(path: Path | None) -> dict | None:
    """The JSON object in ``path``; a ValueError naming the file when it is not one, or names an entry
    the UNet does not take."""
    import json

    from m2m.build import tiny_unet_config

    if path is None:
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON (not UTF-8 text)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of UNet config entries")
    try:
        tiny_unet_config(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return config


def run(args: argparse.Namespace) -> int:
    import torch

    from m2m.build import build_pipeline
    from m2m.training.loop import check_model_folder, write_model_folder

    unet_config = read_unet_config(args.unet_config)
    check_model_folder(args.out)
    torch.manual_seed(args.seed)
    pipe = build_pipeline(
        args.preset, args.variant, condition=args.condition, seed=args.seed,
        sd_folder=args.sd_folder, dino_folder=args.dino_folder, unet_config=unet_config,
    )
    write_model_folder(args.out, pipe)
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    print(f"wrote an untrained M2M-{args.variant} ({args.preset}, {n_params:,} UNet parameters) to {args.out}")
    return 0
