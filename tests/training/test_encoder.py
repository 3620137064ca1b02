"""m2m/training/encoder.py and ``m2m pretrain-encoder``: the tiny preset's E_v learns what an image shows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from m2m.data.procedural import ATTRIBUTES, caption_attributes
from m2m.models import presets
from m2m.training.config import EncoderPretraining
from m2m.training.encoder import draw_sets, render_sets, tiny_dino_tokens

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def probe(train_x, train_y, test_x, test_y, steps: int = 200) -> float:
    """Held-out accuracy of a linear read-out (softmax regression, L-BFGS) of standardised features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    layer = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(layer(x), train_y) + 1e-3 * layer.weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        return float((layer(x_test).argmax(1) == test_y).float().mean())


def test_sets_are_seeded_uniform_draws_whose_captions_name_their_attributes():
    sets = draw_sets(600, 0, seed=0)
    assert sets == draw_sets(600, 0, seed=0) and sets != draw_sets(600, 0, seed=1)
    assert draw_sets(10, 600, seed=0)[0][0].endswith("encoder set 600")  # validation sets come after training's
    for attribute, values in ATTRIBUTES.items():
        counts = [sum(attrs[attribute] == v for _, attrs in sets) for v in values]
        assert min(counts) > 0.5 * 600 / len(values)
    assert all(caption_attributes(caption) == attrs for caption, attrs in sets)
    captions = (REPO / "m2m/resources/cc12m_sample.tsv").read_text(encoding="utf-8")
    assert not any(caption in captions for caption, _ in sets)  # never an image of the pipeline's MIS


def test_images_and_labels_follow_the_sets():
    sets = draw_sets(3, 0, seed=0)
    images, labels = render_sets(sets, 2, 32)
    assert images.shape == (6, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    assert labels["shape"].tolist()[::2] == [ATTRIBUTES["shape"].index(a["shape"]) for _, a in sets]
    assert not torch.equal(images[0], images[1])  # two instances of one set


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        EncoderPretraining(out=Path("x"), steps=0)
    with pytest.raises(ValueError, match="lr must be in"):
        EncoderPretraining(out=Path("x"), lr=0)


def test_a_stopped_run_resumes_to_the_weights_of_one_never_stopped(tmp_path, monkeypatch):
    from m2m.training import encoder as module

    def settings(out):
        return EncoderPretraining(out=out, sets=20, steps=12, batch_size=8, validation_sets=2, checkpoint_every=5)

    whole, _ = module.pretrain_encoder(settings(tmp_path / "whole"), log=lambda line: None)
    save = module.save_checkpoint

    def stop_after_the_first(*args):
        save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_checkpoint", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        module.pretrain_encoder(settings(tmp_path / "stopped"), log=lambda line: None)
    monkeypatch.setattr(module, "save_checkpoint", save)
    lines = []
    resumed, record = module.pretrain_encoder(settings(tmp_path / "stopped"), log=lines.append)
    assert "resumed from" in lines[1] and "at step 5" in lines[1]
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    module.save_encoder(resumed, record, tmp_path / "stopped")
    assert not (tmp_path / "stopped.ckpt").exists()  # the checkpoint goes once the encoder is saved
    other = settings(tmp_path / "other")  # a checkpoint of 12 steps, then the command asks for 13
    saved = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(other).items()}
    module.save_checkpoint(module.resume_point(other), saved, {}, whole, module.AttributeHeads(32),
                           torch.optim.AdamW(whole.parameters()), torch.Generator())
    with pytest.raises(ValueError, match="made with steps=12, not 13; remove it to start afresh"):
        module.pretrain_encoder(dataclasses.replace(other, steps=13), log=lambda line: None)


def test_the_shipped_e_v_carries_shape_kind_and_texture_a_random_one_does_not():
    """On images never trained on (sets drawn with another seed), a linear read-out of the mean token tells
    the six shape kinds and the five textures apart from the shipped encoder (0.80 and 1.00 when it was
    shipped), and not from the same architecture at random (0.26 and 0.34; chance about 0.2)."""
    from transformers import Dinov2Config, Dinov2Model

    from m2m.models.encoders import dino_encoder

    images, labels = render_sets(draw_sets(300, 0, seed=12345), 2, 32)
    torch.manual_seed(0)
    random = Dinov2Model(Dinov2Config(**presets.TINY_DINO)).eval()
    accuracy = {}
    for name, encoder in (("shipped", dino_encoder("tiny")), ("random", random)):
        with torch.no_grad():
            features = tiny_dino_tokens(encoder, images, 32).mean(1)
        accuracy[name] = {a: probe(features[:400], labels[a][:400], features[400:], labels[a][400:])
                          for a in ("shape", "texture")}
    assert accuracy["shipped"]["shape"] >= 0.7 and accuracy["random"]["shape"] < 0.3, accuracy
    assert accuracy["shipped"]["texture"] >= 0.9 and accuracy["random"]["texture"] < 0.5, accuracy


@pytest.mark.slow
def test_a_short_pretraining_learns_and_writes_a_folder_m2m_dino_loads(tmp_path, capsys):
    from transformers import AutoImageProcessor

    from m2m.build import build_pipeline
    from m2m.cli import main

    out = tmp_path / "dinov2"
    assert main(["pretrain-encoder", "--out", str(out), "--sets", "150", "--steps", "250", "--batch-size", "32",
                 "--validation-sets", "40", "--threads", "1"]) == 0
    record = json.loads((out / "pretrain.json").read_text())
    assert record["settings"]["steps"] == 250 and record["training_images"] == 600
    assert record["curve"][-1]["loss"] < 0.8 * (3 * 2.0)  # below the three cross-entropies at chance (~5.3)
    assert record["validation"]["palette"] > 0.5  # chance 1/8
    processor = AutoImageProcessor.from_pretrained(out, local_files_only=True)
    assert processor.size == {"height": 32, "width": 32} and not processor.do_center_crop
    from transformers import Dinov2Model

    pipe = build_pipeline("tiny", "dino", dino_folder=out)  # m2m init / m2m train --dino-folder
    written = Dinov2Model.from_pretrained(out, local_files_only=True).state_dict()
    carried = pipe.image_encoder.state_dict()
    assert written.keys() == carried.keys() and all(torch.equal(written[k], carried[k]) for k in written)
    assert "wrote" in capsys.readouterr().out
