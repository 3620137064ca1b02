"""benchmarks/learning/control.py: the control run's context is a token stating the set's kind, wired
through training, saving, loading and sampling like any variant."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from m2m.training import loop
from m2m.training.config import TrainConfig
from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from learning.control import CONTROL, KindToken  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


def kind_sets(shapes: list[str], seed: int = 0, palette: str = "ocean", texture: str = "plain") -> torch.Tensor:
    """``(S, 3, 3, 32, 32)`` procedural sets in [-1, 1], one per shape keyword."""
    from m2m.data.procedural import ProceduralGenerator
    from m2m.pipeline import from_pil

    captions = [f"{palette} {texture} {shape} {i}" for i, shape in enumerate(shapes)]
    return from_pil(ProceduralGenerator(32).generate(captions, [[seed + 10 * i + j for j in range(3)]
                                                                 for i in range(len(shapes))]))


def test_the_token_states_each_sets_kind_read_from_its_pixels():
    from m2m.data.procedural import PALETTES, TEXTURES

    shapes = ["ball", "box"]
    sets = torch.cat([kind_sets(shapes, 100 * p + t, palette, texture)
                      for p, palette in enumerate(PALETTES) for t, texture in enumerate(TEXTURES)])
    tokens = KindToken()(sets)
    assert tokens.shape == (len(sets), 3, 1, 2)
    truth = torch.tensor([0, 1] * (len(sets) // 2))
    assert torch.equal(tokens[:, 0, 0].argmax(-1), truth)  # every set's kind, whatever its palette and texture
    assert torch.equal(tokens[:, 1:], tokens[:, :1].expand(-1, 2, -1, -1))  # every image states the set's kind
    assert torch.equal(tokens.sum(-1), torch.ones(len(sets), 3, 1))


def test_an_image_with_no_object_states_nothing():
    tokens = KindToken()(torch.full((1, 2, 3, 32, 32), -1.0))
    assert torch.equal(tokens, torch.zeros(1, 2, 1, 2))


@pytest.mark.slow
def test_the_control_trains_saves_and_loads_with_the_kind_token_as_its_context(mis, tmp_path):  # noqa: F811
    from m2m.pipeline import M2MPipeline
    from m2m.training.objective import clean_context

    out = tmp_path / "m2m-control"
    cfg = TrainConfig(out=out, data=mis, variant=CONTROL.name, batch_size=2, n_images=3, steps=2, checkpoint_every=2,
                      log_every=1, sample_steps=1, sample_sets=1, sample_context=1, sample_generate=1, lr=1e-2)
    metrics = loop.train(cfg)
    assert metrics["variant"] == "control"
    pipe = M2MPipeline.from_pretrained(out, dtype=torch.float32)
    assert isinstance(pipe.image_encoder, KindToken)
    assert pipe.unet.config.context_dim == 2  # Image-Set Attention's keys/values are made from the token
    sets = kind_sets(["ball", "box", "box"])
    _, context = clean_context(pipe, sets)
    assert torch.equal(context[:, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))


def test_the_prediction_follows_the_token():
    """With Image-Set Attention randomised (its output projection starts at zero, which would hide any
    context), the noise predicted after a circle set differs from the one after the same pixels read as
    a square set: the token reaches the UNet."""
    from m2m.build import build_pipeline

    pipe = build_pipeline("tiny", CONTROL.name, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "attn2" in name:
                p.normal_(0, 0.5)
    circle, square = pipe.image_encoder(kind_sets(["ball", "box"]))
    z = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        after_circle = pipe.unet(z, 500, circle[None])
        after_square = pipe.unet(z, 500, square[None])
        again = pipe.unet(z, 500, circle[None])
    assert torch.equal(after_circle, again)
    assert not torch.allclose(after_circle[:, 1:], after_square[:, 1:], atol=1e-4)  # images that see a context
