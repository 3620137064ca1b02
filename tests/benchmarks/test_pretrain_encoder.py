"""benchmarks/pretrain_encoder.py: a self-supervised tiny E_v and the untrained M2M-DINO that carries it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from pretrain_encoder import augment, main, nt_xent, pairs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_contrastive_loss_is_low_for_matching_views_and_chance_for_unrelated_ones():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 256, generator=generator)
    matched = nt_xent(a, a + 0.01 * torch.randn(64, 256, generator=generator), 0.1)
    unrelated = nt_xent(a, torch.randn(64, 256, generator=generator), 0.1)
    assert abs(unrelated.item() - math.log(127)) < 0.5  # no better than a guess among the 127 other views
    assert matched < 0.5 < unrelated - 3


def test_a_view_moves_the_picture_and_shuffles_and_inverts_its_colours():
    generator = torch.Generator().manual_seed(0)
    colours = torch.tensor([0.9, 0.1, -0.5])
    plain = colours.view(1, 3, 1, 1).expand(64, 3, 32, 32).clone()
    views = augment(plain, generator)
    seen = set()
    for view in views:  # a plain image stays plain (reflected at the border), in a signed permutation of its colours
        colour = view.mean((1, 2))
        assert torch.allclose(view, colour.view(3, 1, 1).expand_as(view), atol=1e-5)
        assert sorted(colour.abs().tolist()) == pytest.approx(sorted(colours.abs().tolist()), abs=1e-5)
        seen.add(tuple(round(c, 3) for c in colour.tolist()))
    assert len(seen) > 10  # many of the 48 signed permutations
    stripes = torch.zeros(8, 3, 32, 32)
    stripes[:, :, :, ::4] = 1.0  # vertical lines: a turn moves them
    turned = augment(stripes, generator).abs()
    assert (turned - stripes).abs().mean() > 0.1


def test_a_positive_pair_is_one_image_twice_or_two_images_of_one_set():
    generator = torch.Generator().manual_seed(0)
    images = torch.arange(5 * 4, dtype=torch.float32).view(5, 4, 1, 1, 1).expand(5, 4, 3, 2, 2)  # set s, image i: 4s+i
    first, second = pairs(images, 64, "image", generator)
    assert torch.equal(first, second)
    first, second = pairs(images, 64, "set", generator)
    a, b = first[:, 0, 0, 0].long(), second[:, 0, 0, 0].long()
    assert torch.equal(a // 4, b // 4) and bool((a != b).all())  # the same set, another image of it
    assert len(set((b % 4).tolist())) == 4  # any other image of the set


def test_a_short_pretraining_writes_the_encoder_and_an_m2m_dino_that_carries_it(mis, tmp_path):  # noqa: F811
    from transformers import Dinov2Model

    from m2m.pipeline import M2MPipeline

    out, init = tmp_path / "encoder", tmp_path / "init"
    assert main(["--data", str(mis), "--out", str(out), "--steps", "60", "--batch-size", "16", "--warmup", "5",
                 "--init-out", str(init)]) == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["images"] > 0 and record["loss_last_10pct"] < record["loss_first_10pct"] - 0.3  # views matched
    pipe = M2MPipeline.from_pretrained(init, dtype=torch.float32)
    assert pipe.unet.config.variant == "dino"
    trained = Dinov2Model.from_pretrained(out, local_files_only=True).state_dict()
    carried = pipe.image_encoder.state_dict()
    assert trained.keys() == carried.keys() and all(torch.equal(trained[name], carried[name]) for name in trained)
