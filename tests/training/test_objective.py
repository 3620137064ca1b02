"""Eq. 5 and its condition dropout (m2m/training/objective.py), on the tiny preset."""

from __future__ import annotations

import math

import pytest
import torch

from m2m.build import build_pipeline
from m2m.training.objective import clean_context, m2m_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_sets(batch: int = 2, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, n, 3, 32, 32, generator=seeded(seed)) * 2 - 1


def give_weight(unet, std: float = 0.2) -> None:
    """Randomise the zero-initialised projections, so that context and conditions change the output."""
    gen = seeded(1)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * std)


@pytest.fixture(scope="module", params=["self", "dino"])
def pipe(request):
    pipe = build_pipeline("tiny", request.param, seed=0)
    give_weight(pipe.unet)
    return pipe


def test_loss_is_a_finite_scalar_with_gradients(pipe):
    loss = m2m_loss(pipe, pipe.scheduler, image_sets(), generator=seeded())
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in pipe.unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    pipe.unet.zero_grad(set_to_none=True)


def test_p_uncond_one_equals_an_all_zero_context(pipe):
    images = image_sets()
    z0, context = clean_context(pipe, images)
    with torch.no_grad():
        dropped = m2m_loss(pipe, pipe.scheduler, images, p_uncond=1.0, generator=seeded())
        zeroed = m2m_loss(
            pipe, pipe.scheduler, images, p_uncond=0.0, generator=seeded(), precomputed=(z0, torch.zeros_like(context))
        )
        kept = m2m_loss(pipe, pipe.scheduler, images, p_uncond=0.0, generator=seeded())
    assert torch.equal(dropped, zeroed)
    assert not torch.isclose(dropped, kept)  # the context matters, so the equality above means something


def conditioned_losses(condition: str):
    """A DINO model fine-tuned for ``condition`` (randomised, so conditions matter), two different task
    conditions ``a`` and ``b``, and ``loss(conditions, p_uncond, p_drop_condition)`` of eq. 5 on fixed sets."""
    pipe = build_pipeline("tiny", "dino", condition=condition, seed=0)
    give_weight(pipe.unet)
    images = image_sets()
    if condition == "camera":
        a, b = torch.randn(2, 3, 12, generator=seeded(2)), torch.randn(2, 3, 12, generator=seeded(3))
    else:
        a, b = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[7, 8, 9], [2, 3, 4]])

    def loss(conditions, p_uncond, p_drop):
        with torch.no_grad():
            return m2m_loss(
                pipe, pipe.scheduler, images, conditions, p_uncond=p_uncond, p_drop_condition=p_drop,
                generator=seeded(),
            )

    return a, b, loss


@pytest.mark.parametrize("condition", ["camera", "procedure"])
def test_dropped_task_condition_has_no_effect(condition):
    a, b, loss = conditioned_losses(condition)
    assert torch.equal(loss(a, 0.0, 1.0), loss(b, 0.0, 1.0))
    assert not torch.isclose(loss(a, 0.0, 0.0), loss(b, 0.0, 0.0))


@pytest.mark.parametrize("condition", ["camera", "procedure"])
def test_a_zeroed_context_drops_its_task_condition_too(condition):
    """Eq. 5's dropout zeroes a set's whole clean condition: context and task condition together (the
    unconditional branch of eq. 7 sees neither)."""
    a, b, loss = conditioned_losses(condition)
    assert torch.equal(loss(a, 1.0, 0.0), loss(b, 1.0, 0.0))
    assert not torch.isclose(loss(a, 0.0, 0.0), loss(b, 0.0, 0.0))


def test_the_target_is_the_schedulers_parameterisation():
    """The tiny preset predicts v (its scheduler says so): the loss of a model that outputs 0 is E v², not E ε²."""
    pipe = build_pipeline("tiny", "self", seed=0)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = image_sets()
    loss = m2m_loss(pipe, pipe.scheduler, images, generator=seeded(), unet=lambda zt, t, **_: torch.zeros_like(zt))
    draws = seeded()  # the draws m2m_loss makes, in its order: ε, then t
    noise = torch.randn(images.shape, generator=draws)
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (images.shape[0],), generator=draws)
    v = pipe.scheduler.get_velocity(images, noise, t)
    torch.testing.assert_close(loss, (v**2).mean())
    assert not torch.isclose(loss, (noise**2).mean())


def test_loss_decreases_when_overfitting_one_batch():
    pipe = build_pipeline("tiny", "self", seed=0)
    unet = pipe.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    images = image_sets()
    losses = []
    for _ in range(6):
        loss = m2m_loss(pipe, pipe.scheduler, images, generator=seeded())  # the same noise and t every step
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_min_snr_weight_clips_the_signal_to_noise_ratio():
    from diffusers import DDIMScheduler

    from m2m.training.objective import min_snr_weight

    v_scheduler = build_pipeline("tiny", "self", seed=0).scheduler
    eps_scheduler = DDIMScheduler.from_config(v_scheduler.config, prediction_type="epsilon")
    t = torch.tensor([0, 500, 999])
    snr = v_scheduler.alphas_cumprod[t] / (1 - v_scheduler.alphas_cumprod[t])
    assert snr[0] > 5 > snr[2]  # the steps on both sides of the clip
    torch.testing.assert_close(min_snr_weight(v_scheduler, t, 5.0), torch.clamp(snr, max=5.0) / (snr + 1))
    torch.testing.assert_close(min_snr_weight(eps_scheduler, t, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert min_snr_weight(eps_scheduler, t, 1e12).allclose(torch.ones(3))


def test_min_snr_weighting_without_a_clip_is_eq_5_for_epsilon(pipe):
    from diffusers import DDIMScheduler

    eps = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon")
    images = image_sets()
    with torch.no_grad():
        plain = m2m_loss(pipe, eps, images, generator=seeded())
        unclipped = m2m_loss(pipe, eps, images, generator=seeded(), snr_gamma=1e12)
        clipped = m2m_loss(pipe, eps, images, generator=seeded(), snr_gamma=0.01)
    torch.testing.assert_close(unclipped, plain)
    assert clipped < plain  # every weight min(SNR, 0.01) / SNR is below 1 here


def test_logit_normal_timesteps_draw_the_middle_of_the_schedule_more_often(pipe):
    from m2m.training.objective import sample_timesteps

    steps = pipe.scheduler.config.num_train_timesteps
    uniform = sample_timesteps(pipe.scheduler, 20_000, "uniform", seeded())
    logit = sample_timesteps(pipe.scheduler, 20_000, "logit-normal", seeded())
    for t in (uniform, logit):
        assert t.dtype == torch.long and 0 <= t.min() and t.max() < steps
    middle = [((t >= steps // 4) & (t < 3 * steps // 4)).float().mean().item() for t in (uniform, logit)]
    assert middle[0] == pytest.approx(0.5, abs=0.02)
    assert middle[1] == pytest.approx(0.728, abs=0.02)  # P(|u| < log 3) for u ~ N(0, 1)
    assert logit.float().mean().item() == pytest.approx(steps / 2, rel=0.02)  # symmetric about the middle
    with pytest.raises(ValueError, match="unknown 'normal'"):
        sample_timesteps(pipe.scheduler, 4, "normal")


def test_the_loss_draws_its_timesteps_as_asked(pipe, monkeypatch):
    import m2m.training.objective as objective

    asked = []
    real = objective.sample_timesteps
    monkeypatch.setattr(objective, "sample_timesteps", lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    with torch.no_grad():
        uniform = m2m_loss(pipe, pipe.scheduler, image_sets(), generator=seeded())
        logit = m2m_loss(pipe, pipe.scheduler, image_sets(), generator=seeded(), timestep_sampling="logit-normal")
    assert asked == ["uniform", "logit-normal"] and uniform != logit
