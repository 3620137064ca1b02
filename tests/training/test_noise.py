"""Eq. 5's draws keyed by a micro-batch's place in the global batch (m2m/training/noise.py)."""

from __future__ import annotations

import torch

from m2m.data.loader import owned_blocks
from m2m.training import noise


def test_a_slot_is_the_block_of_the_stream_its_process_reads():
    for processes, accumulation in ((1, 4), (2, 2), (4, 1)):
        for rank in range(processes):
            stream = [{"position": i} for i in range(4)]  # one optimizer step of 4 sets, micro-batch 1
            read = [item["position"] for item in owned_blocks(stream, 0, 1, rank, processes)]
            assert read == [noise.slot(a, rank, processes) for a in range(accumulation)], (processes, rank)


def test_each_slot_and_step_draws_its_own_noise_the_same_in_any_process():
    def draw(step, slot):
        return torch.randn(8, generator=noise.noise_generator(0, step, slot, "cpu"))

    assert torch.equal(draw(3, 1), draw(3, 1))
    assert not torch.equal(draw(3, 1), draw(3, 0)) and not torch.equal(draw(3, 1), draw(4, 1))
    assert not torch.equal(draw(3, 1), torch.randn(8, generator=noise.noise_generator(1, 3, 1, "cpu")))  # the seed
