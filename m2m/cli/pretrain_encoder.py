"""``m2m pretrain-encoder``: the tiny preset's ``E_v`` (a DINOv2) pre-trained on procedural images."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m.cli.flags import HelpFormatter

HELP = "pre-train the tiny preset's DINOv2 E_v on procedural images (writes weights/tiny/dinov2)"
DESCRIPTION = """\
Train the tiny preset's context encoder E_v (a transformers Dinov2Model of presets.TINY_DINO) from
random weights to carry what a procedural image shows: a linear head per attribute (palette, shape
kind, texture) reads the mean of its tokens, trained with the sum of their cross-entropies. The
images are drawn fresh from the procedural generator (none of them an image of an MIS); a
validation set drawn after them gives the heads' held-out accuracy as training goes.

Writes a Dinov2Model folder (config.json, model.safetensors), its image processor
(preprocessor_config.json: what M2M-DINO does to an image before E_v reads it) and pretrain.json
(settings, loss and validation curve). Everything is drawn from --seed: the same command on the same
number of --threads writes the same weights. The shipped encoder (weights/tiny/dinov2/README.md) was
made with the defaults:

  m2m pretrain-encoder --out weights/tiny/dinov2 --threads 1
"""


def register(subparsers) -> argparse.ArgumentParser:
    from m2m.training.config import EncoderPretraining as D

    parser = subparsers.add_parser("pretrain-encoder", help=HELP, description=DESCRIPTION,
                                   formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the encoder folder to write")
    parser.add_argument("--sets", type=int, default=D.sets, help="distinct procedural sets drawn for training")
    parser.add_argument("--images-per-set", type=int, default=D.images_per_set, help="images rendered per set")
    parser.add_argument("--steps", type=int, default=D.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=D.batch_size, help="images per step")
    parser.add_argument("--lr", type=float, default=D.lr, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--validation-sets", type=int, default=D.validation_sets, help="held-out sets drawn")
    parser.add_argument("--seed", type=int, default=D.seed, help="seed of the sets, the weights and the batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from m2m.training.config import EncoderPretraining
    from m2m.training.encoder import pretrain_encoder, save_encoder

    cfg = EncoderPretraining(
        out=args.out, sets=args.sets, images_per_set=args.images_per_set, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, validation_sets=args.validation_sets, seed=args.seed,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, record = pretrain_encoder(cfg, log=lambda line: print(line, flush=True))
    record["threads"] = torch.get_num_threads()
    save_encoder(encoder, record, args.out)
    print(f"wrote {args.out} (validation: "
          + ", ".join(f"{a} {v:.2f}" for a, v in record["validation"].items()) + ")")
    return 0
