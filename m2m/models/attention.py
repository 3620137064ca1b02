"""Image-Set Attention (paper section 5, eq. 4, Fig. 3) as a diffusers attention processor.

It replaces the text cross-attention ``attn2`` of every transformer block of the UNet. Queries are the
tokens of all noisy images of a set, keys/values the tokens of the clean context: the clean images'
hidden states at the same block (M2M-Self) or their DINOv2 features (M2M-DINO). A block-causal mask lets
noisy image ``i`` see the clean images ``j < i`` only; every query also sees one learned null key/value,
so the first image (no preceding image) has a defined softmax.

The mask is never materialised: one ``scaled_dot_product_attention`` call per group of noisy images
that see the same prefix keeps the flash kernel (a dense boolean mask costs ~9x on a GPU).

On CPU under bfloat16 (``m2m train --mixed-precision bf16``) the attention kernels themselves run in
float32 (``scaled_dot_product``): the projections, feed-forwards and convolutions around them gain from
bfloat16, the CPU flash kernel's bfloat16 path loses (benchmarks/RESULTS.md, "Training throughput on CPU").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from m2m.models.cache import ContextCache


def bfloat16_on_cpu(t: torch.Tensor) -> bool:
    """Whether ``t``'s attention would run in bfloat16 on CPU: a bfloat16 tensor, or CPU autocast to bfloat16."""
    if t.device.type != "cpu":
        return False
    return t.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def scaled_dot_product(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(Q K^T / sqrt(d)) V`` by ``F.scaled_dot_product_attention``; bfloat16 on CPU runs in float32.

    The CPU flash kernel is slower in bfloat16 than in float32 at the tiny preset's sizes: a training step
    under CPU autocast gains 1.35-1.42x over float32 with the kernels kept in float32, 1.01-1.09x with them
    in bfloat16 too (benchmarks/bench_cpu_training.py, benchmarks/RESULTS.md). The result keeps ``q``'s dtype.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        mask = None if attn_mask is None else attn_mask.float()
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def image_set_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: list[int], heads: int, tokens_per_image: int
) -> torch.Tensor:
    """Eq. 4 with the causal image-set mask: Softmax(Q K^T / sqrt(d)) V over each query's prefix.

    Args:
        q: ``(B, Nq, Lq, D)`` projected queries of ``Nq`` noisy images.
        k, v: ``(B, 1 + Nc * Lk, D)`` projected keys/values: the null token, then ``Nc`` clean images.
        visible: for each noisy image, how many clean images (a prefix of the ``Nc``) it may see.
        heads: number of attention heads.
        tokens_per_image: ``Lk``, the number of key/value tokens of one clean image.

    Returns:
        ``(B, Nq, Lq, D)``.
    """
    batch, n_query, q_len, dim = q.shape
    if len(visible) != n_query:
        raise ValueError(f"visible has {len(visible)} entries for {n_query} noisy images")
    d_head = dim // heads

    def attend(qq: torch.Tensor, n_visible: int) -> torch.Tensor:
        n_keys = 1 + n_visible * tokens_per_image
        kk = k[:, :n_keys].reshape(batch, n_keys, heads, d_head).transpose(1, 2)
        vv = v[:, :n_keys].reshape(batch, n_keys, heads, d_head).transpose(1, 2)
        o = scaled_dot_product(qq.reshape(batch, -1, heads, d_head).transpose(1, 2), kk, vv)
        return o.transpose(1, 2).reshape(batch, -1, q_len, dim)

    if all(n == visible[0] for n in visible):  # sampling: every noisy image sees the same context
        return attend(q, visible[0])
    out = q.new_empty(q.shape)
    start = 0
    while start < n_query:  # group consecutive noisy images that see the same prefix: one kernel call each
        stop = start + 1
        while stop < n_query and visible[stop] == visible[start]:
            stop += 1
        out[:, start:stop] = attend(q[:, start:stop], visible[start])
        start = stop
    return out


def masked_attention_reference(q, k, v, visible, heads, tokens):
    """Eq. 4 written plainly, to check ``image_set_attention`` against: an explicit block-causal mask over
    every key, in float64 (memory grows with Nq*Lq x Nc*Lk; for tests and benchmarks only)."""
    b, nq, lq, d = q.shape
    dh = d // heads
    qq = q.double().reshape(b, nq * lq, heads, dh).transpose(1, 2)
    kk = k.double().reshape(b, -1, heads, dh).transpose(1, 2)
    vv = v.double().reshape(b, -1, heads, dh).transpose(1, 2)
    scores = qq @ kk.transpose(-1, -2) / dh**0.5
    allowed = torch.zeros(nq * lq, kk.shape[2], dtype=torch.bool, device=q.device)
    for i, n in enumerate(visible):
        allowed[i * lq : (i + 1) * lq, : 1 + n * tokens] = True  # the null token, then n clean images
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ vv
    return out.transpose(1, 2).reshape(b, nq, lq, d)


def repeated_context_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, copies: int, heads: int) -> torch.Tensor:
    """Eq. 4 over the null token and ``copies`` identical context images, computed from one copy.

    The unconditional branch of eq. 6 attends to W copies of the same zeroed context. Attention over W
    identical key/value blocks equals attention over one block whose scores carry ``+ log W`` (the null
    key unbiased): the softmax numerator and denominator of each block key both gain the factor W. Exact
    up to float rounding, and it leaves 1/W of the keys.

    Args:
        q: ``(B, Nq, Lq, D)`` projected queries.
        k, v: ``(B, 1 + Lk, D)``: the null token, then one context image's tokens.
        copies: how many identical context images the queries see (W).
    """
    batch, n_query, q_len, dim = q.shape
    d_head, n_keys = dim // heads, k.shape[1]
    bias = torch.full((n_keys,), math.log(copies), dtype=q.dtype, device=q.device)
    bias[0] = 0.0
    kk = k.reshape(batch, n_keys, heads, d_head).transpose(1, 2)
    vv = v.reshape(batch, n_keys, heads, d_head).transpose(1, 2)
    qq = q.reshape(batch, -1, heads, d_head).transpose(1, 2)
    o = scaled_dot_product(qq, kk, vv, attn_mask=bias.view(1, 1, 1, n_keys))
    return o.transpose(1, 2).reshape(batch, n_query, q_len, dim)


@dataclass(frozen=True)
class ImageSetCall:
    """What one UNet call tells every Image-Set Attention layer, passed as diffusers passes per-call data:
    ``unet(..., cross_attention_kwargs={"image_set": call})`` reaches each processor as ``image_set``.

    mode:
        ``"joint"``   hidden states are ``[clean; noisy]`` along the batch (M2M-Self, training);
        ``"context"`` keys/values come from ``context`` (M2M-DINO features), hidden states are noisy only;
        ``"encode"``  hidden states are clean context images: their keys/values join ``cache``, zeros return;
        ``"cached"``  hidden states are noisy only; keys/values come from ``cache``.

    The cache travels with the call, as transformers passes ``past_key_values``: the layers keep no state
    between calls (``m2m.models.cache``).
    """

    mode: str
    batch: int
    visible: tuple[int, ...] = ()  # for each noisy image, how many clean images it sees (eq. 4's mask)
    n_context: int = 0
    cache: ContextCache | None = None  # "encode": filled; "cached": read (None: nothing precedes)
    window: int | None = None  # "cached": the newest W cached images are visible
    null_rows: int = 0  # "cached": the first rows of the batch have a zeroed context (eq. 6's unconditional branch)
    context: torch.Tensor | None = None  # "context": features (B, Nc, S, D)
    cond_query: torch.Tensor | None = None  # E(c_C) of the noisy images (B, Nq, condition_dim)
    cond_context: torch.Tensor | None = None  # E(c_C) of the clean images (B, Nc, condition_dim)


class SelfAttnProcessor(AttnProcessor2_0):
    """The UNet's own self-attention (``attn1``) as diffusers computes it. diffusers hands every
    ``cross_attention_kwargs`` entry to both attentions of a block; this one takes ``image_set`` and
    leaves it to Image-Set Attention. In bfloat16 on CPU a transformer block's plain self-attention runs its
    kernel in float32 (``scaled_dot_product``); everything else is diffusers' ``AttnProcessor2_0``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 image_set: ImageSetCall | None = None):
        plain = bfloat16_on_cpu(hidden_states) and (  # elsewhere nothing more is looked at
            encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
            and attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None
            and attn.norm_k is None and not attn.residual_connection and attn.rescale_output_factor == 1.0
        )
        if not plain:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        batch, heads = hidden_states.shape[0], attn.heads
        q, k, v = (proj(hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = scaled_dot_product(q, k, v).transpose(1, 2).reshape(batch, -1, q.shape[1] * q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class ImageSetAttnProcessor(nn.Module):
    """Image-Set Attention for one ``attn2`` layer (eq. 4).

    Owns the learned null key/value and an optional projection of the task-condition embedding
    ``E(c_C)`` (section 6.2; zero-initialised so fine-tuning starts from the pre-trained model). The
    key/value cache of the clean context is the call's (``ImageSetCall.cache``), where this layer's
    keys/values are found under its index ``layer``.
    """

    def __init__(self, inner_dim: int, query_dim: int, condition_dim: int | None = None, layer: int = 0):
        super().__init__()
        self.layer = layer
        self.null_k = nn.Parameter(torch.randn(inner_dim) * inner_dim**-0.5)
        self.null_v = nn.Parameter(torch.zeros(inner_dim))
        self.cond_proj = None
        if condition_dim:
            self.cond_proj = nn.Linear(condition_dim, query_dim)
            nn.init.zeros_(self.cond_proj.weight)
            nn.init.zeros_(self.cond_proj.bias)
    def _condition(self, cond: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """The per-layer projection of ``E(c_C)`` ``(B, n, condition_dim)`` -> ``(B*n, 1, C)``, or None."""
        if self.cond_proj is None or cond is None:
            return None
        return self.cond_proj(cond.to(like.dtype)).reshape(-1, 1, like.shape[-1])

    def _add_condition(self, hidden: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``z = z + E(c_C)`` on the hidden states Image-Set Attention reads (section 6.2)."""
        emb = self._condition(cond, hidden)
        return hidden if emb is None else hidden + emb

    def with_null(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flatten ``(B, Nc, L, D)`` to ``(B, 1 + Nc*L, D)`` with the null token first."""
        batch, _, _, dim = k.shape
        null_k = self.null_k.to(k.dtype).expand(batch, 1, dim)
        null_v = self.null_v.to(v.dtype).expand(batch, 1, dim)
        return torch.cat([null_k, k.flatten(1, 2)], 1), torch.cat([null_v, v.flatten(1, 2)], 1)

    def _project_context(self, attn, context: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``K = W^K z^K``, ``V = W^V z^V`` for context tokens ``(B*Nc, L, C)`` -> ``(B, Nc, L, D)``."""
        k = attn.to_k(context)
        v = attn.to_v(context)
        return k.unflatten(0, (batch, -1)), v.unflatten(0, (batch, -1))

    def store(self, attn, context: torch.Tensor, batch: int, cache: ContextCache) -> None:
        """The keys/values of clean context tokens ``(B*Nc, L, C)`` join ``cache`` (which keeps the newest W)."""
        cache.update(self.layer, *self._project_context(attn, context, batch))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 image_set: ImageSetCall | None = None):
        s = image_set
        if s is None:
            raise ValueError("Image-Set Attention needs the call's image set: "
                             "unet(..., cross_attention_kwargs={'image_set': ImageSetCall(...)}) (M2MUNet does this)")
        batch = s.batch
        if s.mode == "encode":
            if s.cache is None:
                raise ValueError("Image-Set Attention's encode call needs a ContextCache to fill (ImageSetCall.cache)")
            self.store(attn, self._add_condition(hidden_states, s.cond_context), batch, s.cache)
            return torch.zeros_like(hidden_states)

        if s.mode == "joint":
            n_clean = batch * s.n_context
            clean, noisy = hidden_states[:n_clean], hidden_states[n_clean:]
            ctx = self._add_condition(clean, s.cond_context)
            k, v = self.with_null(*self._project_context(attn, ctx, batch))
            tokens = clean.shape[1]
        elif s.mode == "context":
            noisy = hidden_states
            features = s.context.flatten(0, 1)  # (B*Nc, S, D_dino)
            k, v = self.with_null(*self._project_context(attn, features, batch))
            tokens = s.context.shape[2]
        elif s.mode == "cached" and (s.cache is None or not s.cache.n_cached):  # nothing precedes: the null token alone
            noisy = hidden_states
            k = self.null_k.to(noisy.dtype).expand(batch, 1, -1)
            v = self.null_v.to(noisy.dtype).expand(batch, 1, -1)
            tokens = 0
        elif s.mode == "cached":
            noisy = hidden_states
            k, v = s.cache.visible(self.layer, s.window, self.with_null)
            tokens = s.cache.tokens(self.layer)
        else:
            raise ValueError(f"unknown Image-Set Attention mode {s.mode!r}")

        target = self._condition(s.cond_query, noisy)  # each noisy image's own condition: which view/step
        if target is not None:
            noisy = noisy + target
        q = attn.to_q(noisy).unflatten(0, (batch, -1))  # (B, Nq, L, D)
        rows, copies = s.null_rows if s.mode == "cached" else 0, s.visible[0] if s.visible else 0
        if rows and copies > 1 and all(n == copies for n in s.visible):
            # the zeroed context's W cached images are identical: attend to one of them, + log W
            null = repeated_context_attention(q[:rows], k[:rows, : 1 + tokens], v[:rows, : 1 + tokens], copies, attn.heads)
            rest = image_set_attention(q[rows:], k[rows:], v[rows:], s.visible, attn.heads, tokens)
            out = torch.cat([null, rest], 0).flatten(0, 1)
        else:
            out = image_set_attention(q, k, v, s.visible, attn.heads, tokens).flatten(0, 1)
        out = attn.to_out[1](attn.to_out[0](out))
        if target is not None:  # z = z + E(c_C) stays in the noisy images' hidden states (the residual)
            out = out + target
        if s.mode == "joint":  # z' = [z_c; z_n']: the clean copy passes through unchanged
            out = torch.cat([torch.zeros_like(clean), out], 0)
        return out
