"""FLOPs per image and the matmul peak behind the MFU of every training log line (m2m/training/flops.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from m2m.build import build_pipeline
from m2m.training import flops, loop
from m2m.training.config import TrainConfig
from m2m.training.objective import m2m_loss

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


def test_the_peak_is_measured_without_touching_the_runs_random_streams():
    state = torch.get_rng_state()
    peak = flops.matmul_peak(torch.device("cpu"), seconds=0.02)
    assert torch.equal(state, torch.get_rng_state())
    assert 1e8 < peak < 1e13  # a CPU core does between 0.1 and 10,000 GFLOP/s
    assert flops.mfu(2e9, 10.0, 1e11, processes=2) == pytest.approx(0.1)


def counted_run(pipe, batch_size: int):
    from accelerate import Accelerator

    cfg = TrainConfig(out="unused", batch_size=batch_size, n_images=3, p_uncond=0.0)
    run = SimpleNamespace(
        cfg=cfg, accelerator=Accelerator(), pipe=pipe, stored=(),
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
    )
    images = torch.rand(batch_size, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return run, {"images": images}


def test_flops_per_image_are_a_forward_and_backward_of_eq5_per_image():
    pipe = build_pipeline("tiny", "self", seed=0)
    run, batch = counted_run(pipe, batch_size=2)
    generator = torch.Generator().manual_seed(0)
    noise_state, rng_state = generator.get_state(), torch.get_rng_state()
    per_image, context = loop.flops_per_image(run, batch, generator)
    assert torch.equal(noise_state, generator.get_state()) and torch.equal(rng_state, torch.get_rng_state())
    with flops.counting() as counter:  # what a training step really computes, backward included
        loss = m2m_loss(pipe, run.noise_scheduler, batch["images"], p_uncond=0.0, generator=generator)
        loss.backward()
    pipe.unet.zero_grad(set_to_none=True)
    assert per_image == pytest.approx(counter.get_total_flops() / 6, rel=0.05)  # 2 sets x 3 images
    bigger, batch = counted_run(pipe, batch_size=4)
    assert context[0].shape[:2] == (2, 3)  # the batch's clean context, for the step to use
    assert loop.flops_per_image(bigger, batch, generator)[0] == pytest.approx(per_image, rel=1e-6)  # any batch
