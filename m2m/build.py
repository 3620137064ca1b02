"""Build a fresh ``M2MPipeline`` from a preset (``m2m init``), initialised from Stable Diffusion (section 6.1)."""

from __future__ import annotations

from pathlib import Path

import torch

from m2m.models import presets
from m2m.models.context import context_encoder
from m2m.models.unet import M2MUNet, load_sd_unet
from m2m.pipeline import M2MPipeline


def _context_encoder(variant: str, preset: str, folder: Path):
    """(the frozen external context encoder or None, its width: the UNet's ``context_dim``)."""
    encoder = context_encoder(variant)
    if not encoder.external:
        return None, None
    image_encoder = encoder.build(preset, folder)
    return image_encoder, encoder.width(image_encoder)


def tiny_unet_config(overrides: dict | None = None) -> dict:
    """``presets.TINY_UNET`` with ``overrides`` (UNet2DConditionModel config entries, e.g. a wider
    ``block_out_channels``); an entry the UNet does not take is a ValueError naming it."""
    import inspect

    from diffusers import UNet2DConditionModel

    overrides = dict(overrides or {})
    known = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a UNet2DConditionModel config entry")
    return {**presets.TINY_UNET, **overrides}


def _tiny_components(variant: str, condition: str | None, seed: int, unet_config: dict | None, encoder_folder):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    sd_unet = UNet2DConditionModel.from_config(tiny_unet_config(unet_config))  # stands in for SD's weights
    settings = presets.PRESET_SETTINGS["tiny"]
    image_encoder, context_dim = _context_encoder(variant, "tiny", encoder_folder)
    unet = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=context_dim, condition=condition, **settings)
    return unet, DDIMScheduler(**presets.TINY_SCHEDULER), None, image_encoder


def _sd21_components(variant: str, condition: str | None, sd_folder: Path, encoder_folder: Path):
    from diffusers import AutoencoderKL, DDIMScheduler

    sd_folder = Path(sd_folder)
    for part in ("unet", "vae", "scheduler"):
        if not (sd_folder / part).is_dir():
            raise presets.missing_weights(sd_folder, f"the {part}/ folder", "stabilityai/stable-diffusion-2-1-base")
    image_encoder, context_dim = _context_encoder(variant, "sd21", encoder_folder)
    settings = presets.PRESET_SETTINGS["sd21"]
    unet = M2MUNet.from_sd_unet(
        load_sd_unet(sd_folder / "unet"), variant, context_dim=context_dim, condition=condition, **settings
    )
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae", local_files_only=True)
    scheduler = DDIMScheduler.from_pretrained(sd_folder / "scheduler", local_files_only=True)
    return unet, scheduler, vae, image_encoder


def build_pipeline(
    preset: str = "tiny",
    variant: str = "self",
    condition: str | None = None,
    seed: int = 0,
    sd_folder: str | Path = presets.SD21_FOLDER,
    dino_folder: str | Path | None = None,
    unet_config: dict | None = None,
):
    """A fresh M2M pipeline: ``tiny`` (random SD stand-in, CPU) or ``sd21`` (SD-2.1-base weights).

    ``dino_folder``: the local weights folder the external context encoder is built from, DINOv2's for
    M2M-DINO (None: the preset's, ``presets.DINO_FOLDERS``). ``unet_config``: entries that replace ``presets.TINY_UNET``'s (``tiny``
    only: the ``sd21`` UNet is SD-2.1-base's own).
    """
    if unet_config and preset != "tiny":
        raise ValueError(f"a UNet config is for the tiny preset; the {preset} UNet comes with its weights")
    if preset == "tiny":
        parts = _tiny_components(variant, condition, seed, unet_config, dino_folder)
    elif preset == "sd21":
        parts = _sd21_components(variant, condition, sd_folder, dino_folder)
    else:
        raise ValueError(f"unknown preset {preset!r}; expected one of {presets.PRESETS}")
    unet, scheduler, vae, image_encoder = parts
    if image_encoder is not None:
        image_encoder.requires_grad_(False)
    return M2MPipeline(
        unet=unet, scheduler=scheduler, vae=vae, image_encoder=image_encoder,
        guidance_scale=presets.GUIDANCE_SCALE[preset],
    )


def add_condition(pipe, condition: str):
    """A copy of a pre-trained pipeline's UNet with a task-condition embedder added (section 6.2).

    The new embedder's projections are zero-initialised, so the fine-tuning starts from the pre-trained
    model's predictions.
    """
    old = pipe.unet
    if old.config.condition == condition:
        return pipe
    config = dict(old.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["condition"] = condition
    unet = M2MUNet(**config)
    missing, unexpected = unet.load_state_dict(old.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"cannot add a {condition} condition: unexpected weights {unexpected[:3]}")
    unet = unet.to(old.device) if old.dtype == unet.dtype else unet.to(old.device, old.dtype)
    pipe.register_modules(unet=unet)
    return pipe
