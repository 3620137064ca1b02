"""m2m/models/encoders.py: what E_v and the autoencoder are given, against transformers' and diffusers' own
preprocessing of the same images, and the tiny preset's E_v folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2m.models import presets
from m2m.models.encoders import dino_encoder, dino_features, dino_pixel_values, encode_images
from m2m.pipeline import from_pil

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def pictures(size: int, count: int = 3, seed: int = 0) -> list[Image.Image]:
    """8-bit RGB images with flat regions, sharp edges and noise (what a resize treats differently)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        array = np.zeros((size, size, 3), dtype=np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
        corner = rng.integers(0, size // 2, 2)
        array[corner[0]:corner[0] + size // 2, corner[1]:corner[1] + size // 3] = rng.integers(0, 256, 3)
        array[size // 2:] = rng.integers(0, 256, (size - size // 2, size, 3), dtype=np.uint8)
        images.append(Image.fromarray(array))
    return images


def as_processed(folder: Path, images: list[Image.Image], **overrides) -> torch.Tensor:
    """transformers' own image processor of the DINOv2 ``folder`` (its ``preprocessor_config.json``)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return processor(images=images, return_tensors="pt", **overrides)["pixel_values"]


def e_v_tokens(encoder, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(pixel_values=pixel_values).last_hidden_state


def assert_resized_alike(pixels: torch.Tensor, expected: torch.Tensor) -> None:
    """Resized the same way, up to 8-bit rounding and the two resamplers' edges: PIL's bicubic on 8-bit images
    (the processor) and torch's antialiased bicubic on floats differ by about a level on average and by more
    on under 2% of the values, next to sharp edges. Bilinear, plain bicubic or nearest resizing differ by
    0.04-0.5 on average, on 28-54% of the values."""
    difference = (pixels - expected).abs()
    assert difference.mean() < 0.01 and (difference > 0.05).float().mean() < 0.02, (
        float(difference.mean()), float((difference > 0.05).float().mean()))


def test_tiny_e_v_reads_an_image_as_its_folders_image_processor_gives_it():
    """The shipped folder's processor: the preset's own 32-px images as they are, others resized to 32;
    ImageNet's normalisation of [0, 1]."""
    folder = REPO / presets.TINY_DINO_FOLDER
    encoder = dino_encoder("tiny", folder)
    size = presets.PRESET_SETTINGS["tiny"]["dino_image_size"]
    images = pictures(size)
    with torch.no_grad():
        tokens = dino_features(encoder, from_pil([images]), size)[0]
    torch.testing.assert_close(tokens, e_v_tokens(encoder, as_processed(folder, images)), atol=1e-4, rtol=0)
    larger = pictures(48)
    assert_resized_alike(dino_pixel_values(from_pil([larger])[0], size), as_processed(folder, larger))


def test_sd21_e_v_reads_an_image_as_dinov2_giants_processor_gives_it_without_the_crop(tiny_dino_folder):
    """facebook/dinov2-giant's processor resizes the short side to 256 and crops the centre 224; M2M-DINO
    resizes the whole context image to 224 (docs/model.md): the same processor without the crop."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_dino_folder, local_files_only=True)
    size = presets.PRESET_SETTINGS["sd21"]["dino_image_size"]
    assert processor.crop_size == {"height": size, "width": size}
    whole = {"size": {"height": size, "width": size}, "do_center_crop": False}
    encoder = dino_encoder("sd21", tiny_dino_folder)
    images = pictures(size, count=2)
    with torch.no_grad():
        tokens = dino_features(encoder, from_pil([images]), size)[0]
    expected = e_v_tokens(encoder, as_processed(tiny_dino_folder, images, **whole))
    torch.testing.assert_close(tokens, expected, atol=1e-4, rtol=0)
    smaller = pictures(64)  # the MIS's 512-px images and the weight-shaped pipeline's 32-px ones are resized too
    assert_resized_alike(dino_pixel_values(from_pil([smaller])[0], size),
                         as_processed(tiny_dino_folder, smaller, **whole))


def test_the_autoencoder_gets_images_in_its_range_and_scaled_latents(tiny_sd_folder):
    """diffusers' VaeImageProcessor brings 8-bit images to [-1, 1] for SD's AutoencoderKL; z_0 = E(I) * 0.18215."""
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    images = pictures(32)
    expected_pixels = VaeImageProcessor().preprocess(images)
    pixels = from_pil([images])
    torch.testing.assert_close(pixels[0], expected_pixels, atol=1e-6, rtol=0)
    vae = AutoencoderKL.from_pretrained(tiny_sd_folder / "vae", local_files_only=True).eval()
    with torch.no_grad():
        expected = vae.encode(expected_pixels).latent_dist.mode() * vae.config.scaling_factor
        latents = encode_images(vae, pixels)[0]
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)


def test_the_shipped_tiny_e_v_is_the_presets_pretrained_encoder_and_a_missing_one_says_where_it_ships(tmp_path):
    encoder = dino_encoder("tiny")
    assert all(getattr(encoder.config, k) == v for k, v in presets.TINY_DINO.items())
    assert not encoder.training
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*ships in {presets.TINY_DINO_FOLDER}"):
        dino_encoder("tiny", tmp_path)
