"""A tiny E_v that has seen images before: self-supervised pre-training of the tiny preset's DINOv2.

The paper's M2M-DINO reads a set through the last hidden states of a DINOv2 pre-trained (without labels) on
142M images. The tiny preset cannot download one, so its DINOv2 has random weights, and a random encoder's
tokens carry the palette but not the shape kind (``bench_context_probe.py``: shape at chance). This pilot
gives the same architecture (``presets.TINY_DINO``) a short self-supervised pre-training on the MIS's
training images, no attributes or captions read: SimCLR's contrastive loss (Chen et al. 2020) between two
augmented views of one image (``--positives image``) or of two images of one set (``--positives set``: the
pairing the MIS gives for free, as M2M's own training reads it), with augmentations that keep an object's
kind and change everything else that is easy to match on — a random rotation, scale and shift (affine,
reflected at the border), a flip, and the colour channels permuted and each inverted at random (so the
palette no longer tells two images apart).

Saves a transformers ``Dinov2Model`` folder (safetensors) and ``pretrain.json`` (settings and the loss curve);
``--init-out`` also writes an untrained tiny M2M-DINO pipeline with this encoder as its frozen ``image_encoder``,
for ``m2m train --init``. (The tiny preset's own E_v is supervised instead: ``m2m pretrain-encoder``,
docs/model.md.)

    python benchmarks/pretrain_encoder.py --out assets/bench/encoder/tiny-dinov2-simclr --steps 3000 \
        --init-out assets/bench/encoder/init-dino-simclr
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from learning.common import offline_on_cpu


def training_images(mis: Path) -> torch.Tensor:
    """The images of the MIS's train split by set, ``(sets, images per set, 3, 32, 32)`` in [-1, 1] (every
    set cut to the smallest set's count)."""
    from m2m.data.loader import read_mis_sets
    from m2m.pipeline import from_pil

    sets = read_mis_sets(mis, split="train")
    if not sets:
        raise SystemExit(f"{mis}: no training sets")
    count = min(len(s["images"]) for s in sets)
    return from_pil([[image.resize((32, 32)) for image in s["images"][:count]] for s in sets])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view per image: rotation (any angle), scale 0.8-1.25, shift up to 20% and a flip, reflected at
    the border; colour channels permuted and each inverted with probability 1/2."""
    n = images.shape[0]
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    scale = torch.exp(torch.empty(n).uniform_(math.log(0.8), math.log(1.25), generator=generator))
    shift = torch.empty(n, 2).uniform_(-0.2, 0.2, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rows = [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    order = torch.argsort(torch.rand(n, 3, generator=generator), dim=1)
    views = torch.gather(views, 1, order[:, :, None, None].expand_as(views))
    sign = torch.where(torch.rand(n, 3, 1, 1, generator=generator) < 0.5, -1.0, 1.0)
    return views * sign


def pairs(images: torch.Tensor, n: int, positives: str, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` positive pairs from ``images`` ``(sets, per set, 3, H, W)``: one image twice (``image``), or two
    different images of one set (``set``: what they share is what the set shares)."""
    sets = torch.randint(images.shape[0], (n,), generator=generator)
    a = torch.randint(images.shape[1], (n,), generator=generator)
    if positives == "image":
        return images[sets, a], images[sets, a]
    b = (a + torch.randint(1, images.shape[1], (n,), generator=generator)) % images.shape[1]  # another image
    return images[sets, a], images[sets, b]


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the other 2n - 1 views."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, partner)


def pretrain(images: torch.Tensor, args) -> tuple[torch.nn.Module, list[float]]:
    from transformers import Dinov2Config, Dinov2Model

    from m2m.models import presets
    from m2m.models.encoders import dino_features

    torch.manual_seed(args.seed)
    encoder = Dinov2Model(Dinov2Config(**presets.TINY_DINO)).train()  # the tiny preset's architecture, random
    width = encoder.config.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)

    def embed(views):  # the tokens M2M-DINO reads (dino_features), their mean through the projection head
        return head(dino_features(encoder, views[:, None], views.shape[-1])[:, 0].mean(1))

    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        first, second = pairs(images, args.batch_size, args.positives, generator)
        loss = nt_xent(embed(augment(first, generator)), embed(augment(second, generator)), args.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} loss {np.mean(losses[-100:]):.3f} lr {lr:.2e} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return encoder.eval(), losses


def write_init(encoder_folder: Path, out: Path, seed: int = 0) -> Path:
    """An untrained tiny M2M-DINO (``m2m init --variant dino``) whose ``image_encoder`` is the encoder in
    ``encoder_folder``: the same architecture, so every Image-Set Attention's keys/values keep their width."""
    from transformers import Dinov2Model

    from m2m.build import build_pipeline
    from m2m.models import presets

    pipe = build_pipeline("tiny", "dino", seed=seed)
    encoder = Dinov2Model.from_pretrained(encoder_folder, local_files_only=True).eval().requires_grad_(False)
    if any(getattr(encoder.config, k) != v for k, v in presets.TINY_DINO.items()):
        raise SystemExit(f"{encoder_folder}: not the tiny preset's DINOv2 architecture")
    pipe.register_modules(image_encoder=encoder)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("assets/bench/learning/mis"), help="a procedural MIS")
    parser.add_argument("--out", type=Path, required=True, help="the encoder folder to write")
    parser.add_argument("--init-out", type=Path, help="also write an untrained tiny M2M-DINO with this encoder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (two views each)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--positives", choices=("image", "set"), default="image",
                        help="a positive pair: two views of one image, or of two images of one set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or args.warmup < 1 or args.temperature <= 0:
        parser.error("--steps, --warmup >= 1, --batch-size >= 2 and --temperature > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_on_cpu(args.threads)
    images = training_images(args.data)
    if args.positives == "set" and images.shape[1] < 2:
        raise SystemExit(f"{args.data}: --positives set needs sets of two images or more")
    print(f"{images.shape[0]} training sets of {images.shape[1]} images, {args.data}", flush=True)
    start = time.perf_counter()
    encoder, losses = pretrain(images, args)
    args.out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(args.out, safe_serialization=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"settings": settings, "images": images.shape[0] * images.shape[1], "seconds": time.perf_counter() - start,
              "loss_every_100": [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)],
              "loss_first_10pct": float(np.mean(losses[: max(1, len(losses) // 10)])),
              "loss_last_10pct": float(np.mean(losses[-max(1, len(losses) // 10):]))}
    (args.out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", flush=True)
    if args.init_out:
        print(f"wrote {write_init(args.out, args.init_out, args.seed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
