"""The Stable Diffusion MIS backend on a tiny random SD pipeline (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2m.data.sd_generator import LatentPrecomputer, StableDiffusionGenerator, check_sd_folder


@pytest.fixture(scope="module")
def generator(tiny_sd_folder):
    return StableDiffusionGenerator(tiny_sd_folder, steps=2, batch_size=4, device="cpu")


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_loads_with_euler_and_paper_settings(generator, tiny_sd_folder):
    from diffusers import EulerDiscreteScheduler

    assert json.loads((tiny_sd_folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == (
        "PNDMScheduler"
    )
    assert isinstance(generator.pipe.scheduler, EulerDiscreteScheduler)
    assert generator.settings() == {
        "model": tiny_sd_folder.name,
        "scheduler": "EulerDiscreteScheduler",
        "guidance_scale": 7.5,
        "steps": 2,
        "image_size": 32,  # the UNet's sample size times the VAE's downsampling
        "dtype": "float32",
    }
    assert generator.attributes("a red circle") == {}


def test_one_image_per_seed_and_seeds_decide_the_image(generator):
    sets = generator.generate(["a red circle", "a blue star"], [[1, 2, 3], [1, 2]])
    assert [len(s) for s in sets] == [3, 2]
    assert all(image.size == (32, 32) and image.mode == "RGB" for s in sets for image in s)
    red = [pixels(image) for image in sets[0]]
    assert not np.array_equal(red[0], red[1]) and not np.array_equal(red[1], red[2])
    again = generator.generate(["a red circle"], [[2]])[0][0]
    assert np.abs(pixels(again) - red[1]).max() <= 1
    # same seed, different caption: the text conditioning changes the image
    assert not np.array_equal(pixels(sets[1][0]), red[0])


def test_batching_across_captions_does_not_change_images(tiny_sd_folder, generator):
    captions, seeds = ["pastel squares", "neon ring", "plain"], [[5, 6], [7], [8, 9]]
    batched = generator.generate(captions, seeds)
    single = StableDiffusionGenerator(tiny_sd_folder, steps=2, batch_size=1, device="cpu").generate(captions, seeds)
    for a, b in zip(batched, single):
        for x, y in zip(a, b):
            assert np.abs(pixels(x) - pixels(y)).max() <= 1


def test_guidance_scale_is_applied(tiny_sd_folder, generator):
    plain = StableDiffusionGenerator(tiny_sd_folder, steps=2, guidance_scale=1.0, device="cpu")
    a = generator.generate(["a red circle"], [[4]])[0][0]
    b = plain.generate(["a red circle"], [[4]])[0][0]
    assert np.abs(pixels(a) - pixels(b)).max() > 1


def test_missing_or_wrong_folder_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="stabilityai/stable-diffusion-2-1-base"):
        check_sd_folder(tmp_path / "weights" / "stable-diffusion-2-1-base")
    (tmp_path / "not-sd").mkdir()
    (tmp_path / "not-sd" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not-sd: not a Stable Diffusion pipeline folder .*--sd-folder"):
        check_sd_folder(tmp_path / "not-sd")


def test_rejects_another_pipeline_class(tmp_path, tiny_sd_folder):
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(tiny_sd_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="expected 'StableDiffusionPipeline'"):
        check_sd_folder(folder)


def test_precomputed_latents_and_dino_features_match_the_encoders(tiny_sd_folder, tiny_dino_folder, generator):
    import torch
    from diffusers import AutoencoderKL
    from transformers import Dinov2Model

    from m2m.models.encoders import dino_features, encode_images

    images = generator.generate(["a red circle"], [[1, 2, 3]])[0]
    encoded = LatentPrecomputer(tiny_sd_folder, tiny_dino_folder, dino_size=56, batch_size=2, device="cpu")(images)
    assert encoded["latents"].shape == (3, 4, 16, 16) and encoded["latents"].dtype == torch.float16
    assert encoded["dino"].shape == (3, 1 + (56 // 14) ** 2, 32)
    pixels = torch.stack([torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in images]).float() / 127.5 - 1
    vae = AutoencoderKL.from_pretrained(tiny_sd_folder, subfolder="vae")
    dino = Dinov2Model.from_pretrained(tiny_dino_folder)
    with torch.no_grad():
        expected = encode_images(vae, pixels[None])[0]
        features = dino_features(dino, pixels[None], 56)[0]
    torch.testing.assert_close(encoded["latents"].float(), expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(encoded["dino"].float(), features, atol=2e-3, rtol=2e-3)
    assert set(LatentPrecomputer(tiny_sd_folder, device="cpu")(images)) == {"latents"}


def test_missing_dino_folder_says_what_to_download(tiny_sd_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="facebook/dinov2-giant"):
        LatentPrecomputer(tiny_sd_folder, tmp_path / "dinov2", device="cpu")
