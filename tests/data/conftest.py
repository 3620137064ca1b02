"""Fixtures for the data tests: a tiny random Stable Diffusion folder, captions, a tiny generator."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A random StableDiffusionPipeline in SD-2.1-base's folder layout (UNet/VAE (32, 64), CLIP width 32).

    It is saved with SD-2.1-base's original PNDM scheduler so that tests see the generator swap in Euler.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from m2m.data.tokenizer import write_tokenizer_folder

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        )
    )
    root = tmp_path_factory.mktemp("sd")
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(root / "clip-tokenizer"))
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / "tiny-stable-diffusion"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dino_folder(tmp_path_factory):
    """A random DINOv2 (hidden 32, 2 layers, patch 14) saved as a local folder."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, patch_size=14, image_size=56
    )
    folder = tmp_path_factory.mktemp("dino") / "tiny-dinov2"
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def captions_parquet(tmp_path_factory):
    """The shipped sample, filtered: 300 captions."""
    from m2m.data.captions import filter_captions
    from m2m.resources import resource_path

    root = tmp_path_factory.mktemp("captions")
    out = root / "filtered.parquet"
    filter_captions([resource_path("cc12m_sample.tsv")], out, root / "report.json")
    return out


class ColourGenerator:
    """A tiny in-test backend: each image is a flat colour from the caption's length and the seed."""

    name = "colour"

    def __init__(self, image_size: int = 8) -> None:
        self.image_size = image_size
        self.calls = 0

    def settings(self) -> dict:
        return {"image_size": self.image_size}

    def attributes(self, caption: str) -> dict:
        return {"length": len(caption)}

    def image(self, caption: str, seed: int) -> Image.Image:
        colour = [len(caption) % 256, seed % 256, seed >> 55]
        return Image.fromarray(np.full((self.image_size, self.image_size, 3), colour, np.uint8))

    def generate(self, captions, seeds):
        self.calls += 1
        return [[self.image(caption, seed) for seed in row] for caption, row in zip(captions, seeds)]


@pytest.fixture(scope="session")
def colour_generator_class():
    return ColourGenerator


@pytest.fixture
def colour_generator():
    return ColourGenerator()
