"""The context encoders of Image-Set Attention (m2m/models/context.py): every part of M2M asks the registry.

A third encoder, a tiny random CLIP vision model as IP-Adapter uses, is defined and registered here and
nowhere else; it is built, trained, sampled, saved and loaded by the same UNet, pipeline and objective
as M2M-Self and M2M-DINO.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m2m.build import build_pipeline
from m2m.models import context
from m2m.models.context import CONTEXT_ENCODERS, DINO, SELF, ContextEncoder, context_encoder, register_context_encoder
from m2m.pipeline import M2MPipeline, load_on
from tests.models.conftest import randomize_image_set_attention

SHIPPED = Path(__file__).parents[2] / "models"
CLIP_WIDTH = 24  # not DINOv2's 32: the key/value width comes from the encoder
CLIP_MEAN = (0.4815, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2758)

pytestmark = pytest.mark.usefixtures("one_thread")


def clip_encoder(preset: str, folder):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if preset != "tiny":
        raise ValueError("the test's CLIP encoder is tiny only")
    config = CLIPVisionConfig(
        hidden_size=CLIP_WIDTH, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8,
    )
    return CLIPVisionModel(config).eval()


def clip_features(encoder, images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's last hidden states ``(B, N, 1 + 16, 24)``: the class token and 4 x 4 patches."""
    x = F.interpolate(images.flatten(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False)
    x = ((x + 1) / 2 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return encoder(pixel_values=x.to(encoder.dtype)).last_hidden_state.unflatten(0, images.shape[:2])


@pytest.fixture
def clip():
    """M2M-CLIP, registered for one test; ``calls`` counts the images its feature function encodes."""
    calls = []

    def features(encoder, images, size):
        calls.append(images.shape[0] * images.shape[1])
        return clip_features(encoder, images, size)

    register_context_encoder(ContextEncoder("clip", "M2M-CLIP", build=clip_encoder, features=features))
    yield calls
    del CONTEXT_ENCODERS["clip"]


def sample(pipe, images, **kwargs):
    kwargs = {"num_images": 2, "window": 2, "num_inference_steps": 2, "output_type": "pt", "progress": False} | kwargs
    return pipe(images, generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture
def images():
    return torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_an_unknown_or_taken_name_is_a_one_line_error(monkeypatch):
    # the library's own variants only (a benchmark imported earlier in this process may have registered its own)
    monkeypatch.setattr(context, "CONTEXT_ENCODERS", {"self": SELF, "dino": DINO})
    with pytest.raises(ValueError, match=r"^unknown M2M variant 'clip'; expected one of self, dino$"):
        context_encoder("clip")
    with pytest.raises(ValueError, match="'dino' is registered already"):
        register_context_encoder(ContextEncoder("dino", "M2M-DINO", build=clip_encoder, features=clip_features))
    with pytest.raises(ValueError, match="needs both build and features"):
        register_context_encoder(ContextEncoder("clip", "M2M-CLIP", build=clip_encoder))
    assert context_encoder("dino") is DINO and "clip" not in context.CONTEXT_ENCODERS


@pytest.mark.parametrize("name", ["self", "dino"])
def test_the_shipped_models_load_with_their_encoders(name, images):
    """Saved folders name their encoder by the UNet config's ``variant`` and the ``image_encoder`` component."""
    pipe = load_on(SHIPPED / f"tiny-m2m-{name}", "cpu")
    assert pipe.context_encoder is {"self": SELF, "dino": DINO}[name]
    assert (pipe.image_encoder is not None) == pipe.context_encoder.external
    torch.testing.assert_close(sample(pipe, images), sample(pipe, images, use_cache=False), atol=1e-5, rtol=0)


def test_a_registered_encoder_sets_the_key_value_width_and_its_cache_is_exact(clip, images):
    pipe = build_pipeline("tiny", "clip")
    randomize_image_set_attention(pipe.unet, std=0.1)
    assert pipe.unet.config.context_dim == CLIP_WIDTH
    assert {attn.to_k.in_features for attn, _ in pipe.unet.image_set_layers()} == {CLIP_WIDTH}
    cached = sample(pipe, images, guidance_scale=3.0)
    assert torch.allclose(cached, sample(pipe, images, guidance_scale=3.0, use_cache=False), atol=1e-5)
    assert not torch.allclose(cached, sample(pipe, -images, guidance_scale=3.0), atol=1e-3)


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_registered_encoder_trains_samples_saves_and_loads(clip, images, tmp_path):
    from m2m.cli import main
    from m2m.evaluation.evaluate import method_name
    from m2m.training.config import TrainConfig
    from m2m.training.loop import train
    from tests.training.test_precomputed import write_mis

    init, out = tmp_path / "init", tmp_path / "m2m-clip"
    assert main(["init", "--variant", "clip", "--out", str(init)]) == 0
    (tmp_path / "mis").mkdir()
    config = TrainConfig(
        out=out, variant="clip", init=init, data=write_mis(tmp_path / "mis"), steps=2, batch_size=2, n_images=3,
        checkpoint_every=0, sample_steps=1, sample_sets=1, sample_context=2, sample_generate=1,
    )
    assert train(config)["steps"] == 2 and (out / "samples.png").is_file()
    assert sum(clip) == 2 * 2 * 3 + 2  # 2 steps of 2 sets of 3 images, then samples.png's 2 preceding images

    pipe = load_on(out, "cpu")
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModel" and pipe.unet.config.context_dim == CLIP_WIDTH
    assert method_name(pipe, out) == "M2M-CLIP (m2m-clip)"
    encoded = sum(clip)
    generated = sample(pipe, images)
    assert sum(clip) - encoded == 3  # the 2 given images, then the first generated one
    pipe.save_pretrained(tmp_path / "saved")
    loaded = M2MPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.variant == "clip" and torch.equal(sample(loaded, images), generated)
