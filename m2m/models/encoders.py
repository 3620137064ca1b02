"""The two image encoders: the autoencoder ``E``/``D`` of latent diffusion (section 3) and DINOv2
``E_v`` of M2M-DINO (section 5.2). Images are ``(B, N, 3, H, W)`` in ``[-1, 1]`` throughout.

torch and transformers are imported where they are used: the context-encoder registry
(``m2m.models.context``) names DINOv2's functions, and ``m2m --help`` reads it without loading them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from m2m.models import presets

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """``z_0 = E(I)`` scaled by the VAE's scaling factor (0.18215 for SD-2.1); identity without a VAE."""
    if vae is None:
        return images
    latents = vae.encode(images.flatten(0, 1).to(vae.dtype)).latent_dist.mode()
    return (latents * vae.config.scaling_factor).unflatten(0, images.shape[:2])


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """``I = D(z_0)``, clamped to ``[-1, 1]``; identity without a VAE."""
    if vae is not None:
        flat = latents.flatten(0, 1).to(vae.dtype) / vae.config.scaling_factor
        latents = vae.decode(flat).sample.unflatten(0, latents.shape[:2])
    return latents.clamp(-1, 1)


def dino_encoder(preset: str, folder: str | Path):
    """``E_v``: a small random DINOv2 (``tiny``) or DINOv2-giant from its local ``folder`` (``sd21``, appendix A)."""
    from transformers import Dinov2Config, Dinov2Model

    if preset == "tiny":
        return Dinov2Model(Dinov2Config(**presets.TINY_DINO)).eval()
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise presets.missing_weights(folder, "DINOv2 (config.json)", "facebook/dinov2-giant")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{folder}/config.json: model_type is {model_type!r}, not 'dinov2'")
    return Dinov2Model.from_pretrained(folder, local_files_only=True).eval()


def dino_features(image_encoder, images: torch.Tensor, size: int) -> torch.Tensor:
    """``v = E_v(I)``: DINOv2 last hidden states ``(B, N, S, D)`` of images resized to ``size``."""
    import torch
    import torch.nn.functional as F

    x = images.flatten(0, 1).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x + 1) / 2 - mean) / std
    hidden = image_encoder(pixel_values=x.to(image_encoder.dtype)).last_hidden_state
    return hidden.unflatten(0, images.shape[:2])
