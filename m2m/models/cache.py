"""The key/value cache of the clean context (paper section 6.1, "Inference"; open choice 2 of docs/model.md).

Clean context images are run at t = 0 (M2M-Self) or through a frozen encoder (M2M-DINO), so their keys
and values of eq. 4 do not depend on the denoising step: they are computed once per context image and
reused by every DDIM step and every later auto-regressive step. One ``ContextCache`` holds them for one
sampling call, made by its caller and handed to every UNet call inside ``ImageSetCall``, as transformers
hands ``past_key_values`` to a decoder: the Image-Set Attention layers hold weights, not state, so two
pipelines that share one UNet never see each other's context, and a compiled or graph-captured UNet call
has no hidden inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ContextCache:
    """Keys and values ``(B, Nc, L, D)`` of each Image-Set Attention layer, the newest ``window`` images.

    Args:
        window: how many newest context images to keep (the window W): images that left the window are
            never attended again, so memory stays flat however long the sequence grows. None keeps all.
    """

    def __init__(self, window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"a context cache keeps window W >= 1 images (got {window})")
        self.window = window
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._visible: dict[int, tuple[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def n_cached(self) -> int:
        """Context images held (the same in every layer)."""
        return next(iter(self.keys.values())).shape[1] if self.keys else 0

    def tokens(self, layer: int) -> int:
        """``L``: key/value tokens of one cached image at ``layer``."""
        return self.keys[layer].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append the keys/values ``(B, n, L, D)`` of ``n`` new context images at ``layer``, keeping the newest W."""
        keep = self.window
        if layer in self.keys:
            k, v = torch.cat([self.keys[layer], k], 1), torch.cat([self.values[layer], v], 1)
        self.keys[layer], self.values[layer] = (k, v) if keep is None else (k[:, -keep:], v[:, -keep:])
        self._visible.pop(layer, None)

    def visible(self, layer: int, window: int | None,
                join: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        """``join(k, v)`` of the newest ``window`` cached images at ``layer`` (all with None).

        ``join`` (the layer's null token put first) runs once per cache content and window: every DDIM step
        of one image reads the same keys/values.
        """
        n_cached = self.keys[layer].shape[1]
        n = n_cached if window is None else min(window, n_cached)
        held = self._visible.get(layer)
        if held is None or held[0] != n:
            k, v = self.keys[layer][:, n_cached - n :], self.values[layer][:, n_cached - n :]
            held = self._visible[layer] = (n, join(k, v))
        return held[1]

    def nbytes(self) -> int:
        """Bytes of the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))
