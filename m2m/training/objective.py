"""The M2M training objective (paper section 6.1, eq. 5; section 6.2 for task conditions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2m.models.encoders import encode_images


@torch.no_grad()
def clean_context(
    pipe, images: torch.Tensor, latents: torch.Tensor | None = None, features: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``z_0^{1:N} = E(I)`` and the context the model attends to: ``z_0`` (Self) or the external context
    encoder's features ``v`` (DINO: DINOv2's), as ``m2m.models.context`` says for the model's variant.

    ``latents`` and ``features`` are the same encodings stored with the MIS shards (``generate-mis
    --precompute``, the same encoder functions); given, they replace the VAE and context-encoder passes.
    """
    dtype = pipe.unet.dtype
    encoder = pipe.unet.context_encoder
    z0 = encode_images(pipe.vae, images) if latents is None else latents.to(images.device, dtype)
    if not encoder.external:
        return z0, z0
    if features is not None:
        return z0, features.to(images.device, dtype)
    return z0, encoder.features(pipe.image_encoder, images, pipe.unet.config.dino_image_size)


def m2m_loss(
    pipe,
    noise_scheduler,
    images: torch.Tensor,
    conditions: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    p_drop_condition: float = 0.1,
    generator: torch.Generator | None = None,
    precomputed: tuple[torch.Tensor, torch.Tensor] | None = None,
    unet=None,
    snr_gamma: float | None = None,
    timestep_sampling: str = "uniform",
) -> torch.Tensor:
    """Eq. 5: E ||ε − ε_θ(z_t^{1:N}, z_0^{1:N}, t)||², every image of the set noised, loss over all N.

    One timestep per set (eq. 5 has a single t). With probability ``p_uncond`` the whole clean condition of
    a set is zeroed (and its task conditions with it) so the model also learns ε_θ(z_t, 0, t) for eq. 6.
    With task conditions, the conditions alone are dropped with ``p_drop_condition`` so that eq. 7's
    ε_θ(z_t, z_0, ∅) is trained too. ``unet`` overrides ``pipe.unet`` for the forward pass (e.g. the
    DDP-wrapped model under Accelerate). ``snr_gamma`` weights each set's loss by min-SNR-γ (Hang et al.,
    2023): ``min(SNR(t), γ) / SNR(t)`` for ε, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction, so the
    low-noise steps, which are easy, stop dominating the gradient; None keeps eq. 5 as written.
    ``timestep_sampling`` draws t as ``sample_timesteps`` says (uniform: eq. 5 as written).
    """
    model = pipe.unet
    unet = unet if unet is not None else model
    z0, context = precomputed if precomputed is not None else clean_context(pipe, images)
    batch = z0.shape[0]
    device = z0.device
    noise = torch.randn(z0.shape, generator=generator, device=device, dtype=z0.dtype)
    t = sample_timesteps(noise_scheduler, batch, timestep_sampling, generator, device)
    zt = noise_scheduler.add_noise(z0, noise, t)

    drop = torch.rand(batch, generator=generator, device=device) < p_uncond
    context = context * (~drop).view(-1, *[1] * (context.ndim - 1)).to(context.dtype)
    cond = None
    if conditions is not None:
        keep = ~drop & (torch.rand(batch, generator=generator, device=device) >= p_drop_condition)
        cond = model.embed_condition(conditions) * keep.view(-1, 1, 1).to(z0.dtype)

    pred = unet(zt, t, context=context, cond_query=cond, cond_context=cond)
    target = noise
    if noise_scheduler.config.prediction_type == "v_prediction":  # same objective, v-parameterised
        target = noise_scheduler.get_velocity(z0, noise, t)
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    per_set = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return (per_set * min_snr_weight(noise_scheduler, t, snr_gamma)).mean()


def sample_timesteps(
    noise_scheduler, batch: int, how: str = "uniform", generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """One t per set. ``uniform`` over the scheduler's T steps (eq. 5's expectation); ``logit-normal``:
    ``t = ⌊T · sigmoid(u)⌋``, u ~ N(0, 1) (Esser et al. 2024, section 3.1), which draws the middle of the
    schedule, where an image's layout is decided, more often than its nearly clean and pure-noise ends."""
    steps = noise_scheduler.config.num_train_timesteps
    if how == "uniform":
        return torch.randint(0, steps, (batch,), generator=generator, device=device)
    if how == "logit-normal":
        u = torch.randn(batch, generator=generator, device=device)
        return (torch.sigmoid(u) * steps).long().clamp_(0, steps - 1)
    raise ValueError(f"timestep sampling: unknown {how!r}; expected uniform or logit-normal")


def min_snr_weight(noise_scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weight per timestep, for the scheduler's prediction type (ε or v)."""
    alpha_bar = noise_scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr
