"""benchmarks/bench_cpu_training.py: each option really changes the loop it times, and the table reads the rows."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from m2m.training.config import TrainConfig
from m2m.training.loop import start_run
from tests.training.test_loop import mis  # noqa: F401 - the tiny MIS fixture

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_cpu_training import OPTIONS, attention_kernel, measure, optimizer_kind, section  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


def test_the_fused_row_trains_with_a_fused_adamw_and_the_others_do_not(mis, tmp_path):  # noqa: F811
    cfg = TrainConfig(out=tmp_path / "m", data=mis, variant="dino", batch_size=2, n_images=3, steps=1,
                      checkpoint_every=0, mixed_precision="no")
    with optimizer_kind("fused AdamW"):
        fused = start_run(cfg).optimizer.optimizer
    assert fused.defaults["fused"] is True
    assert torch.optim.AdamW.__name__ == "AdamW"  # restored
    assert not start_run(cfg).optimizer.optimizer.defaults.get("fused")


def test_a_row_times_the_real_loop_and_the_table_compares_it_with_the_shipped_one(mis, tmp_path):  # noqa: F811
    args = argparse.Namespace(warmup=1, steps=2, batch_size=2)
    rows = [measure("dino", option, mis, args, tmp_path) for option in (OPTIONS[0], "channels_last")]
    for row in rows:
        assert row["images_per_s"] > 0 and 0 <= row["data_share"] < 1 and row["slowest_over_median"] >= 1
        assert row["flops_per_image"] > 0
    report = {"settings": {"argv": "--steps 2", "batch_size": 2, "steps": 2, "warmup": 1}, "machine": "here",
              "peak_gflops": 100.0, "rows": [*rows, {"variant": "dino", "option": "torch.compile", "error": "no cc"}]}
    lines = section(report).splitlines()
    shipped, last, failed = (next(line for line in lines if f"| {option} " in line)
                             for option in (OPTIONS[0], "channels_last", "torch.compile"))
    assert "| 1.00 |" in shipped
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    assert f"| {ratio:.2f} |" in last
    assert "failed: no cc" in failed


def test_the_bf16_rows_train_under_autocast_and_only_the_last_attends_in_bf16(mis, tmp_path, kernel_dtypes):  # noqa: F811
    from m2m.models import attention

    shipped = attention.scaled_dot_product
    args = argparse.Namespace(warmup=1, steps=2, batch_size=2)
    kernels = {}
    for option in ("bf16 autocast", "bf16 autocast, bf16 attention"):
        kernel_dtypes.clear()
        with attention_kernel(option):
            measure("self", option, mis, args, tmp_path)  # every attention is the UNet's (no frozen encoder)
        kernels[option] = set(kernel_dtypes)
    assert kernels["bf16 autocast"] == {torch.float32}  # autocast on, the kernels kept in fp32
    assert torch.bfloat16 in kernels["bf16 autocast, bf16 attention"]
    assert attention.scaled_dot_product is shipped  # restored
