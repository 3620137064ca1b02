"""The M2M denoiser: a Stable Diffusion UNet whose text cross-attention is Image-Set Attention.

Paper section 5 and 6.1. ``M2MUNet`` wraps a diffusers ``UNet2DConditionModel`` in which every
``attn2`` (text cross-attention) is rebuilt from scratch as Image-Set Attention:

- M2M-Self (section 5.1): clean and noisy latents of a set travel through the same UNet, stacked along
  the batch (``z = [z_0; z_t]``); the clean copy runs at timestep 0 and passes every Image-Set
  Attention unchanged, so its hidden states depend on the clean image alone and can be cached.
- M2M-DINO (section 5.2): keys/values are the frozen DINOv2 last hidden states of the clean images.

A model's config names its context encoder (``variant``); ``m2m.models.context`` says what the name means.

Everything else keeps the Stable Diffusion weights bit for bit (``from_sd_unet``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from torch import nn

from m2m.models.attention import ImageSetAttnProcessor, ImageSetCall, SelfAttnProcessor
from m2m.models.cache import ContextCache
from m2m.models.conditions import build_condition_embedder
from m2m.models.context import ContextEncoder, context_encoder


def _isa_unet_config(unet_config: dict, variant: str, context_dim: int | None) -> dict:
    config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    config["cross_attention_dim"] = context_encoder(variant).cross_attention_dim(config, context_dim)
    return config


class M2MUNet(ModelMixin, ConfigMixin):
    """ε_θ(z_t^{1:N}, z_0^{1:N}, t) of eq. 5: predicts the noise of every noisy image of a set.

    Args:
        unet_config: the config of the Stable Diffusion UNet it is built from.
        variant: the context encoder's name in ``m2m.models.context``: ``"self"`` (M2M-Self),
            ``"dino"`` (M2M-DINO) or another registered one.
        context_dim: the external context encoder's hidden size (None for M2M-Self).
        condition: task condition for fine-tuning (``"camera"`` or ``"procedure"``), or None.
        condition_dim: width of the task-condition embedding ``E(c_C)``.
        dino_image_size: the resolution clean images are resized to for the external context encoder
            (DINOv2 for M2M-DINO; the name is kept so that saved models load).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict,
        variant: str = "self",
        context_dim: int | None = None,
        condition: str | None = None,
        condition_dim: int = 256,
        dino_image_size: int = 224,
    ):
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(_isa_unet_config(unet_config, variant, context_dim))
        self.condition_embedder = build_condition_embedder(condition, condition_dim) if condition else None
        self.context_condition = None
        if condition and context_encoder(variant).external:  # v = v_0 + E_c(c_C)
            self.context_condition = nn.Linear(condition_dim, context_dim)
            nn.init.zeros_(self.context_condition.weight)
            nn.init.zeros_(self.context_condition.bias)
        processors = {}
        for name, proc in self.unet.attn_processors.items():
            if ".attn2." in name:
                attn = self.unet.get_submodule(name.removesuffix(".processor"))
                processors[name] = ImageSetAttnProcessor(  # layer: where its keys/values sit in a ContextCache
                    attn.inner_dim, attn.query_dim, condition_dim if condition else None,
                    layer=sum(isinstance(p, ImageSetAttnProcessor) for p in processors.values()),
                )
                # Image-Set Attention starts as a no-op: the pre-trained UNet's prediction is untouched.
                nn.init.zeros_(attn.to_out[0].weight)
                nn.init.zeros_(attn.to_out[0].bias)
            else:
                processors[name] = SelfAttnProcessor()
        self.unet.set_attn_processor(processors)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_sd_unet(
        cls,
        sd_unet: UNet2DConditionModel | str | Path,
        variant: str = "self",
        context_dim: int | None = None,
        condition: str | None = None,
        condition_dim: int = 256,
        dino_image_size: int = 224,
    ) -> "M2MUNet":
        """Initialise from a Stable Diffusion UNet (a model or a local ``unet`` folder), section 6.1.

        The text cross-attention weights (``attn2``) are dropped; every other weight is copied exactly.
        The SD config is kept without diffusers' private keys (``_name_or_path`` is the folder it was
        loaded from, a ``Path`` that has no place in the saved model's config).
        """
        if not isinstance(sd_unet, UNet2DConditionModel):
            sd_unet = load_sd_unet(sd_unet)
        unet_config = {k: v for k, v in sd_unet.config.items() if not k.startswith("_")}
        model = cls(unet_config, variant, context_dim, condition, condition_dim, dino_image_size)
        weights = {k: v for k, v in sd_unet.state_dict().items() if ".attn2." not in k}
        missing, unexpected = model.unet.load_state_dict(weights, strict=False)
        if unexpected or any(".attn2." not in k for k in missing):
            raise ValueError(f"UNet weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model if sd_unet.dtype == model.dtype else model.to(sd_unet.dtype)

    # -- the Image-Set Attention layers --------------------------------------------------------

    @property
    def context_encoder(self) -> ContextEncoder:
        """What the keys/values of eq. 4 are made from (``m2m.models.context``), by ``variant``."""
        return context_encoder(self.config.variant)

    def image_set_layers(self) -> list[tuple[Attention, ImageSetAttnProcessor]]:
        return [(m, m.processor) for m in self.unet.modules() if isinstance(getattr(m, "processor", None), ImageSetAttnProcessor)]

    def embed_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """``E(c_C)``: raw per-image task conditions ``(B, N, ...)`` -> ``(B, N, condition_dim)``."""
        if self.condition_embedder is None:
            raise ValueError("this model was not fine-tuned with a task condition")
        return self.condition_embedder(condition)

    def _condition_features(self, features: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.context_condition is None or cond is None:
            return features
        return features + self.context_condition(cond.to(features.dtype))[:, :, None, :]

    @torch.no_grad()
    def encode_context(
        self, context: torch.Tensor, cache: ContextCache, cond_context: torch.Tensor | None = None
    ) -> ContextCache:
        """Put the keys/values of clean context images into ``cache`` (after those it holds); returns it.

        ``context`` is ``(B, Nc, C, h, w)`` clean latents (Self: one UNet pass at t = 0) or
        ``(B, Nc, S, D)`` features of an external context encoder (DINO: DINOv2's). Computed once per
        context image, the cache serves every denoising step and every later auto-regressive step; it
        keeps the newest ``cache.window`` images (W), so its memory stays flat however long the sequence grows.
        """
        batch, n_context = context.shape[:2]
        if not self.context_encoder.external:
            call = ImageSetCall("encode", batch, n_context=n_context, cache=cache, cond_context=cond_context)
            t0 = torch.zeros(batch * n_context, device=context.device, dtype=torch.long)
            self.unet(context.flatten(0, 1), t0, encoder_hidden_states=None, cross_attention_kwargs={"image_set": call})
        else:
            features = self._condition_features(context, cond_context).flatten(0, 1)
            for attn, proc in self.image_set_layers():
                proc.store(attn, features, batch, cache)
        for _, proc in self.image_set_layers():  # the window's keys/values with the null token, joined here:
            cache.visible(proc.layer, cache.window, proc.with_null)  # a compiled forward only reads them
        return cache

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self,
        noisy: torch.Tensor,
        timestep: torch.Tensor | int,
        context: torch.Tensor | None = None,
        visible: list[int] | None = None,
        cond_query: torch.Tensor | None = None,
        cond_context: torch.Tensor | None = None,
        cache: ContextCache | None = None,
        window: int | None = None,
        null_context_rows: int = 0,
    ) -> torch.Tensor:
        """Predict the noise of ``noisy`` ``(B, Nq, C, h, w)`` at ``timestep``.

        Args:
            context: clean latents ``(B, Nc, C, h, w)`` (Self) or an external context encoder's
                features ``(B, Nc, S, D)`` (DINO); None reads ``cache``.
            visible: for each noisy image, how many clean images it sees. Default: the causal mask of
                training, noisy image i sees clean images 1..i-1 (requires Nc = Nq); with the cache,
                the last ``window`` cached images.
            cache: the keys/values ``encode_context`` put there, read when ``context`` is None; None
                (or an empty cache): nothing precedes, every noisy image sees the null token alone.
            cond_query, cond_context: task-condition embeddings ``E(c_C)`` ``(B, N, condition_dim)`` of
                the noisy and the clean images; zeros (or None) mean "no condition".
            null_context_rows: with the cache, the first rows of the batch whose every cached image is the
                zeroed context of eq. 6's unconditional branch: they attend to one copy (``+ log W``).
        """
        batch, n_query = noisy.shape[:2]
        t = torch.as_tensor(timestep, device=noisy.device)
        t = (t.expand(batch) if t.ndim == 0 else t).repeat_interleave(n_query)
        sample = noisy.flatten(0, 1)
        n_clean = 0
        conditions = {"cond_query": cond_query, "cond_context": cond_context}
        if context is None:
            n_cached = 0 if cache is None else cache.n_cached
            n_visible = n_cached if window is None else min(window, n_cached)
            visible = tuple(visible) if visible is not None else (n_visible,) * n_query
            if max(visible, default=0) > n_cached:
                raise ValueError(f"a noisy image cannot see {max(visible)} images: {n_cached} are cached")
            call = ImageSetCall("cached", batch, visible, cache=cache, window=window, null_rows=null_context_rows,
                                **conditions)
        else:
            n_context = context.shape[1]
            visible = tuple(visible) if visible is not None else tuple(range(n_query))
            if max(visible, default=0) > n_context:
                raise ValueError(f"a noisy image cannot see {max(visible)} of {n_context} context images")
            if not self.context_encoder.external:
                call = ImageSetCall("joint", batch, visible, n_context=n_context, **conditions)
                n_clean = batch * n_context
                sample = torch.cat([context.flatten(0, 1).to(sample.dtype), sample], 0)
                t = torch.cat([torch.zeros(n_clean, dtype=t.dtype, device=t.device), t])
            else:
                features = self._condition_features(context, cond_context)
                call = ImageSetCall("context", batch, visible, n_context=n_context, context=features, **conditions)
        out = self.unet(sample, t, encoder_hidden_states=None, cross_attention_kwargs={"image_set": call}).sample
        return out[n_clean:].unflatten(0, (batch, n_query))


def load_sd_unet(folder: str | Path) -> UNet2DConditionModel:
    """Load a Stable Diffusion UNet from a local folder, with a one-line error when it is not one."""
    folder = Path(folder)
    if (folder / "unet" / "config.json").exists():
        folder = folder / "unet"
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{folder}: no UNet config.json; download stabilityai/stable-diffusion-2-1-base and pass its "
            "folder (or its unet/ sub-folder)"
        )
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name != "UNet2DConditionModel":
        raise ValueError(f"{config_file}: _class_name is {class_name!r}, not a Stable Diffusion UNet2DConditionModel")
    return UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
