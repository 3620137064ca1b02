"""Speed options around the UNet: each one a seam that leaves the math as it is, chosen by name.

- ``compile``: ``torch.compile`` of the UNet's denoising step (in place: the weights keep their names):
  ``default`` (inductor's fused kernels), ``reduce-overhead`` (the same, replayed as CUDA graphs) or
  ``cudagraphs`` (the eager kernels replayed as CUDA graphs: no code generation, seconds to compile). CUDA
  graphs are for batch-1 sampling, where launching kernels costs more than running them; on a CPU they are
  skipped. Never ``max-autotune``: minutes of autotuning for every new shape. Off by default: the first call
  of each new shape compiles (a minute at SD-2.1-base size with inductor), and a GPU run decides whether it pays.
- ``channels_last``: the UNet's weights, and so its convolutions' activations, in NHWC. Off by default.
- ``sdpa_backend``: the ``scaled_dot_product_attention`` kernel, ``flash``, ``efficient``, ``cudnn`` or
  ``math``, with ``math`` behind it for a call the chosen one cannot serve (the ``+ log W`` bias of eq. 6's
  unconditional branch, say). None (default): PyTorch's own choice per call.
- ``adamw``: the AdamW implementation, ``for-loop``, ``foreach`` (a few kernels for all parameters) or
  ``fused`` (one). Default ``auto``: PyTorch's own choice, foreach for CUDA tensors and the for-loop on a
  CPU, where neither of the others paid (benchmarks/RESULTS.md, "Training throughput on CPU"); PyTorch
  keeps fused opt-in while it beds in, and a GPU run decides whether it pays here.

docs/model.md ("Speed options") says what each costs and why the defaults are what they are;
``benchmarks/bench_device_speed.py speed_options`` measures them on a GPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the training config read the names
    import torch

COMPILE_MODES = ("default", "reduce-overhead", "cudagraphs")  # inductor, inductor + CUDA graphs, CUDA graphs
SDPA_BACKENDS = {  # name -> torch.nn.attention.SDPBackend member
    "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH",
}
ADAMW = ("auto", "for-loop", "foreach", "fused")


@dataclass(frozen=True)
class Speed:
    """How the UNet runs (not what it computes): see the module's docstring for each field."""

    compile: str | None = None
    channels_last: bool = False
    sdpa_backend: str | None = None

    def __post_init__(self):
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile: one of {', '.join(COMPILE_MODES)} or none, got {self.compile!r}")
        if self.sdpa_backend is not None and self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend: one of {', '.join(SDPA_BACKENDS)} or none, got {self.sdpa_backend!r}")


def speed_up(unet: torch.nn.Module, speed: Speed) -> torch.nn.Module:
    """Put ``unet`` (an ``M2MUNet`` or a diffusers UNet) in NHWC and compile its ``forward``, as ``speed``
    says; in place, so an optimizer or a pipeline that holds it keeps the same parameters. Returns it."""
    import torch

    if speed.channels_last:
        unet.to(memory_format=torch.channels_last)
    if speed.compile == "cudagraphs":
        unet.compile(backend="cudagraphs")
    elif speed.compile is not None:
        unet.compile(mode=speed.compile)
    return unet


def sdpa_backend(name: str | None):
    """A context in which every ``scaled_dot_product_attention`` call uses backend ``name`` (``math`` where it
    cannot serve a call); None leaves PyTorch's choice."""
    if name is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = getattr(SDPBackend, SDPA_BACKENDS[name])
    return sdpa_kernel([chosen] if chosen == SDPBackend.MATH else [chosen, SDPBackend.MATH], set_priority=True)


def adamw(params, impl: str = "auto", **settings) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` with implementation ``impl`` (one of ``ADAMW``); ``settings``
    are its lr, betas, weight_decay and eps."""
    import torch

    if impl not in ADAMW:
        raise ValueError(f"adamw: one of {', '.join(ADAMW)}, got {impl!r}")
    if impl == "auto":
        return torch.optim.AdamW(params, **settings)
    return torch.optim.AdamW(params, foreach=impl == "foreach", fused=impl == "fused", **settings)
