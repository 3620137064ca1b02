"""``M2MPipeline``: auto-regressive many-to-many sampling (paper section 6.1 "Inference", eq. 6 and 7).

Given K >= 0 preceding images it generates M images one at a time; each generated image joins the
context, and the model sees at most the last ``window`` (W) context images. Keys/values of each context
image are computed once and cached (M2M-Self: its clean pass at t = 0; M2M-DINO: its DINOv2 features;
``m2m.models.context``), so the cost per generated image does not grow with the sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from m2m.models.cache import ContextCache
from m2m.models.context import ContextEncoder
from m2m.models.encoders import decode_latents, encode_images
from m2m.models.unet import M2MUNet  # noqa: F401  (diffusers resolves the saved `unet` component by it)
from m2m.speed import Speed, sdpa_backend, speed_up


@dataclass
class M2MPipelineOutput(BaseOutput):
    """``images``: B lists of M PIL images, or a float tensor ``(B, M, 3, H, W)`` in ``[0, 1]``."""

    images: list[list[Image.Image]] | torch.Tensor


def cfg_eq6(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, s: float) -> torch.Tensor:
    """Eq. 6: ε(z_t, 0, t) + s · (ε(z_t, z_0^{1:W}, t) − ε(z_t, 0, t))."""
    return eps_uncond + s * (eps_cond - eps_uncond)


def cfg_eq7(eps_none: torch.Tensor, eps_image: torch.Tensor, eps_both: torch.Tensor, s_I: float, s_C: float) -> torch.Tensor:
    """Eq. 7: ε(∅,∅) + s_I · (ε(z,∅) − ε(∅,∅)) + s_C · (ε(z,c) − ε(z,∅))."""
    return eps_none + s_I * (eps_image - eps_none) + s_C * (eps_both - eps_image)


@dataclass
class Guidance:
    """The guidance branches of eq. 6 or eq. 7, stacked along the batch: (context on?, condition on?) each."""

    branches: list[tuple[bool, bool]]
    s: float
    s_img: float | None = None
    s_cond: float | None = None
    cond_emb: torch.Tensor | None = None  # E(c_C) of every position, (B, K + M, condition_dim)

    @classmethod
    def choose(cls, s: float, s_img: float | None, s_cond: float | None, cond_emb: torch.Tensor | None) -> Guidance:
        if cond_emb is not None:
            s_img, s_cond = (s if s_img is None else s_img), (1.0 if s_cond is None else s_cond)
            branches = [(False, False), (True, False), (True, True)]
            return cls(branches, s, s_img, s_cond, cond_emb)
        return cls([(False, False), (True, False)] if s != 1 else [(True, False)], s)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` once per branch, zeroed where the branch has no context (eq. 6's zeroed condition)."""
        return torch.cat([x if on else torch.zeros_like(x) for on, _ in self.branches], 0)

    def conditions(self, positions: slice) -> torch.Tensor | None:
        """The task conditions of ``positions`` once per branch, zeroed (∅) where the branch has none."""
        if self.cond_emb is None:
            return None
        x = self.cond_emb[:, positions]
        return torch.cat([x if on else torch.zeros_like(x) for _, on in self.branches], 0)

    @property
    def null_first(self) -> bool:
        """The unconditional branch leads the batch (with the cache, its context is W copies of one image)."""
        return len(self.branches) > 1 and self.branches[0] == (False, False)

    def combine(self, eps: torch.Tensor) -> torch.Tensor:
        """The branches' predictions, stacked along the batch, as eq. 7, eq. 6 or the one branch."""
        eps = eps.chunk(len(self.branches))
        if self.cond_emb is not None:
            s_img, s_cond = self.s_img, self.s_cond
            return cfg_eq7(*eps, s_img, s_cond)
        return eps[0] if len(eps) == 1 else cfg_eq6(eps[0], eps[1], self.s)


def to_pil(images: torch.Tensor) -> list[list[Image.Image]]:
    """``(B, M, 3, H, W)`` in ``[0, 1]`` -> B lists of M RGB images."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    return [[Image.fromarray(np.ascontiguousarray(a)) for a in row] for row in arr]


def from_pil(sets: list[list[Image.Image]]) -> torch.Tensor:
    """B lists of K PIL images of one size -> ``(B, K, 3, H, W)`` in ``[-1, 1]``."""
    arr = np.stack([np.stack([np.asarray(im.convert("RGB")) for im in row]) for row in sets])
    return torch.from_numpy(arr).permute(0, 1, 4, 2, 3).float() / 127.5 - 1


class M2MPipeline(DiffusionPipeline):
    """Many-to-many generation with an M2M model.

    Components: ``unet`` (``M2MUNet``), ``scheduler`` (DDIM for inference, appendix A), ``vae``
    (``AutoencoderKL``, or None for pixel space) and ``image_encoder``, the external context encoder
    (``Dinov2Model`` for M2M-DINO; None for M2M-Self).
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    _optional_components = ["vae", "image_encoder"]

    def __init__(self, unet, scheduler, vae=None, image_encoder=None, guidance_scale: float = 7.5):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, image_encoder=image_encoder)
        # The model's own default s of eq. 6 (saved in model_index.json): 7.5 at SD scale as in the paper;
        # the tiny preset's is lower (docs/model.md).
        self.register_to_config(guidance_scale=float(guidance_scale))
        self.speed = Speed()  # how the UNet runs, not what it computes (m2m.speed); not saved with the model

    def enable_speed(self, speed: Speed) -> "M2MPipeline":
        """Run the UNet's denoising steps as ``speed`` says (``m2m.speed``): compiled, in NHWC, on an SDPA
        backend. The compiled ``forward`` reads the call's key/value cache as an input. Returns the pipeline."""
        speed_up(self.unet, speed)
        self.speed = speed
        return self

    @property
    def variant(self) -> str:
        return self.unet.config.variant

    @property
    def context_encoder(self) -> ContextEncoder:
        return self.unet.context_encoder

    @property
    def image_size(self) -> int:
        size = self.unet.config.unet_config["sample_size"]
        if self.vae is not None:
            size *= 2 ** (len(self.vae.config.block_out_channels) - 1)
        return size

    # -- context: what the model attends to ---------------------------------------------------

    def _context_of(self, pixels: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        encoder = self.context_encoder
        if not encoder.external:
            return latents.to(self.unet.dtype)
        return encoder.features(self.image_encoder, pixels, self.unet.config.dino_image_size).to(self.unet.dtype)

    @staticmethod
    def _check_settings(num_inference_steps, scales: dict) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1 (got {num_inference_steps!r})")
        for name, value in scales.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number (got {value})")

    def _check_inputs(self, images, num_images, window, batch_size):
        if window < 1:
            raise ValueError(f"window W must be >= 1 (got {window}): the model needs context images to attend to")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1 (got {num_images})")
        if images is None:
            return torch.zeros(batch_size, 0, 3, self.image_size, self.image_size)
        if isinstance(images, list):
            images = from_pil(images)
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, K, 3, H, W) RGB in [-1, 1], got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {images.shape[-1]}x{images.shape[-2]} but this model generates "
                f"{self.image_size}x{self.image_size}; resize them first"
            )
        return images

    def _start_memory(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every context image so far, as pixels and as latents (one entry per position)."""
        batch, n_given = pixels.shape[:2]
        if not self.context_encoder.external:
            dtype = self.vae.dtype if self.vae else self.unet.dtype
            latents = encode_images(self.vae, pixels.to(dtype))
        else:  # an external encoder (M2M-DINO's DINOv2) reads the pixels; their latents are never needed
            latents = pixels.new_zeros(batch, n_given, 0)
        return [pixels[:, j : j + 1] for j in range(n_given)], [latents[:, j : j + 1] for j in range(n_given)]

    def _context(self, guidance: Guidance, memory, lo: int, hi: int) -> torch.Tensor:
        """The clean context of positions ``lo .. hi - 1`` once per guidance branch."""
        pixels, latents = memory
        return guidance.context(torch.cat([self._context_of(pixels[j], latents[j]) for j in range(lo, hi)], 1))

    def _cache(self, guidance: Guidance, memory, lo: int, hi: int, cache: ContextCache) -> None:
        """Keys/values of context positions ``lo .. hi - 1`` join ``cache`` (which keeps the last W)."""
        context = self._context(guidance, memory, lo, hi)
        self.unet.encode_context(context, cache, guidance.conditions(slice(lo, hi)))

    def _denoise(self, guidance: Guidance, memory, batch: int, position: int, window: int,
                 cache: ContextCache | None, generator, bar) -> torch.Tensor:
        """DDIM from noise to the latents of the image at ``position``, guided by eq. 6 or eq. 7; with a
        ``cache`` the context's keys/values are read from it, without one they are recomputed every step."""
        unet = self.unet
        config = unet.config.unet_config
        shape = (batch, 1, config["in_channels"], config["sample_size"], config["sample_size"])
        n_visible = min(window, position)
        lo = position - n_visible
        query_cond = guidance.conditions(slice(position, position + 1))
        # the unconditional branch leads the batch: its cached context is W copies of one zeroed image
        null_rows = batch if cache is not None and guidance.null_first else 0
        latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        n_branches = len(guidance.branches)
        for t in self.scheduler.timesteps:
            context = context_cond = None
            if cache is None and n_visible:  # the uncached baseline recomputes the context every step
                context = self._context(guidance, memory, lo, position)
                context_cond = guidance.conditions(slice(lo, position))
            inp = self.scheduler.scale_model_input(latents.repeat(n_branches, 1, 1, 1, 1), t)
            eps = guidance.combine(unet(
                inp, t, context=context, visible=[n_visible], cond_query=query_cond,
                cond_context=context_cond, cache=cache, window=window, null_context_rows=null_rows,
            ))
            latents = self.scheduler.step(eps.flatten(0, 1), t, latents.flatten(0, 1)).prev_sample
            latents = latents.unflatten(0, (batch, 1))
            bar.update()
        return latents

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor | list[list[Image.Image]] | None = None,
        num_images: int = 1,
        window: int = 4,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        conditions: torch.Tensor | None = None,
        image_guidance_scale: float | None = None,
        condition_guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        use_cache: bool = True,
        batch_size: int = 1,
        progress: bool = True,
        return_dict: bool = True,
    ):
        """Generate ``num_images`` images after the K preceding ``images`` ``(B, K, 3, H, W)`` in [-1, 1].

        Args:
            window: context window W, the most preceding images the model sees.
            guidance_scale: s of eq. 6; None: the model's default (``config.guidance_scale``: 7.5 as in
                the paper for ``sd21``); 1 disables guidance.
            conditions: task conditions for all K + M positions (``(B, K+M, 12)`` cameras or
                ``(B, K+M)`` step indices) of a fine-tuned model; switches to eq. 7.
            image_guidance_scale, condition_guidance_scale: s_I and s_C of eq. 7 (default: s and 1).
            use_cache: reuse the context keys/values (the result is the same, only faster).
        """
        self._check_settings(num_inference_steps, {
            "guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale,
            "condition_guidance_scale": condition_guidance_scale,
        })
        device = self._execution_device
        guidance_scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        pixels = self._check_inputs(images, num_images, window, batch_size).to(device)
        batch, n_given = pixels.shape[:2]
        cond_emb = None
        if conditions is not None:
            cond_emb = self.unet.embed_condition(conditions.to(device)).to(self.unet.dtype)
            if cond_emb.shape[:2] != (batch, n_given + num_images):
                raise ValueError(f"conditions must cover all {n_given + num_images} positions of {batch} sets")
        guidance = Guidance.choose(guidance_scale, image_guidance_scale, condition_guidance_scale, cond_emb)
        with sdpa_backend(self.speed.sdpa_backend):  # every attention call of this call, the encoders' too
            memory = self._start_memory(pixels)

            cache = ContextCache(window) if use_cache else None  # this call's own: the UNet keeps no state
            if use_cache and n_given:
                first = max(0, n_given - window)  # earlier images never enter the window
                self._cache(guidance, memory, first, n_given, cache)
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            outputs = []
            self.set_progress_bar_config(disable=not progress)
            with self.progress_bar(total=num_images * num_inference_steps) as bar:
                for i in range(num_images):
                    bar.set_description(f"image {i + 1}/{num_images}, DDIM steps")
                    latents = self._denoise(guidance, memory, batch, n_given + i, window, cache, generator, bar)
                    image = decode_latents(self.vae, latents)
                    outputs.append(image)
                    memory[0].append(image)
                    memory[1].append(latents)
                    if use_cache and i + 1 < num_images:
                        self._cache(guidance, memory, n_given + i, n_given + i + 1, cache)

        images_out = (torch.cat(outputs, 1).float() + 1) / 2
        if output_type == "pil":
            images_out = to_pil(images_out)
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        self.maybe_free_model_hooks()
        return M2MPipelineOutput(images=images_out) if return_dict else (images_out,)


def load_on(folder, device: str, **kwargs) -> M2MPipeline:
    """A saved pipeline on ``device``; on a CPU in float32, where float16 weights (e.g. the shipped tiny
    models of ``models/``) cannot run. Other devices keep the saved dtype."""
    from m2m.weights import verify_safetensors

    verify_safetensors(folder)  # a damaged weights file is named, not a bare deserialisation error
    dtype = torch.float32 if device == "cpu" else None
    return M2MPipeline.from_pretrained(folder, dtype=dtype, **kwargs).to(device)
