"""Pre-training of the tiny preset's context encoder ``E_v`` (M2M-DINO, section 5.2) on procedural images.

The paper's ``E_v`` is a DINOv2 pre-trained on 142M images, whose last hidden states carry what an image
shows. The tiny preset's DINOv2 (``presets.TINY_DINO``) cannot be downloaded, and with random weights its
tokens carry the palette but not the shape kind. Here it learns to carry all three attributes of the
procedural MIS, supervised: a linear head per attribute (palette, shape, texture) reads the mean of the
tokens M2M-DINO attends to (``dino_features``), trained with the sum of the three cross-entropies.
docs/model.md says why supervised and not self-supervised.

The images are drawn fresh from the procedural generator (``m2m/data/procedural.py``), never read from an
MIS: set ``k`` of the training images has the caption ``"<palette> <shape> <texture> encoder set <k>"``
with its attributes drawn from the seed, so no training image is an image of the pipeline's MIS, whose
captions are CC12M's (and the probe of ``benchmarks/bench_context_probe.py`` reads only those).
Everything is drawn from ``seed``: the same command on the same number of torch threads writes the same
weights. A run checkpoints every ``checkpoint_every`` steps (``<out>.ckpt``); the same command run again
resumes there and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from m2m.data.procedural import ATTRIBUTES, ProceduralGenerator, caption_attributes
from m2m.models import presets
from m2m.training.config import EncoderPretraining

CAPTION = "{palette} {shape} {texture} encoder set {k}"


def draw_sets(count: int, first: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """Sets ``first .. first + count - 1``: ``(caption, attributes)``, the attributes uniform and seeded."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, first])))
    sets = []
    for k in range(first, first + count):
        chosen = {a: values[int(rng.integers(len(values)))] for a, values in ATTRIBUTES.items()}
        caption = CAPTION.format(k=k, **chosen)
        if caption_attributes(caption) != chosen:  # the caption must name exactly what was drawn
            raise AssertionError(f"{caption!r} reads as {caption_attributes(caption)}")
        sets.append((caption, chosen))
    return sets


def render_sets(sets, images_per_set: int, image_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images ``(n, 3, H, W)`` in ``[-1, 1]`` (seeds 0.. of each set) and each image's attribute indices."""
    generator = ProceduralGenerator(image_size)
    images = np.stack([generator.render(caption, seed) for caption, _ in sets for seed in range(images_per_set)])
    labels = {
        a: torch.tensor([values.index(attrs[a]) for _, attrs in sets for _ in range(images_per_set)])
        for a, values in ATTRIBUTES.items()
    }
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, labels


class AttributeHeads(torch.nn.Module):
    """One linear read-out per attribute of the mean token: what the supervision asks of ``E_v``."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(width, len(v)) for a, v in ATTRIBUTES.items()})

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = tokens.mean(1)
        return {a: head(pooled) for a, head in self.heads.items()}


def tiny_dino_tokens(encoder, images: torch.Tensor, size: int) -> torch.Tensor:
    """The tokens ``(n, S, D)`` M2M-DINO reads from single images ``(n, 3, H, W)``: ``dino_features``'s."""
    from m2m.models.encoders import dino_features

    return dino_features(encoder, images[:, None], size)[:, 0]


@torch.no_grad()
def accuracy(encoder, heads, images, labels, size: int, batch: int = 512) -> dict[str, float]:
    """The heads' accuracy per attribute on ``images``."""
    encoder.eval()
    predicted = {a: [] for a in ATTRIBUTES}
    for start in range(0, len(images), batch):
        logits = heads(tiny_dino_tokens(encoder, images[start:start + batch], size))
        for a in ATTRIBUTES:
            predicted[a].append(logits[a].argmax(1))
    encoder.train()
    return {a: float((torch.cat(predicted[a]) == labels[a]).float().mean()) for a in ATTRIBUTES}


def pretrain_encoder(cfg: EncoderPretraining, log=print):
    """Train ``presets.TINY_DINO`` from random weights; returns the frozen encoder and the record to save."""
    from transformers import Dinov2Config, Dinov2Model

    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    images, labels = render_sets(draw_sets(cfg.sets, 0, cfg.seed), cfg.images_per_set, cfg.image_size)
    val_images, val_labels = render_sets(
        draw_sets(cfg.validation_sets, cfg.sets, cfg.seed), cfg.images_per_set, cfg.image_size
    )
    log(f"rendered {len(images)} training and {len(val_images)} validation images "
        f"({time.perf_counter() - start:.0f} s)")
    encoder = Dinov2Model(Dinov2Config(**presets.TINY_DINO)).train()
    heads = AttributeHeads(encoder.config.hidden_size)
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    state = {"step": 0, "losses": [], "curve": [], "seconds": 0.0}
    if resume_point(cfg).is_file():
        state = load_checkpoint(resume_point(cfg), settings, encoder, heads, optimizer, order)
        log(f"resumed from {resume_point(cfg)} at step {state['step']}")
    losses, curve, begun = state["losses"], state["curve"], time.perf_counter() - state["seconds"]
    for step in range(state["step"], cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.randint(len(images), (cfg.batch_size,), generator=order)
        logits = heads(tiny_dino_tokens(encoder, images[batch], cfg.image_size))
        loss = sum(F.cross_entropy(logits[a], labels[a][batch]) for a in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0 or step + 1 == cfg.steps:
            held_out = accuracy(encoder, heads, val_images, val_labels, cfg.image_size)
            curve.append({"step": step + 1, "loss": float(np.mean(losses[-250:])), "validation": held_out})
            log(f"step {step + 1}/{cfg.steps} loss {curve[-1]['loss']:.3f} validation "
                + ", ".join(f"{a} {v:.2f}" for a, v in held_out.items())
                + f" ({time.perf_counter() - begun:.0f} s)")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            state = {"step": step + 1, "losses": losses, "curve": curve, "seconds": time.perf_counter() - begun}
            save_checkpoint(resume_point(cfg), settings, state, encoder, heads, optimizer, order)
    encoder = encoder.eval().requires_grad_(False)
    record = {"settings": settings, "architecture": presets.TINY_DINO, "training_images": len(images),
              "validation_images": len(val_images), "seconds": round(time.perf_counter() - begun, 1),
              "curve": curve, "validation": curve[-1]["validation"]}
    return encoder, record


def resume_point(cfg: EncoderPretraining) -> Path:
    """Where a run keeps its last checkpoint: ``<out>.ckpt/state.pt``, removed once the encoder is saved."""
    out = Path(cfg.out)
    return out.with_name(out.name + ".ckpt") / "state.pt"


def save_checkpoint(path: Path, settings: dict, state: dict, encoder, heads, optimizer, order) -> None:
    """Everything the loop needs to go on as if never stopped, written atomically (temp name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"settings": settings, "state": state, "encoder": encoder.state_dict(), "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(), "order": order.get_state()}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, settings: dict, encoder, heads, optimizer, order) -> dict:
    """Restore a checkpoint of this run (tensors and plain values only: ``weights_only``); one made with
    other settings is a ValueError naming the first that differs."""
    saved = torch.load(path, weights_only=True)
    differ = [k for k in settings if saved["settings"].get(k) != settings[k]]
    if differ:
        raise ValueError(f"{path}: made with {differ[0]}={saved['settings'].get(differ[0])!r}, not "
                         f"{settings[differ[0]]!r}; remove it to start afresh")
    encoder.load_state_dict(saved["encoder"])
    heads.load_state_dict(saved["heads"])
    optimizer.load_state_dict(saved["optimizer"])
    order.set_state(saved["order"])
    return saved["state"]


def save_encoder(encoder, record: dict, out: Path) -> Path:
    """A transformers ``Dinov2Model`` folder (config.json, model.safetensors), its image processor
    (preprocessor_config.json: ``dino_features``'s preprocessing) and ``pretrain.json``."""
    from m2m.models.encoders import dino_image_processor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out, safe_serialization=True)
    dino_image_processor(record["settings"]["image_size"]).save_pretrained(out)
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out.with_name(out.name + ".ckpt"), ignore_errors=True)
    return out
