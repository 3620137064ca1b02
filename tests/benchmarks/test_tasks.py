"""benchmarks/learning/tasks.py: the sequence and jump protocols hand each target its own condition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from learning.tasks import continue_items  # noqa: E402
from tests.training.test_loop import mis  # noqa: E402, F401 - the tiny MIS fixture


class Echo:
    """A stand-in pipeline: each generated image is filled with (condition of its position) / 10, and it
    records the context and conditions it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, preceding, num_images, conditions=None, generator=None, **_):
        self.calls.append((preceding.clone(), None if conditions is None else conditions.clone()))
        n_given, batch = preceding.shape[1], preceding.shape[0]
        images = torch.zeros(batch, num_images, 3, 2, 2)
        if conditions is not None:
            images += conditions[:, n_given:, None, None, None].float() / 10
        return SimpleNamespace(images=images)


@pytest.fixture()
def items():
    images = torch.arange(3 * 6, dtype=torch.float32).reshape(3, 6, 1, 1, 1).expand(3, 6, 3, 2, 2).clone()
    steps = torch.arange(1, 7).expand(3, 6).clone() + 10 * torch.arange(3)[:, None]  # item i: 10i+1 .. 10i+6
    return images, steps


ARGS = argparse.Namespace(steps=2, guidance_scale=None, seed=0, batch_size=4)


def test_jump_generates_every_target_from_the_real_context_with_its_own_condition(items):
    images, steps = items
    pipe = Echo()
    out = continue_items(pipe, images, steps, 2, (2, 4, 5), "jump", 1.0, ARGS)
    assert out.shape == (3, 3, 3, 2, 2)
    expected = torch.stack([steps[:, t] for t in (2, 4, 5)], 1).float() / 10  # item i, target j
    assert torch.allclose(out[..., 0, 0, 0], expected)
    contexts = torch.cat([c for c, _ in pipe.calls])
    assert contexts.shape[1] == 2 and all(torch.equal(contexts[i], images[i // 3, :2]) for i in range(9))
    conditions = torch.cat([c for _, c in pipe.calls])
    assert all(conditions[i, :2].tolist() == steps[i // 3, :2].tolist() for i in range(9))


def test_sequence_continues_in_target_order_and_no_condition_reaches_an_unconditioned_model(items):
    images, steps = items
    pipe = Echo()
    continue_items(pipe, images, steps, 1, (3, 1), "sequence", 1.0, ARGS)
    (context, conditions), = pipe.calls[:1]
    assert context.shape[1] == 1 and conditions[0].tolist() == [1, 4, 2]
    pipe = Echo()
    assert continue_items(pipe, images, steps, 1, (3, 1), "jump", None, ARGS).abs().sum() == 0
    assert all(c is None for _, c in pipe.calls)


def test_a_run_is_named_by_its_budget_in_minutes_or_in_steps():
    from bench_tasks import budget, heading, stem

    minutes = {"minutes": 15.0, "train_steps": None}
    steps = {"minutes": 5.0, "train_steps": 3000}
    assert (stem(minutes), heading(minutes)) == ("tasks_15min", "## Task fine-tuning, 15 minutes per task")
    assert (stem(steps), heading(steps)) == ("tasks_3000steps", "## Task fine-tuning, 3000 steps per task")
    assert budget({"minutes": 5.0}) == (5.0, "minutes")  # a results file from before --train-steps
    assert stem(argparse.Namespace(**steps)) == "tasks_3000steps"


@pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")
def test_a_step_budget_trains_exactly_those_steps(mis, tmp_path):  # noqa: F811
    from learning.common import train_for

    from m2m.training.config import TrainConfig

    config = TrainConfig(out=tmp_path / "m2m-dino", data=mis, variant="dino", batch_size=2,
                         n_images=3, log_every=1, sample_steps=1, sample_sets=1, sample_context=1, sample_generate=1)
    assert train_for(config, steps=3)["steps"] == 3
    with pytest.raises(ValueError, match="minutes or steps"):
        train_for(config, minutes=1.0, steps=3)
