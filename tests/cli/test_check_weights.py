"""``m2m check-weights``: usable weight-shaped folders pass; each kind of damage is one line naming the file."""

from __future__ import annotations

import json
import shutil

import pytest

from m2m.cli import main
from m2m.weight_folders import CLIP_NAME, DINO_NAME, SD_NAME


@pytest.fixture
def weights(weights_folder, tmp_path):
    """A copy of the weight-shaped folders that a test may damage."""
    return shutil.copytree(weights_folder, tmp_path / "weights")


def check(capsys, *paths) -> tuple[int, list[str]]:
    code = main(["check-weights", *map(str, paths)])
    return code, capsys.readouterr().out.strip().splitlines()


def edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_weight_shaped_folders_pass(weights, capsys):
    code, lines = check(capsys, weights / SD_NAME, weights / DINO_NAME, weights / CLIP_NAME)
    assert code == 0
    assert lines == [
        f"{weights / SD_NAME}: ok (StableDiffusionPipeline)",
        f"{weights / DINO_NAME}: ok (Dinov2Model)",
        f"{weights / CLIP_NAME}: ok (CLIPModel)",
    ]


def test_a_truncated_safetensors_file(weights, capsys):
    file = weights / SD_NAME / "unet" / "diffusion_pytorch_model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    code, lines = check(capsys, weights / SD_NAME)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{file}: unreadable safetensors") and "download it again" in lines[0]


def test_a_missing_weights_file_and_a_missing_folder(weights, capsys):
    (weights / DINO_NAME / "model.safetensors").unlink()
    code, lines = check(capsys, weights / DINO_NAME, weights / "stable-diffusion-2-1")
    assert code == 1
    assert lines == [
        f"{weights / DINO_NAME / 'model.safetensors'}: missing",
        f"{weights / 'stable-diffusion-2-1'}: not found; download the weights there (docs/pipeline.md lists them)",
    ]


def test_a_wrong_component_class(weights, capsys):
    edit_json(weights / SD_NAME / "model_index.json", unet=["diffusers", "UNet2DModel"])
    code, lines = check(capsys, weights / SD_NAME)
    assert code == 1
    assert lines == [f"{weights / SD_NAME / 'model_index.json'}: unet is ['diffusers', 'UNet2DModel'], "
                     "expected ['diffusers', 'UNet2DConditionModel']"]


def test_a_config_that_does_not_fit_the_weights(weights, capsys):
    edit_json(weights / SD_NAME / "vae" / "config.json", latent_channels=8)
    edit_json(weights / DINO_NAME / "config.json", hidden_size=64)
    code, lines = check(capsys, weights / SD_NAME, weights / DINO_NAME)
    assert code == 1
    vae = [line for line in lines if line.startswith(str(weights / SD_NAME / "vae"))]
    assert len(vae) == 1 and "tensors with other shapes than the config implies" in vae[0]
    assert f"{weights / SD_NAME / 'unet' / 'config.json'}: in_channels 4 but the VAE has 8 latent channels" in lines
    assert any(line.startswith(f"{weights / DINO_NAME}: ") and "Dinov2Model" in line for line in lines)


def test_a_tensor_of_an_unexpected_dtype(weights, capsys):
    from safetensors.torch import load_file, save_file

    file = weights / SD_NAME / "vae" / "diffusion_pytorch_model.safetensors"
    save_file({name: tensor.double() for name, tensor in load_file(file).items()}, file)
    code, lines = check(capsys, weights / SD_NAME)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{weights / SD_NAME / 'vae'}: ") and "dtype F64" in lines[0]


def test_a_clip_folder_without_its_processor(weights, capsys):
    for name in ("processor_config.json", "preprocessor_config.json"):
        (weights / CLIP_NAME / name).unlink(missing_ok=True)
    code, lines = check(capsys, weights / CLIP_NAME)
    assert code == 1
    assert lines == [f"{weights / CLIP_NAME / 'preprocessor_config.json'}: missing (the CLIP image processor)"]
