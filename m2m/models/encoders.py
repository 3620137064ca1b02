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


def dino_encoder(preset: str, folder: str | Path | None = None):
    """``E_v`` from its local ``folder`` (default: the preset's, ``presets.DINO_FOLDERS``): DINOv2-giant for
    ``sd21`` (appendix A); for ``tiny`` the small DINOv2 pre-trained on procedural images, which must have
    the ``presets.TINY_DINO`` architecture (``m2m pretrain-encoder``)."""
    from transformers import Dinov2Model

    if preset not in presets.DINO_FOLDERS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {presets.PRESETS}")
    folder = Path(presets.DINO_FOLDERS[preset] if folder is None else folder)
    if not (folder / "config.json").exists():
        if preset == "tiny":
            raise FileNotFoundError(
                f"{folder}: the tiny preset's DINOv2 (config.json) not found; it ships in "
                f"{presets.TINY_DINO_FOLDER} (`m2m pretrain-encoder --out {folder}` makes it again)"
            )
        raise presets.missing_weights(folder, "DINOv2 (config.json)", "facebook/dinov2-giant")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "dinov2":
        raise ValueError(f"{folder}/config.json: model_type is {model_type!r}, not 'dinov2'")
    encoder = Dinov2Model.from_pretrained(folder, local_files_only=True).eval()
    if preset == "tiny":
        differ = [k for k, v in presets.TINY_DINO.items() if getattr(encoder.config, k) != v]
        if differ:
            raise ValueError(f"{folder}/config.json: {differ[0]} is {getattr(encoder.config, differ[0])!r}, "
                             f"not the tiny preset's {presets.TINY_DINO[differ[0]]!r}")
    return encoder


def dino_image_processor(size: int):
    """transformers' image processor doing what ``dino_features`` does to an image: the whole image resized
    to ``size`` x ``size`` (bicubic, no centre crop: the context keeps its borders; docs/model.md), scaled to
    [0, 1] and normalised with ImageNet's mean and std, as DINOv2 was trained. Saved beside the tiny E_v."""
    from transformers import BitImageProcessor

    return BitImageProcessor(
        do_resize=True, size={"height": size, "width": size}, resample=3, do_center_crop=False,  # 3: bicubic
        crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )


def dino_pixel_values(images: torch.Tensor, size: int) -> torch.Tensor:
    """What ``E_v`` is given: images ``(n, 3, H, W)`` in ``[-1, 1]`` resized to ``size`` (bicubic, antialiased,
    kept in range as a resized 8-bit image is) and normalised as DINOv2 was trained: ``(x - mean) / std`` of
    ``x`` in ``[0, 1]`` (``dino_image_processor`` does the same to 8-bit images)."""
    import torch
    import torch.nn.functional as F

    x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def dino_features(image_encoder, images: torch.Tensor, size: int) -> torch.Tensor:
    """``v = E_v(I)``: DINOv2 last hidden states ``(B, N, S, D)`` of images resized to ``size``."""
    x = dino_pixel_values(images.flatten(0, 1), size)
    hidden = image_encoder(pixel_values=x.to(image_encoder.dtype)).last_hidden_state
    return hidden.unflatten(0, images.shape[:2])
