"""The control run of the learning benchmarks: a context that states the set's shape kind and nothing else.

Not a model of the library, a measuring device (docs/evaluation.md, "The control"): M2M-DINO's ``E_v``
replaced by ``KindToken``, which gives every clean context image one token, the one-hot of the shape
kind read from the pixels of the set's first image (zeros where it finds no object). It reads circles and
squares, the kinds of the kind-only MIS where the control runs: the detector's palette and object regions,
then each region's compactness, which sets the two kinds far apart and costs a small fraction of the
detector's own shape fit (every kind over rotations and radii, more than a GPU training step for 64 sets).
Image-Set Attention (eq. 4), the UNet, the loss (eq. 5), the data and the recipe are the other runs' own.
The kind is then in the context as plainly as it can be: a control that draws the set's kind where
M2M-DINO and M2M-Self do not says reading the context is their limit; a control that does not draw it
either says drawing is.

Importing this module registers the ``control`` variant (``m2m.models.context.register_context_encoder``),
so the learning benchmarks (``bench_learning.py --variants control``) build, train, save and load it, as
does the ``m2m`` CLI run after that import (``scripts/device_learning.sh``). A saved control names this
module as its encoder's library; diffusers loads it only once it is imported, so whatever loads a saved
control imports this module first (``bench_judge.py``, ``bench_learning.py`` and the device script do).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from m2m.models.context import CONTEXT_ENCODERS, ContextEncoder, register_context_encoder

KIND_ONLY = ("circle", "square")  # the kinds of the kind-only MIS, where the control runs


# Compactness of a region, area / r_max^2 (r_max: the farthest pixel centre from its centroid, + 0.35 px as
# the detector's fit takes it): pi for a circle, 2 for a square; the token reads the nearer of the two.
COMPACTNESS = {"circle": 3.14159, "square": 2.0}


def object_masks(images: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` object masks of images ``(B, 3, H, W)`` in [-1, 1], all at once: each image's palette
    by the detector's colour model (``procedural_detect.palette_scores``, batched), then the pixels nearer
    its object colour than its background segment (``split_object``)."""
    import math

    from m2m.data.procedural import PALETTES
    from m2m.data.procedural_detect import OBJECT_WEIGHT, PALETTE_SIGMA

    pixels = torch.round((images.float().clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)  # (B, H, W, 3)
    colours = torch.tensor(list(PALETTES.values()), dtype=pixels.dtype, device=pixels.device)  # (P, 3, 3)
    obj, a, b = (colours[:, i].view(1, -1, 1, 1, 3) for i in range(3))
    x = pixels[:, None]  # (B, 1, H, W, 3)
    ab = b - a
    t = (((x - a) * ab).sum(-1) / (ab * ab).sum(-1)).clamp(0, 1)
    d_bg = ((x - (a + t[..., None] * ab)) ** 2).sum(-1)  # (B, P, H, W)
    d_obj = ((x - obj) ** 2).sum(-1)
    var2 = 2 * PALETTE_SIGMA**2
    loglik = torch.logaddexp(math.log(OBJECT_WEIGHT) - d_obj / var2, math.log(1 - OBJECT_WEIGHT) - d_bg / var2)
    palette = loglik.mean((2, 3)).argmax(1)  # (B,)
    pick = palette.view(-1, 1, 1, 1).expand(-1, 1, *d_obj.shape[2:])
    return d_obj.gather(1, pick)[:, 0] < d_bg.gather(1, pick)[:, 0]


def compactness(mask) -> float | None:
    """Area-weighted ``area / r_max^2`` of the mask's object regions (the detector's regions); None without one."""
    import numpy as np

    from m2m.data.procedural_detect import object_regions

    regions = object_regions(np.asarray(mask))
    if not regions:
        return None
    total, weighted = 0.0, 0.0
    for region in regions:
        rows, cols = np.nonzero(region)
        r_max = np.sqrt(((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2).max()) + 0.35
        total += len(rows)
        weighted += len(rows) * len(rows) / r_max**2
    return weighted / total


class KindToken(ModelMixin, ConfigMixin):
    """``(B, N, 1, 2)`` one-hot tokens, circle or square, of the kind read from each set's first image."""

    @register_to_config
    def __init__(self, kinds: tuple[str, ...] = KIND_ONLY):
        super().__init__()
        if tuple(kinds) != KIND_ONLY:
            raise ValueError(f"KindToken reads {KIND_ONLY} only (the kind-only MIS), got {tuple(kinds)}")
        self.register_buffer("one_hot", torch.eye(len(kinds)))  # saved, so the folder holds its weights file

    @property
    def width(self) -> int:
        return len(self.config.kinds)

    def read_kinds(self, images: torch.Tensor) -> list[int | None]:
        """The index in ``kinds`` of the kind of every image ``(B, 3, H, W)`` in [-1, 1] (None: no object)."""
        read = []
        for mask in object_masks(images).cpu():
            c = compactness(mask)
            read.append(None if c is None else min(range(self.width),
                                                   key=lambda k: abs(COMPACTNESS[self.config.kinds[k]] - c)))
        return read

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens of images ``(B, N, 3, H, W)`` in [-1, 1]: every image of a set states its first one's kind."""
        tokens = torch.zeros(images.shape[0], self.width, device=images.device, dtype=self.one_hot.dtype)
        for b, kind in enumerate(self.read_kinds(images[:, 0])):
            if kind is not None:
                tokens[b] = self.one_hot[kind]
        return tokens[:, None, None].expand(-1, images.shape[1], 1, -1)


def kind_token(preset: str, folder) -> KindToken:
    """``ContextEncoder.build`` of the control: the same token for every preset (no weights)."""
    return KindToken().eval()


def kind_token_features(encoder: KindToken, images: torch.Tensor, size: int) -> torch.Tensor:
    """``ContextEncoder.features`` of the control: ``(B, N, 1, D)``; ``size`` is not used (no network)."""
    return encoder(images)


CONTROL = (CONTEXT_ENCODERS.get("control") or register_context_encoder(ContextEncoder(
    "control", "Control (kind token)", build=kind_token, features=kind_token_features,
    width=lambda encoder: encoder.width,
)))
