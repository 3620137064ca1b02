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
    """A small model trained one step through Accelerate, with EMA."""
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
    return dict(accelerator=accelerator, model=model, optimizer=optimizer, ema=ema, names=names)


def snapshot(r) -> dict:
    return {
        "model": [p.detach().clone() for p in r["model"].parameters()],
        "exp_avg": [s["exp_avg"].clone() for s in r["optimizer"].state_dict()["state"].values()],
        "ema": [p.clone() for p in r["ema"].shadow_params],
        "ema_step": r["ema"].optimization_step,
        "torch": torch.rand(3),
        "numpy": np.random.rand(3),
        "python": random.random(),
    }


def save(r, root, step, keep=2):
    state = {"losses": [1.0] * step, "elapsed_s": 1.0, "train_s": 0.5, "settings": {"lr": 1e-2}}
    return checkpoint.save_checkpoint(
        r["accelerator"], root, step, state, {"batches": step}, r["ema"], r["names"], keep
    )


def test_restores_model_optimizer_ema_and_rngs(run, tmp_path):
    folder = save(run, tmp_path, 1)
    before = snapshot(run)  # draws the RNGs once after saving; the restored RNGs must draw the same
    with torch.no_grad():
        for p in run["model"].parameters():
            p.add_(1.0)
        for p in run["ema"].shadow_params:
            p.zero_()
    run["optimizer"].state_dict()["state"][0]["exp_avg"].add_(1.0)
    run["ema"].optimization_step = 99

    data_state = checkpoint.load_checkpoint(run["accelerator"], folder, 1, run["ema"], run["names"])
    after = snapshot(run)
    assert data_state == {"batches": 1}
    for key in ("model", "exp_avg", "ema"):
        assert all(torch.equal(a, b) for a, b in zip(before[key], after[key])), key
    assert before["ema_step"] == after["ema_step"] == 1
    assert torch.equal(before["torch"], after["torch"])
    assert np.array_equal(before["numpy"], after["numpy"])
    assert before["python"] == after["python"]


def test_weights_are_safetensors_and_nothing_temporary_is_left(run, tmp_path):
    folder = save(run, tmp_path, 3)
    assert folder.name == "checkpoint-000003"
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "ema.safetensors", "data_0.json", "trainer_state.json"} <= names
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
    folder = checkpoint.save_checkpoint(run["accelerator"], tmp_path, 1, state, {})
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        checkpoint.load_checkpoint(run["accelerator"], folder, 1, run["ema"], run["names"])


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


def test_a_checkpoint_of_other_processes_continues_from_the_lowest_ranks_data_position(run, tmp_path):
    folder = save(run, tmp_path, 2)
    (folder / "data_0.json").rename(folder / "data_1.json")  # made by processes 1 and 3 of another run
    (folder / "data_3.json").write_text(json.dumps({"batches": 99}))
    assert checkpoint.data_position(folder, 0, 1, 4) == {"batches": 2}
    with pytest.raises(FileNotFoundError, match="data_0.json: missing; this folder was written by another machine"):
        checkpoint.data_position(folder, 0, 4, 4)  # the same processes: each needs its own


def test_a_schedule_of_other_processes_continues_at_its_step():
    from diffusers.optimization import get_cosine_schedule_with_warmup

    def schedule(processes: int, steps: int):
        """A prepared cosine schedule (warm-up 2 of 10 steps) after ``steps`` optimizer steps of ``processes``."""
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        accelerator = Accelerator()
        optimizer, prepared = accelerator.prepare(
            optimizer, get_cosine_schedule_with_warmup(optimizer, 2 * processes, 10 * processes)
        )
        for _ in range(steps * processes):  # Accelerate steps it once per process at each optimizer step
            optimizer.step()
            prepared.scheduler.step()
        return optimizer, prepared

    _, four = schedule(4, 3)
    optimizer, one = schedule(1, 0)
    one.scheduler.load_state_dict(four.scheduler.state_dict())  # a checkpoint of 4 processes, resumed by 1
    optimizer.param_groups[0]["lr"] = four.get_last_lr()[0]  # the optimizer's lr, restored with its state
    checkpoint.rescale_schedule(one, 3, 1)
    _, straight = schedule(1, 3)
    for _ in range(5):
        one.scheduler.step()
        straight.scheduler.step()
        assert one.get_last_lr() == pytest.approx(straight.get_last_lr())


def test_a_resumed_run_may_split_its_batch_otherwise():
    saved = {"lr": 1e-3, "num_processes": 2, "micro_batch_size": 1}
    assert checkpoint.differences(saved, {"lr": 1e-3, "num_processes": 1, "micro_batch_size": 2}) == []
    assert checkpoint.differences(saved, {"lr": 1e-2, "num_processes": 2, "micro_batch_size": 1}) != []


def test_one_process_sees_its_own_layout(run, tmp_path):
    checkpoint.check_layout(run["accelerator"], tmp_path / "ckpt")
    assert list((tmp_path / "ckpt").iterdir()) == []  # the probe is gone
    assert checkpoint.steps_seen(run["accelerator"], tmp_path / "ckpt") == [[]]
    save(run, tmp_path / "ckpt", 3)
    assert checkpoint.steps_seen(run["accelerator"], tmp_path / "ckpt") == [[3]]


@pytest.mark.parametrize(
    ("views", "shared", "problem"),
    [
        ([(0, 0, [0]), (1, 1, [0])], True, None),  # one folder all machines share
        ([(0, 0, [0]), (1, 1, [1])], False, None),  # each machine its own folder, --save-on-each-node
        ([(0, 0, [0]), (1, 0, [0]), (2, 2, [2]), (3, 2, [2])], False, None),  # 2 machines x 2 processes
        ([(0, 0, [0]), (1, 1, [])], True, "process 1 does not see what the main process writes there"),
        ([(0, 0, [0, 1]), (1, 1, [0, 1])], False, "--save-on-each-node, but process 0 sees the folder of 2 machines"),
        ([(0, 0, [0]), (1, 0, [])], False, "process 1 does not see what its machine's main process writes"),
    ],
)
def test_a_layout_that_is_not_what_the_machines_see_is_named(views, shared, problem):
    found = checkpoint.layout_problem(views, shared)
    assert (found is None) if problem is None else (found or "").startswith(problem), found
