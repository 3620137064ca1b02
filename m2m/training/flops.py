"""How much of the machine a training run uses: FLOPs per image against a measured matmul peak.

The FLOPs of eq. 5 per image are counted once, by torch's ``FlopCounterMode`` over a forward pass on the run's
first micro-batch (the frozen encoders once, the UNet three times for its forward and backward; recomputation
under gradient checkpointing is not counted: ``loop.flops_per_image``); the peak is a dense matmul in the run's
precision timed on the run's device with its threads.
Their ratio at the logged speed is the run's model-FLOP utilisation (MFU, as nanoGPT reports it), printed on
every log line and kept in ``train_metrics.json``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Matmul sizes for the peak: large enough to reach the BLAS kernels' speed, small enough to time in ~0.1 s.
PEAK_SIZE = {"cpu": 512, "cuda": 8192}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.1) -> float:
    """FLOP/s of square matmuls on ``device`` in ``dtype`` (the threads torch uses on a CPU)."""
    n = PEAK_SIZE.get(device.type, 4096)
    own = torch.Generator(device).manual_seed(0)  # the run's random streams stay untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=own)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=own)
    a @ b  # warm-up: kernel selection, allocation
    _sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        a @ b
        calls += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * calls / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def counting():
    """Count the FLOPs of the block; ``get_total_flops()`` of the yielded counter reads them afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        yield counter


def mfu(flops_per_image: float, images_per_s: float, peak: float, processes: int = 1) -> float:
    """The fraction of ``processes`` devices' peak that ``images_per_s`` (all processes together) uses."""
    return flops_per_image * images_per_s / (peak * processes)


@dataclass
class Utilisation:
    """FLOPs per trained image (counted on the run's first micro-batch) against this device's matmul peak."""

    peak: float
    processes: int
    flops_per_image: float | None = None

    def of(self, images_per_s: float) -> float | None:
        """MFU at ``images_per_s`` (all processes together)."""
        return None if self.flops_per_image is None else mfu(self.flops_per_image, images_per_s, self.peak,
                                                             self.processes)
