"""Which torch device a command runs on."""

from __future__ import annotations

import os


def pick_device(device: str = "auto") -> str:
    """``device`` as given, or for ``auto``: ``$M2M_DEVICE`` (set by the pipeline's compute resource) when
    set, else ``cuda`` when torch sees a GPU, else ``cpu``. A CUDA device without a GPU is an error."""
    import torch

    if device == "auto":
        device = os.environ.get("M2M_DEVICE", "auto")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device available")
    return device
