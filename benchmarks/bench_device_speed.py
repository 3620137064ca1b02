"""The parts of ``scripts/device_speed.sh``, one per call, each writing one JSON: the GPU numbers of issue
"GPU speed, measured", at SD-2.1-base size with random weights, as ratios measured on one card in one run.

Each part calls the benchmarks that already measure it (``bench_gpu``, ``bench_sampling``,
``bench_uncond_context``, ``bench_micro_batch``, ``bench_precomputed``) and adds only the pass/fail
bounds of the correctness checks and the goals the table marks. ``--smoke`` runs the same code at the
tiny preset (or tiny sizes) on whatever device there is, a CPU here, to prove the script runs.

    python -m benchmarks.bench_device_speed correctness --json out/correctness.json [--smoke]
    python -m benchmarks.bench_device_speed table out/ status.tsv
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

PARTS = ("correctness", "sampling_b1", "sampling_b8", "sequence", "train", "micro_batch", "precomputed")

# Correctness bounds. Image-Set Attention against the float64 dense reference, relative error (Frobenius):
# fp32 with TF32 off is exact to rounding; bf16 keeps 8 bits of mantissa (2^-8 = 0.004 per element).
ISA_BOUND = {"fp32": 1e-4, "bf16": 2e-2}
CACHE_BOUND = 1e-3  # cached vs uncached sampling, fp32, images in [0, 1]: a quarter of an 8-bit level
LOG_W_BOUND = 1e-3  # one copy + log W vs W copies, relative to the largest output, fp32
# The issue's goals (marked in the table, not failing the run)
GOALS = {"dino": 1.05, "self_b8": 1.25, "late_over_early": 1.10, "mfu": 0.45}


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else device


def correctness(device: str, smoke: bool) -> dict:
    """Image-Set Attention vs float64 (fp32, bf16), cached = uncached (M2M-Self, M2M-DINO), and the
    unconditional branch's one copy + log W = W copies (``bench_uncond_context``)."""
    from benchmarks import bench_uncond_context
    from benchmarks.bench_gpu import check_correctness

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.backends.cudnn.allow_tf32 = False
    res = check_correctness(device)
    out = Path(tempfile.mkdtemp()) / "uncond_context.json"
    argv = ["--device", device, "--dtype", "float32", "--repeats", "1", "--json", str(out)]
    argv += ["--latent", "8", "--sets", "1"] if smoke else ["--latent", "64", "--sets", "2"]
    bench_uncond_context.main(argv)
    uncond = json.loads(out.read_text())["results"]
    res["log_w_max_abs_diff"] = uncond["max_abs_diff"]
    res["log_w_max_abs_output"] = uncond["max_abs_output"]
    res["log_w_one_copy_over_w_copies"] = uncond["one_copy_over_w_copies"]
    failures = [f"Image-Set Attention {name}: relative error {res[f'isa_rel_err_{name}']:.2e} > {bound:g}"
                for name, bound in ISA_BOUND.items() if not res[f"isa_rel_err_{name}"] <= bound]
    failures += [f"M2M-{v}: cached vs uncached max |diff| {res[f'{v}_cache_max_abs_diff']:.2e} > {CACHE_BOUND:g}"
                 for v in ("self", "dino") if not res[f"{v}_cache_max_abs_diff"] <= CACHE_BOUND]
    bound = LOG_W_BOUND * max(1.0, uncond["max_abs_output"])
    if not uncond["max_abs_diff"] <= bound:
        failures.append(f"+ log W vs W copies: max |diff| {uncond['max_abs_diff']:.2e} > {bound:.2e}")
    return {"results": res, "failures": failures}


def sampling(device: str, smoke: bool, batch: int) -> dict:
    """``bench_gpu.sampling_rows``: SD, M2M-Self and M2M-DINO (4 inputs), DDIM 50 + CFG + VAE, fp16."""
    from benchmarks.bench_gpu import sampling_rows

    preset, steps, dtype = ("tiny", 2, torch.float32) if smoke else ("sd21", 50, torch.float16)
    repeats = 2 if batch == 1 and not smoke else 1  # batch 8: 8 images per call already average the noise
    rows = sampling_rows(preset, batch, steps, device, dtype, repeats=repeats)
    return {"results": {"preset": preset, "steps": steps, "batch": batch, "dtype": str(dtype), "repeats": repeats,
                        "rows": rows}, "failures": []}


def sequence(device: str, smoke: bool) -> dict:
    """``bench_sampling.sequence_seconds``: one 50-image call per variant (4 inputs, W = 4, batch 1), the
    mean time of images 46-50 over that of images 1-5. DDIM 20 steps: every step costs the same, so the
    ratio is that of DDIM 50 at 2/5 of the time."""
    from benchmarks.bench_sampling import build, late_over_early, sequence_seconds

    preset, steps, long, dtype = ("tiny", 2, 12, torch.float32) if smoke else ("sd21", 20, 50, torch.float16)
    res = {"preset": preset, "steps": steps, "images": long}
    for variant in ("self", "dino"):
        pipe = build(preset, variant, device, dtype)
        seconds = sequence_seconds(pipe, 4, long, steps, 1, device, dtype)
        res[f"{variant}_seconds"] = seconds
        res[f"{variant}_late_over_early"] = late_over_early(seconds)
        del pipe
    return {"results": res, "failures": []}


def train(device: str, smoke: bool, train_batch: int) -> dict:
    """``bench_gpu.training_rows``: img/s, peak memory and MFU of bf16 training steps, SD / Self / DINO."""
    from benchmarks.bench_gpu import training_rows

    preset = "tiny" if smoke else "sd21"
    rows, res = training_rows(preset, 8 if smoke else train_batch, device)
    return {"results": {"preset": preset, "rows": rows, **res}, "failures": []}


def micro_batch(device: str, smoke: bool) -> dict:
    """``bench_micro_batch``: micro-batches 1, 2, 4, 8 of N = 5 at SD-2.1-base size, memory and img/s."""
    from benchmarks import bench_micro_batch

    out = Path(tempfile.mkdtemp()) / "micro_batch.json"
    argv = ["--device", device, "--json", str(out)]
    argv += ["--preset", "tiny", "--micro-batches", "1", "2", "--steps", "1"] if smoke else ["--steps", "3"]
    bench_micro_batch.main(argv)
    res = json.loads(out.read_text())
    return {"results": res, "failures": []}


def precomputed(device: str, smoke: bool) -> dict:
    """``bench_precomputed``: stored vs encoded latents/features, step time, at full size on the GPU."""
    from benchmarks import bench_precomputed

    out = Path(tempfile.mkdtemp()) / "precomputed.json"
    argv = ["--device", device, "--json", str(out)]
    argv += ["--steps", "1", "--sets", "2"] if smoke else ["--full-size", "--steps", "3"]
    bench_precomputed.main(argv)
    return {"results": json.loads(out.read_text()), "failures": []}


def run_part(args) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        raise SystemExit(f"{args.part}: needs a CUDA GPU (SMOKE=1 for a CPU smoke run)")
    start = time.perf_counter()
    if args.part == "correctness":
        report = correctness(device, args.smoke)
    elif args.part.startswith("sampling_b"):
        report = sampling(device, args.smoke, int(args.part.removeprefix("sampling_b")))
    elif args.part == "sequence":
        report = sequence(device, args.smoke)
    elif args.part == "train":
        report = train(device, args.smoke, args.train_batch)
    elif args.part == "micro_batch":
        report = micro_batch(device, args.smoke)
    else:
        report = precomputed(device, args.smoke)
    report = {"part": args.part, "ok": not report["failures"], "device": device_name(device),
              "torch": torch.__version__, "smoke": args.smoke, "seconds": time.perf_counter() - start, **report}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    for failure in report["failures"]:
        print(f"{args.part}: FAILED: {failure}", file=sys.stderr)
    print(f"{args.part}: {'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s -> {args.json}")
    return 0 if report["ok"] else 1


def goal(value: float | None, bound: float, higher: bool = False) -> str:
    if value is None:
        return "-"
    met = value >= bound if higher else value <= bound
    return f"{'met' if met else 'NOT met'} ({'>=' if higher else '<='} {bound:g})"


def summary(part: str, report: dict) -> list[tuple[str, str, str]]:
    """(what, value, goal) lines of one part's JSON."""
    r = report["results"]
    if part == "correctness":
        return [("ISA fp32 / bf16 rel. error", f"{r['isa_rel_err_fp32']:.1e} / {r['isa_rel_err_bf16']:.1e}",
                 f"<= {ISA_BOUND['fp32']:g} / {ISA_BOUND['bf16']:g}"),
                ("cached - uncached, Self / DINO", f"{r['self_cache_max_abs_diff']:.1e} / {r['dino_cache_max_abs_diff']:.1e}",
                 f"<= {CACHE_BOUND:g}"),
                ("+ log W - W copies", f"{r['log_w_max_abs_diff']:.1e} (one copy {r['log_w_one_copy_over_w_copies']:.2f}x the time)",
                 f"<= {LOG_W_BOUND:g} x max |out|")]
    if part.startswith("sampling_b"):
        lines = []
        for _, model, s, ratio in r["rows"]:
            aim = ""
            if model == "M2M-dino, 4 in":
                aim = goal(ratio, GOALS["dino"])
            elif model == "M2M-self, 4 in" and r["batch"] == 8:
                aim = goal(ratio, GOALS["self_b8"])
            lines.append((f"sample b{r['batch']}: {model}", f"{s:.4f} s/img, {ratio:.2f}x SD", aim))
        return lines
    if part == "sequence":
        return [(f"M2M-{v}: image {r['images']} / image 5 (DDIM {r['steps']})", f"{r[f'{v}_late_over_early']:.3f}",
                 goal(r[f"{v}_late_over_early"], GOALS["late_over_early"])) for v in ("self", "dino")]
    if part == "train":
        lines = []
        for key, name in (("train_sd", "SD UNet"), ("train_self", "M2M-Self"), ("train_dino", "M2M-DINO")):
            t = r[key]
            memory = f", {t['peak_gib']:.1f} GiB" if t.get("peak_gib") is not None else ""
            lines.append((f"train {name}", f"{t['img_per_s']:.1f} img/s{memory}, MFU {t['mfu']:.1%}",
                          goal(t["mfu"], GOALS["mfu"], higher=True)))
        return lines
    if part == "micro_batch":
        return [(f"micro-batch M2M-{key.replace('-', ' ')}",
                 "OOM" if row.get("oom") else f"{row['img_per_s']:.1f} img/s"
                 + (f", {row['peak_gib']:.1f} GiB" if row.get("peak_gib") is not None else ""), "")
                for key, row in r["rows"].items()]
    if part == "precomputed":
        return [(f"stored / encoded step, M2M-{v}", f"{row['stored_s']:.3f} / {row['encode_s']:.3f} s = {row['ratio']:.2f}", "")
                for v, row in r["rows"].items()]
    return []


def table(out: Path, status: Path) -> int:
    """One table of every part: its status (from the script's status file) and its numbers."""
    rows = [line.split("\t") for line in status.read_text().splitlines() if line.strip()]
    failed = 0
    print("| part | status | what | value | goal |")
    print("|---|---|---|---|---|")
    for part, state, seconds in rows:
        path = out / f"{part}.json"
        report = json.loads(path.read_text()) if path.is_file() else None
        if state != "ok" or report is None or not report.get("ok"):
            failed += 1
            reason = "; ".join(report["failures"]) if report and report.get("failures") else state
            print(f"| {part} | FAILED ({reason}), {seconds} s | | | |")
            continue
        try:
            lines = summary(part, report)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            failed += 1
            print(f"| {part} | FAILED (its JSON lacks {error!r}), {seconds} s | | | |")
            continue
        for i, (what, value, aim) in enumerate(lines):
            print(f"| {part if i == 0 else ''} | {f'ok, {seconds} s' if i == 0 else ''} | {what} | {value} | {aim} |")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for part in PARTS:
        p = sub.add_parser(part)
        p.add_argument("--json", type=Path, required=True, help="where this part's JSON goes")
        p.add_argument("--smoke", action="store_true", help="tiny sizes on any device (a CPU smoke run)")
        p.add_argument("--train-batch", type=int, default=16, help="train: noisy images per step")
        p.set_defaults(part=part)
    t = sub.add_parser("table")
    t.add_argument("out", type=Path)
    t.add_argument("status", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        return table(args.out, args.status)
    return run_part(args)


if __name__ == "__main__":
    raise SystemExit(main())
