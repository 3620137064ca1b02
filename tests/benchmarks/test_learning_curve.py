"""benchmarks/bench_learning_curve.py: a checkpoint is scored with the weights its run saves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m2m.training import loop
from m2m.training.config import TrainConfig
from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_learning_curve import (  # noqa: E402
    checkpoint_pipeline,
    lacks_per_kind,
    main,
    precision_note,
    reference_fits,
    results_name,
    run_command,
    score_checkpoint,
    section,
    train_command,
)

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


def test_a_checkpoint_loads_as_the_model_its_run_writes(mis, tmp_path):  # noqa: F811
    out = tmp_path / "m2m-dino"
    cfg = TrainConfig(
        out=out, data=mis, variant="dino", batch_size=2, n_images=3, steps=2, checkpoint_every=2, log_every=1,
        sample_steps=1, sample_sets=1, sample_context=1, sample_generate=1, lr=1e-2, ema=True, ema_decay=0.5,
    )
    loop.train(cfg)
    pipe, settings = checkpoint_pipeline(out.with_name("m2m-dino.ckpt") / "checkpoint-000002")
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")  # the EMA weights, as the run wrote
    mine = pipe.unet.state_dict()
    assert saved.keys() == mine.keys()
    assert all(torch.equal(saved[k], mine[k]) for k in saved)
    raw = load_file(out.with_name("m2m-dino.ckpt") / "checkpoint-000002" / "model.safetensors")
    assert any(not torch.equal(raw[k], saved[k]) for k in raw if k in saved)  # EMA differs from the raw weights
    assert "--variant dino" in train_command(settings, mis) and "--steps" not in train_command(settings, mis)
    state = json.loads((out.with_name("m2m-dino.ckpt") / "checkpoint-000002" / "trainer_state.json").read_text())
    assert f"--data {mis} " in run_command(state)  # the MIS it trained on, whichever one scores it


def test_the_command_of_a_run_names_its_own_mis_and_last_precision():
    settings = {"variant": "dino", "data": "assets/bench/large/mis", "batch_size": 4, "n_images": 5, "lr": 5e-4,
                "ema": True, "ema_decay": 0.999, "seed": 0}
    command = run_command({"settings": settings, "precision": [[0, "no"], [800, "bf16"]]})
    assert "--data assets/bench/large/mis " in command and command.count("--data") == 1
    assert "--mixed-precision bf16" in command
    assert "--mixed-precision" not in run_command({"settings": settings})


def test_a_checkpoint_is_scored_with_its_shape_fit_beside_the_score(mis, tmp_path, monkeypatch):  # noqa: F811
    import argparse

    out = tmp_path / "m2m-dino"
    cfg = TrainConfig(
        out=out, data=mis, variant="dino", batch_size=2, n_images=3, steps=1, checkpoint_every=1, log_every=1,
        sample_steps=1, sample_sets=1, sample_context=1, sample_generate=1, ema=False,
    )
    loop.train(cfg)
    args = argparse.Namespace(sets=2, generate=1, steps=1, seed=0)
    row = score_checkpoint(out.with_name("m2m-dino.ckpt") / "checkpoint-000001", mis, args)
    assert row["step"] == 1 and row["images_seen"] == 6
    assert {"palette", "shape", "texture", "score"} <= set(row) and 0.0 <= row["shape_fit"] <= 1.0
    assert row["shape_fit"] <= row["any_shape_fit"] <= 1.0  # the set's shape is one of the kinds
    assert set(row["shape_fit_by_kind"]) <= {"circle", "square", "triangle", "star", "cross", "ring"}
    older = {k: v for k, v in row.items() if k not in ("shape_fit", "any_shape_fit", "kind_contrast")}
    report = {"settings": {"argv": "--checkpoints x", "sets": 2, "generate": 1, "steps": 1}, "machine": "here",
              "runs": {"dino": {"command": "m2m train", "rows": [older, row]}}}
    lines = section(report).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| step |"))
    assert lines[header].endswith("| score | shape fit | any-shape fit | kind contrast |")
    assert lines[header + 2].endswith(" | - | - | - |")  # scored before the columns
    contrast = f"{row['kind_contrast']:.2f}" if len(row["shape_fit_by_kind"]) > 1 else "-"
    assert lines[header + 3].endswith(f" | {row['shape_fit']:.2f} | {row['any_shape_fit']:.2f} | {contrast} |")
    kind, fit = next(iter(row["shape_fit_by_kind"].items()))
    assert any(line.startswith("Shape fit by the set's shape kind at step 1:") and f"{kind} {fit:.2f}" in line
               for line in lines)
    assert "DDIM 1;" in section(report)
    report["settings"]["guidance_scale"] = 2.0
    assert "DDIM 1, guidance s = 2 instead of the model's own;" in section(report)
    # the scale given is the one the images are generated with; none given: the model's own (None)
    from m2m.evaluation import evaluate

    scales, generate = [], evaluate.generate_continuations
    monkeypatch.setattr(evaluate, "generate_continuations",
                        lambda pipe, *a: scales.append(a[4]) or generate(pipe, *a))
    for given in (0.0, None):
        score_checkpoint(out.with_name("m2m-dino.ckpt") / "checkpoint-000001", mis,
                         argparse.Namespace(sets=2, generate=1, steps=1, seed=0, guidance_scale=given))
    assert scales == [0.0, None]
    # the diagnostic's scale, from the held-out images themselves
    reference = reference_fits(mis, 4)
    assert reference["held-out images"] > 0.9 > reference["blurred by 2 px"] > reference["another shape kind"]
    assert reference["kind contrast"] > 0.1  # the held-out sets (of several kinds) draw their own kind
    assert f"held-out images {reference['held-out images']:.2f}" in section({**report, "reference_fits": reference})


def test_the_newest_checkpoint_is_scored_again_when_it_lacks_a_per_kind_column():
    assert lacks_per_kind({"shape_fit": 0.5})
    assert not lacks_per_kind({"shape_fit_by_kind": {"circle": 0.5}})  # one kind: no contrast to read
    assert lacks_per_kind({"shape_fit_by_kind": {"circle": 0.5, "square": 0.6}})
    assert not lacks_per_kind({"shape_fit_by_kind": {"circle": 0.5, "square": 0.6}, "kind_contrast": 0.0})


def test_a_pilot_from_an_init_folder_loads_with_its_own_architecture(mis, tmp_path):  # noqa: F811
    from m2m.cli import main

    config, init, out = tmp_path / "wide.json", tmp_path / "init", tmp_path / "m2m-dino"
    config.write_text(json.dumps({"block_out_channels": [48, 96, 96], "norm_num_groups": 16}))
    assert main(["init", "--variant", "dino", "--unet-config", str(config), "--out", str(init)]) == 0
    cfg = TrainConfig(
        out=out, data=mis, variant="dino", init=init, batch_size=2, n_images=3, steps=2, checkpoint_every=2,
        log_every=1, sample_steps=1, sample_sets=1, sample_context=1, sample_generate=1, lr=1e-2, ema=False,
    )
    loop.train(cfg)
    pipe, settings = checkpoint_pipeline(out.with_name("m2m-dino.ckpt") / "checkpoint-000002")
    assert list(pipe.unet.unet.config.block_out_channels) == [48, 96, 96]
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    mine = pipe.unet.state_dict()
    assert saved.keys() == mine.keys() and all(torch.equal(saved[k], mine[k]) for k in saved)
    assert f"--init {init}" in train_command(settings, mis)


def test_a_run_resumed_in_another_precision_says_which_steps_ran_in_which():
    assert precision_note({"precision": [[0, "bf16"]]}) == ""  # one precision throughout: the command says it
    assert precision_note({"precision": []}) == ""  # recorded nowhere (checkpoints from before the record)
    assert precision_note({"precision": [[0, "no"], [8000, "bf16"]]}) == " (fp32 from step 0; bf16 from step 8,000)"
    assert precision_note({"precision": [[8000, "bf16"]]}) == (
        " (precision not recorded before step 8,000; bf16 from step 8,000)"
    )


def test_each_run_of_a_labelled_pilot_keeps_its_own_results_file():
    assert results_name(None, "dino", 2) == "dino"  # the main curve: one file per variant
    assert results_name("wide", "dino", 1) == "wide"  # a one-run pilot, as its files are named
    assert {results_name("long3", v, 2) for v in ("dino", "self")} == {"long3-dino", "long3-self"}


def test_two_runs_of_one_variant_are_refused_before_anything_is_scored(tmp_path):
    for run in ("a", "b"):
        folder = tmp_path / run / "checkpoint-000001"
        folder.mkdir(parents=True)
        state = {"step": 1, "losses": [], "elapsed_s": 0.0, "train_s": 0.0, "settings": {"variant": "dino"}}
        (folder / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(SystemExit, match="two runs of one variant"):
        main(["--checkpoints", str(tmp_path / "a"), str(tmp_path / "b"), "--label", "x"])
