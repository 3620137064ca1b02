"""The Stable Diffusion MIS generator (section 4): SD-2.1-base, Euler discrete scheduler, guidance 7.5.

Every image has its own ``torch.Generator`` seeded with its own seed, so a set is the same whether
its images are drawn one at a time or batched with other captions' images.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from m2m.device import pick_device

MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_sd_folder(folder: str | Path) -> Path:
    """The folder, if it holds a ``StableDiffusionPipeline``; otherwise a one-line error saying what to fetch."""
    folder = Path(folder)
    fetch = (
        f"download {MODEL_ID} (e.g. `huggingface-cli download {MODEL_ID} --local-dir {folder}`) "
        "or pass its folder with --sd-folder"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Stable Diffusion weights not found; {fetch}")
    index = folder / "model_index.json"
    missing = [name for name in SUBFOLDERS if not (folder / name).is_dir()]
    if not index.is_file() or missing:
        what = "model_index.json" if not index.is_file() else ", ".join(missing)
        raise ValueError(f"{folder}: not a Stable Diffusion pipeline folder (no {what}); {fetch}")
    try:
        pipeline_class = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except json.JSONDecodeError as err:
        raise ValueError(f"{index}: unreadable ({err}); {fetch}") from err
    if pipeline_class != "StableDiffusionPipeline":
        raise ValueError(f"{index}: _class_name is {pipeline_class!r}, expected 'StableDiffusionPipeline'; {fetch}")
    return folder


class StableDiffusionGenerator:
    """MIS images from a local SD folder: ``EulerDiscreteScheduler``, classifier-free guidance ``s``."""

    name = "sd"

    def __init__(
        self,
        folder: str | Path,
        guidance_scale: float = 7.5,
        steps: int = 25,
        image_size: int | None = None,
        batch_size: int = 8,
        device: str = "auto",
    ) -> None:
        import torch
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        folder = check_sd_folder(folder)
        if steps < 1:
            raise ValueError(f"--steps: must be positive, got {steps}")
        if batch_size < 1:
            raise ValueError(f"--batch-size: must be positive, got {batch_size}")
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(
            folder, dtype=self.dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.image_size = image_size or native
        if self.image_size % (pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)):
            raise ValueError(f"--image-size {self.image_size}: not a multiple of the UNet's downsampling")
        self.folder = folder
        self.guidance_scale = guidance_scale
        self.steps = steps
        self.batch_size = batch_size

    def settings(self) -> dict:
        return {
            "model": self.folder.name,
            "scheduler": "EulerDiscreteScheduler",
            "guidance_scale": self.guidance_scale,
            "steps": self.steps,
            "image_size": self.image_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def attributes(self, caption: str) -> dict:
        return {}

    def generate(self, captions: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        """Batches of ``batch_size`` (caption, seed) pairs across captions, one generator per image."""
        import torch

        if len(captions) != len(seeds):
            raise ValueError(f"got {len(captions)} captions but {len(seeds)} seed lists")
        pairs = [(i, caption, seed) for i, (caption, row) in enumerate(zip(captions, seeds)) for seed in row]
        sets: list[list[Image.Image]] = [[] for _ in captions]
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            generators = [torch.Generator(self.device).manual_seed(seed) for _, _, seed in batch]
            with torch.inference_mode():
                images = self.pipe(
                    prompt=[caption for _, caption, _ in batch],
                    height=self.image_size,
                    width=self.image_size,
                    num_inference_steps=self.steps,
                    guidance_scale=self.guidance_scale,
                    generator=generators,
                    output_type="pil",
                ).images
            for (i, _, _), image in zip(batch, images):
                sets[i].append(image)
        return sets


class LatentPrecomputer:
    """Encodings stored beside a set's images so that training skips them: ``z_0 = E(I)`` with the SD VAE
    (section 3) and, given a DINOv2 folder, ``v = E_v(I)`` (section 5.2), both fp16.

    They use ``m2m.models.encoders``, the functions training uses, so precomputed and on-the-fly
    encodings agree. DINO features are large: 25 x 257 x 1536 fp16 (DINOv2-giant, 224²) is 20 MB a set.
    """

    def __init__(
        self,
        sd_folder: str | Path,
        dino_folder: str | Path | None = None,
        dino_size: int = 224,
        batch_size: int = 8,
        device: str = "auto",
    ) -> None:
        import torch
        from diffusers import AutoencoderKL

        sd_folder = check_sd_folder(sd_folder)
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae", dtype=self.dtype, local_files_only=True)
        self.vae.to(self.device).eval()
        self.dino = None
        if dino_folder is not None:
            from transformers import Dinov2Model

            dino_folder = Path(dino_folder)
            if not (dino_folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"{dino_folder}: DINOv2 weights not found; download facebook/dinov2-giant (e.g. `huggingface-cli "
                    f"download facebook/dinov2-giant --local-dir {dino_folder}`) or pass its folder with --dino-folder"
                )
            self.dino = Dinov2Model.from_pretrained(dino_folder, dtype=self.dtype, local_files_only=True)
            self.dino.to(self.device).eval()
        self.names = (sd_folder.name, dino_folder.name if dino_folder is not None else None)
        self.dino_size = dino_size
        self.batch_size = batch_size

    def settings(self) -> dict:
        vae, dino = self.names
        return {"vae": vae, "dino": dino, "dino_size": self.dino_size if dino else None, "stored_dtype": "float16"}

    def __call__(self, images: list[Image.Image]) -> dict:
        """``{"latents": (M, C, h, w)[, "dino": (M, S, D)]}`` of one set's M images, on CPU."""
        import numpy as np
        import torch

        from m2m.models.encoders import dino_features, encode_images

        pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images]))
        pixels = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out: dict[str, list] = {"latents": [], "dino": []}
        with torch.inference_mode():
            for chunk in pixels.split(self.batch_size):
                chunk = chunk.unsqueeze(0).to(self.device)
                out["latents"].append(encode_images(self.vae, chunk)[0].half().cpu())
                if self.dino is not None:
                    out["dino"].append(dino_features(self.dino, chunk, self.dino_size)[0].half().cpu())
        return {name: torch.cat(parts).contiguous() for name, parts in out.items() if parts}
