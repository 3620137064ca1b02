"""The random draws of eq. 5 (noise, timesteps, condition dropout) as a function of where a micro-batch
sits in the run, not of which process runs it.

Each optimizer step of ``--batch-size`` sets is ``slots`` micro-batches of ``--micro-batch-size`` sets,
read in stream order: process ``rank`` of ``P`` takes slot ``a * P + rank`` at its ``a``-th accumulation
micro-batch, which is exactly the block of the data stream it reads (``m2m.data.loader.owned_blocks``).
Seeding each micro-batch's generator from ``(seed, step, slot)`` therefore gives every set the same noise
whether one process accumulates all the slots or several processes on one or many machines share them:
at a fixed micro-batch size, training is the same to float rounding on any number of processes, and a
checkpoint needs no generator state to continue, whatever the number of processes that resume it.
"""

from __future__ import annotations

import hashlib

import torch


def slot(accumulated: int, rank: int, num_processes: int) -> int:
    """The micro-batch's place in its optimizer step's global batch (the data stream's block order)."""
    return accumulated * num_processes + rank


def noise_generator(seed: int, step: int, slot: int, device) -> torch.Generator:
    """The generator of eq. 5's draws for micro-batch ``slot`` of optimizer step ``step`` (0-based)."""
    digest = hashlib.sha256(f"{seed}:noise:{step}:{slot}".encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
