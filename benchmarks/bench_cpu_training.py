"""CPU training throughput of the tiny preset: where a step's time goes, and which speed-ups pay.

The real training loop (``m2m.training.loop``: ``start_run``, ``micro_step``, ``end_step``) on the
proof-of-learning MIS, per variant and per option, measured in one process as ratios to the loop as shipped:

- ``as shipped``: AdamW (for-each kernels), contiguous (NCHW) weights, the shards decoded as they stream;
- ``fused AdamW``: ``torch.optim.AdamW(fused=True)``;
- ``channels_last``: the UNet's weights (and so its activations) in NHWC;
- ``torch.compile``: the UNet through ``torch.compile`` (inductor's C++ CPU backend; the first step's
  compilation is reported apart and left out of the timed steps, later recompilations are not);
- ``bf16 autocast``: ``m2m train --mixed-precision bf16`` (Accelerate's CPU autocast: matmuls and
  convolutions in bfloat16, fp32 weights, optimizer and loss; the attention kernels in fp32, as
  ``m2m.models.attention.scaled_dot_product`` keeps them), which pays where the cores have bfloat16
  dot-product instructions (AVX512-BF16, AMX);
- ``bf16 autocast, bf16 attention``: the same with the attention kernels in bfloat16 too (what keeping
  them in fp32 buys).

Per row: images/s over the timed steps (data loading included), the share of that time spent waiting for
data, the slowest step against the median (a stall shows as a large ratio) and the model-FLOP utilisation
against a fp32 matmul peak timed in the same process with the same threads (``m2m.training.flops``).
The timed steps cross epoch boundaries of the small MIS, where the shuffle buffer refills.

Writes ``results/cpu_training.json`` and the "Training throughput on CPU" section of ``RESULTS.md``.

    python benchmarks/bench_cpu_training.py                       # about 10 minutes on 2 quiet cores
    python benchmarks/bench_cpu_training.py --threads 1 --variants dino --options "as shipped"
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from learning.common import offline_on_cpu
from learning.report import run_header, save_json, write_section

SECTION = "## Training throughput on CPU"
OPTIONS = ("as shipped", "fused AdamW", "channels_last", "torch.compile", "bf16 autocast",
           "bf16 autocast, bf16 attention")
VARIANT_NAMES = {"self": "M2M-Self", "dino": "M2M-DINO"}


@contextmanager
def optimizer_kind(option: str):
    """``start_run`` builds ``torch.optim.AdamW``; the fused row builds it with ``fused=True``."""
    original = torch.optim.AdamW
    if option == "fused AdamW":
        torch.optim.AdamW = functools.partial(original, fused=True)
    try:
        yield
    finally:
        torch.optim.AdamW = original


@contextmanager
def attention_kernel(option: str):
    """The bf16-attention row calls the attention kernel on whatever dtype autocast hands it."""
    from m2m.models import attention

    original = attention.scaled_dot_product
    if option == "bf16 autocast, bf16 attention":
        attention.scaled_dot_product = torch.nn.functional.scaled_dot_product_attention
    try:
        yield
    finally:
        attention.scaled_dot_product = original


def measure(variant: str, option: str, mis: Path, args, out: Path) -> dict:
    """Time ``args.steps`` optimizer steps of the real loop after ``args.warmup`` untimed ones."""
    from m2m.training.config import TrainConfig
    from m2m.training.loop import end_step, flops_per_image, micro_step, start_run
    from m2m.training.noise import noise_generator

    config = TrainConfig(
        out=out / f"{variant}-{option.replace(' ', '_').replace('.', '_')}", variant=variant, data=mis,
        steps=args.warmup + args.steps, batch_size=args.batch_size, n_images=5, checkpoint_every=0,
        log_every=10**9, seed=0, mixed_precision="bf16" if option.startswith("bf16") else "no",
    )
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # each row's Accelerator sets its own precision
    with optimizer_kind(option):
        run = start_run(config)
    compile_s = 0.0
    if option == "channels_last":
        run.pipe.unet.to(memory_format=torch.channels_last)  # in place: the optimizer keeps the same tensors
    batches = iter(run.data)
    if option == "torch.compile":
        run.prepared = torch.compile(run.prepared)
    data_s, step_s = [], []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch, context = next(batches), None
        generator = noise_generator(config.seed, index, 0, run.accelerator.device)  # one process, one slot
        loaded = time.perf_counter()
        if run.use.flops_per_image is None:  # counted on the first batch, as the loop does (untimed)
            run.use.flops_per_image, context = flops_per_image(run, batch, generator)
            loaded = time.perf_counter()
        loss, _ = micro_step(run, batch, generator, context)
        end_step(run, [loss])
        done = time.perf_counter()
        if option == "torch.compile" and index == 0:
            compile_s = done - loaded
        if index >= args.warmup:
            data_s.append(loaded - start)
            step_s.append(done - start)
    total = sum(step_s)
    speed = run.images_per_step * len(step_s) / total
    return {
        "variant": variant, "option": option, "images_per_s": speed, "data_share": sum(data_s) / total,
        "median_step_s": statistics.median(step_s), "slowest_over_median": max(step_s) / statistics.median(step_s),
        "mfu": run.use.of(speed), "peak_gflops": run.use.peak / 1e9,
        "flops_per_image": run.use.flops_per_image, "compile_s": compile_s,
    }


def section(report: dict) -> str:
    s, peak = report["settings"], report["peak_gflops"] * 1e9  # one peak for every row's MFU
    lines = [
        SECTION, "",
        f"`python benchmarks/bench_cpu_training.py {s['argv']}`".replace(" `", "`") + f" on {report['machine']}: "
        f"the training loop of `m2m train` on the proof-of-learning MIS, {s['batch_size']} sets x 5 images per "
        f"step, {s['steps']} timed steps after {s['warmup']} untimed, fp32 unless the option says otherwise; fp32 "
        f"matmul peak of the same threads in the same process: {report['peak_gflops']:.0f} GFLOP/s (a bfloat16 row's "
        f"MFU is against this fp32 peak too; the bfloat16 matmul peak: {report.get('peak_gflops_bf16', 0):.0f} "
        f"GFLOP/s). Raw numbers: `results/cpu_training.json`.",
        "",
        "| model | option | img/s | against as shipped | waiting for data | slowest step / median | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {VARIANT_NAMES[row['variant']]} | {row['option']} | failed: {row['error']} | | | | |")
            continue
        base = next(r for r in report["rows"] if r["variant"] == row["variant"] and r["option"] == OPTIONS[0])
        extra = f" (compile {row['compile_s']:.0f} s)" if row["compile_s"] else ""
        lines.append(
            f"| {VARIANT_NAMES[row['variant']]} | {row['option']}{extra} | {row['images_per_s']:.1f} | "
            f"{row['images_per_s'] / base['images_per_s']:.2f} | {row['data_share']:.1%} | "
            f"{row['slowest_over_median']:.1f} | {row['flops_per_image'] * row['images_per_s'] / peak:.0%} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANT_NAMES), default=list(VARIANT_NAMES))
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=list(OPTIONS))
    parser.add_argument("--batch-size", type=int, default=8, help="sets per step (m2m train's tiny default)")
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the FLOP count, compilation)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--work", type=Path, default=Path("assets/bench/learning"), help="the proof's MIS")
    parser.add_argument("--no-write", action="store_true", help="print the table only (no results, no RESULTS.md)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.warmup < 1 or args.batch_size < 1:
        parser.error("--steps must be >= 2, --warmup and --batch-size >= 1")
    if OPTIONS[0] not in args.options:
        args.options.insert(0, OPTIONS[0])  # the ratios' reference
    return args


def main(argv: list[str] | None = None) -> int:
    from bench_learning import build_mis
    from m2m.training import flops

    args = parse_args(argv)
    offline_on_cpu(args.threads)
    mis = build_mis(args.work / "mis")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for variant in args.variants:
            for option in args.options:
                try:
                    with attention_kernel(option):
                        rows.append(measure(variant, option, mis, args, Path(out)))
                except Exception as error:  # an option this machine cannot run (no compiler, say) is a row too
                    if option == OPTIONS[0]:
                        raise
                    rows.append({"variant": variant, "option": option, "error": str(error).splitlines()[0][:120]})
                print(rows[-1], flush=True)
    cpu = torch.device("cpu")
    report = {**run_header(args, argv), "peak_gflops": flops.matmul_peak(cpu, seconds=0.5) / 1e9,
              "peak_gflops_bf16": flops.matmul_peak(cpu, torch.bfloat16, seconds=0.5) / 1e9, "rows": rows}
    text = section(report)
    print(text)
    if not args.no_write:
        save_json(report, "cpu_training.json")
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
