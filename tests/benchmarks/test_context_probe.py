"""benchmarks/bench_context_probe.py: linear probes of what Image-Set Attention reads from a set's context."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from m2m.build import build_pipeline
from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_context_probe import context_tokens, probe_accuracy, run, section  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_probe_reads_a_separable_attribute_and_not_a_random_one():
    generator = torch.Generator().manual_seed(0)
    labels = [("a", "b", "c")[i % 3] for i in range(300)]
    centres = torch.randn(3, 16, generator=generator) * 2
    x = torch.stack([centres["abc".index(y)] for y in labels]) + torch.randn(300, 16, generator=generator)
    x = x.double()
    assert probe_accuracy(x[:200], labels[:200], x[200:], labels[200:], 1e-3) > 0.95
    shuffled = [labels[i] for i in torch.randperm(300, generator=generator).tolist()]  # unrelated to x
    assert probe_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:], 1e-3) < 0.6


def test_dino_reads_its_encoders_tokens_and_self_the_hidden_states_of_its_clean_pass():
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    dino = build_pipeline("tiny", "dino")
    tokens = context_tokens(dino, images)
    assert list(tokens) == ["E_v tokens"]
    width = dino.image_encoder.config.hidden_size
    assert tokens["E_v tokens"].shape[0] == 3 and tokens["E_v tokens"].shape[-1] == width

    self_pipe = build_pipeline("tiny", "self")
    states = context_tokens(self_pipe, images)
    assert [t.shape[1] for t in states.values()] == [16 * 16, 8 * 8]  # the 16x16 layer and the mid block
    assert all(not attn._forward_pre_hooks for attn, _ in self_pipe.unet.image_set_layers())
    other = context_tokens(self_pipe, torch.flip(images, dims=[0]))
    first = next(iter(states))
    assert torch.allclose(other[first][0], states[first][2]) and not torch.allclose(states[first][0], states[first][2])


def test_the_pixels_mean_colour_tells_the_palette_and_an_encoder_folder_reads_as_its_model(mis, tmp_path):  # noqa: F811
    pipe = build_pipeline("tiny", "dino")
    pipe.save_pretrained(tmp_path / "m2m-dino")
    pipe.image_encoder.save_pretrained(tmp_path / "encoder")  # as benchmarks/pretrain_encoder.py writes one
    args = argparse.Namespace(data=mis, models=[tmp_path / "m2m-dino"], encoders=[tmp_path / "encoder"],
                              train_sets=None, test_sets=None, l2=1e-3)
    report = run(args)
    rows = report["rows"]
    assert rows["pixels, mean"]["palette"] >= max(0.75, report["chance"]["palette"] + 0.3)
    for pooling in ("mean", "all"):  # the folder alone gives the tokens its model attends to
        assert rows[f"E_v (encoder): tokens, {pooling}"] == rows[f"M2M-DINO (m2m-dino): E_v tokens, {pooling}"]
    text = section({**report, "settings": {"argv": "", "l2": 1e-3}, "machine": "here", "date": "2026-12-07"})
    assert text.startswith("## Context probe, 2026-12-07\n")
    assert f"| pixels, mean | {rows['pixels, mean']['palette']:.2f} |" in text


def test_the_results_header_keeps_a_list_of_model_folders_as_text():
    import json

    from learning.report import run_header

    header = run_header(argparse.Namespace(models=[Path("models/a")], data=Path("mis"), l2=1e-3), ["--l2", "0.001"])
    assert header["settings"] == {"models": ["models/a"], "data": "mis", "l2": 1e-3, "argv": "--l2 0.001"}
    json.dumps(header)  # what save_json writes
