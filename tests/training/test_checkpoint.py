"""Checkpoints (m2m/training/checkpoint.py): complete or absent, restored exactly, pruned, checked."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_constant_schedule
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from m2m.training import checkpoint


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def run():
    """A small model trained one step through Accelerate, with EMA and a noise generator."""
    torch.manual_seed(0)
    accelerator = Accelerator()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMAModel(model.parameters(), decay=0.9)
    names = [name for name, _ in model.named_parameters()]
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, get_constant_schedule(optimizer))
    model(torch.randn(3, 4)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    ema.step(model.parameters())
    noise = torch.Generator().manual_seed(7)
    return dict(accelerator=accelerator, model=model, optimizer=optimizer, ema=ema, names=names, noise=noise)


def snapshot(r) -> dict:
    return {
        "model": [p.detach().clone() for p in r["model"].parameters()],
        "exp_avg": [s["exp_avg"].clone() for s in r["optimizer"].state_dict()["state"].values()],
        "ema": [p.clone() for p in r["ema"].shadow_params],
        "ema_step": r["ema"].optimization_step,
        "noise": r["noise"].get_state().clone(),
        "torch": torch.rand(3),
        "numpy": np.random.rand(3),
        "python": random.random(),
    }


def save(r, root, step, keep=2):
    state = {"losses": [1.0] * step, "elapsed_s": 1.0, "train_s": 0.5, "settings": {"lr": 1e-2}}
    return checkpoint.save_checkpoint(
        r["accelerator"], root, step, state, {"batches": step}, r["noise"], r["ema"], r["names"], keep
    )


def test_restores_model_optimizer_ema_noise_and_rngs(run, tmp_path):
    folder = save(run, tmp_path, 1)
    before = snapshot(run)  # draws the RNGs once after saving; the restored RNGs must draw the same
    with torch.no_grad():
        for p in run["model"].parameters():
            p.add_(1.0)
        for p in run["ema"].shadow_params:
            p.zero_()
    run["optimizer"].state_dict()["state"][0]["exp_avg"].add_(1.0)
    run["ema"].optimization_step = 99
    run["noise"].manual_seed(123)

    data_state = checkpoint.load_checkpoint(run["accelerator"], folder, run["noise"], run["ema"], run["names"])
    after = snapshot(run)
    assert data_state == {"batches": 1}
    for key in ("model", "exp_avg", "ema"):
        assert all(torch.equal(a, b) for a, b in zip(before[key], after[key])), key
    assert before["ema_step"] == after["ema_step"] == 1
    assert torch.equal(before["noise"], after["noise"])
    assert torch.equal(before["torch"], after["torch"])
    assert np.array_equal(before["numpy"], after["numpy"])
    assert before["python"] == after["python"]


def test_weights_are_safetensors_and_nothing_temporary_is_left(run, tmp_path):
    folder = save(run, tmp_path, 3)
    assert folder.name == "checkpoint-000003"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "noise_0.safetensors", "data_0.json", "trainer_state.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) and "model" in name for name in names)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000003"]
    assert checkpoint.read_trainer_state(folder)["step"] == 3


def test_keeps_the_newest_and_ignores_incomplete_folders(run, tmp_path):
    for step in (1, 2, 3):
        save(run, tmp_path, step, keep=2)
    (tmp_path / "checkpoint-000009").mkdir()  # no trainer_state.json: never finished
    (tmp_path / ".checkpoint-000010.tmp").mkdir()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["checkpoint-000002", "checkpoint-000003"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "checkpoint-000003"
    assert checkpoint.latest_checkpoint(tmp_path / "missing") is None


def test_saving_a_step_again_replaces_it_whole(run, tmp_path):
    save(run, tmp_path, 2)
    with torch.no_grad():
        next(run["model"].parameters()).add_(1.0)
    folder = save(run, tmp_path, 2)
    weights = load_file(folder / "model.safetensors")
    assert torch.equal(weights["0.weight"], next(run["model"].parameters()).detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000002"]


def test_checkpoint_without_ema_cannot_restore_ema(run, tmp_path):
    state = {"losses": [], "elapsed_s": 0.0, "train_s": 0.0, "settings": {}}
    folder = checkpoint.save_checkpoint(run["accelerator"], tmp_path, 1, state, {}, run["noise"])
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        checkpoint.load_checkpoint(run["accelerator"], folder, run["noise"], run["ema"], run["names"])


def test_settings_must_match_to_resume(tmp_path):
    checkpoint.check_settings(tmp_path, {"lr": 1e-3, "seed": 0}, {"lr": 1e-3, "seed": 0})
    with pytest.raises(ValueError, match=r"trainer_state.json: made with seed=0, this run has 1"):
        checkpoint.check_settings(tmp_path, {"lr": 1e-3, "seed": 0}, {"lr": 1e-3, "seed": 1})


def test_a_setting_newer_than_the_checkpoint_reads_as_its_old_value(tmp_path):
    state = {"step": 1, "losses": [], "elapsed_s": 0.0, "train_s": 0.0, "settings": {"lr": 1e-3}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    settings = checkpoint.read_trainer_state(tmp_path)["settings"]
    assert settings == {"lr": 1e-3, "timestep_sampling": "uniform"}  # a run from before the flag resumes
    checkpoint.check_settings(tmp_path, settings, {"lr": 1e-3, "timestep_sampling": "uniform"})
    with pytest.raises(ValueError, match="timestep_sampling='uniform', this run has 'logit-normal'"):
        checkpoint.check_settings(tmp_path, settings, {"lr": 1e-3, "timestep_sampling": "logit-normal"})


def test_unreadable_trainer_state_is_one_clear_error(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json: unreadable"):
        checkpoint.read_trainer_state(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(ValueError, match="missing elapsed_s, losses, settings, train_s"):
        checkpoint.read_trainer_state(tmp_path)
