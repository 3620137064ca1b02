"""Task-condition embedders ``E(c_C)`` for task-specific fine-tuning (paper section 6.2, 8.5).

- Novel view synthesis: the camera extrinsics of each image (a flattened 3x4 camera-to-world matrix)
  through an MLP (section 8.5.1).
- Visual procedure generation: the step position of each image, sinusoidally encoded, through an MLP
  (section 8.5.2).

Both map a per-image condition ``(B, N, ...)`` to ``(B, N, condition_dim)``. A dropped condition (the
``∅`` of eq. 7) is an all-zero embedding, applied by the caller with a mask.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CONDITIONS = ("camera", "procedure")


def sinusoidal_embedding(position: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer sinusoidal encoding of integer positions ``(...)`` -> ``(..., dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=position.device) / half)
    angles = position.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class CameraEmbedder(nn.Module):
    """``E(c)`` for camera extrinsics: flattened 3x4 (or 4x4) matrices ``(B, N, 12|16)`` through an MLP."""

    def __init__(self, condition_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(12, condition_dim), nn.SiLU(), nn.Linear(condition_dim, condition_dim))

    def forward(self, cameras: torch.Tensor) -> torch.Tensor:
        if cameras.shape[-1] == 16:
            cameras = cameras[..., :12]
        if cameras.shape[-1] != 12:
            raise ValueError(f"camera condition must be flattened 3x4 or 4x4 extrinsics, got last dim {cameras.shape[-1]}")
        return self.mlp(cameras.float())


class StepEmbedder(nn.Module):
    """``E(c)`` for procedure steps: sinusoidal encoding of the step index ``(B, N)`` through an MLP."""

    def __init__(self, condition_dim: int):
        super().__init__()
        self.condition_dim = condition_dim
        self.mlp = nn.Sequential(
            nn.Linear(condition_dim, condition_dim), nn.SiLU(), nn.Linear(condition_dim, condition_dim)
        )

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(steps, self.condition_dim))


def build_condition_embedder(condition: str, condition_dim: int) -> nn.Module:
    if condition == "camera":
        return CameraEmbedder(condition_dim)
    if condition == "procedure":
        return StepEmbedder(condition_dim)
    raise ValueError(f"unknown task condition {condition!r}; expected one of {CONDITIONS}")
