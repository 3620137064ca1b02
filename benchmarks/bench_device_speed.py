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

PARTS = ("correctness", "sampling", "sequence", "train", "micro_batch", "precomputed", "speed_options")

# Correctness bounds. Image-Set Attention against the float64 dense reference, relative error (Frobenius):
# fp32 with TF32 off is exact to rounding; bf16 keeps 8 bits of mantissa (2^-8 = 0.004 per element).
ISA_BOUND = {"fp32": 1e-4, "bf16": 2e-2}
CACHE_BOUND = 1e-3  # cached vs uncached sampling, fp32, images in [0, 1]: a quarter of an 8-bit level
LOG_W_BOUND = 1e-3  # one copy + log W vs W copies, relative to the largest output, fp32
# A speed option against eager, fp16 UNet step (fp32 in a CPU smoke run): max |diff| over max |eager output|.
# Reordered fp16 sums differ by a few units of 2^-11 per element; a wrong kernel or a stale input by O(1).
SPEED_BOUND = 1e-2
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


def sampling(device: str, smoke: bool, progress) -> dict:
    """``bench_gpu.sampling_rows`` at batch 1, then 8: SD, M2M-Self and M2M-DINO (4 inputs), DDIM 50 + CFG +
    VAE, fp16; ``progress`` gets batch 1's rows before batch 8 starts. Cached only: what the cache saves was
    measured (RESULTS.md: 1.9x and 3.6x at batch 1) and its 25 s of device time now go to ``speed_options``;
    that it changes nothing is the correctness part's."""
    from benchmarks.bench_gpu import sampling_rows

    preset, steps, dtype = ("tiny", 2, torch.float32) if smoke else ("sd21", 50, torch.float16)
    res = {"preset": preset, "steps": steps, "dtype": str(dtype), "batches": {}}
    for batch in (1, 8):
        repeats = 2 if batch == 1 and not smoke else 1  # batch 8: 8 images per call already average the noise
        rows = sampling_rows(preset, batch, steps, device, dtype, repeats=repeats, uncached=False)
        res["batches"][str(batch)] = {"repeats": repeats, "rows": rows}
        progress({"results": res, "failures": []})
    return {"results": res, "failures": []}


def speed_option_rows(smoke: bool):
    """(row, ``m2m.speed.Speed``) in the order they run: eager, the per-call options, then each compile mode,
    the cheapest to compile first. A CPU smoke run compiles with ``cudagraphs`` alone (torch.compile's
    tracing of the step, the cache read as an input, then the eager kernels): inductor's CPU code generation
    takes minutes on shared cores and proves nothing of its GPU (Triton) path; ``tests/test_speed.py``
    checks an inductor-compiled step against eager on CPU."""
    from m2m.speed import Speed

    modes = ("cudagraphs",) if smoke else ("cudagraphs", "reduce-overhead", "default")
    return [("eager", Speed()), *((f"sdpa {b}", Speed(sdpa_backend=b)) for b in ("flash", "efficient", "cudnn")),
            ("channels_last", Speed(channels_last=True)), *((f"compile {m}", Speed(compile=m)) for m in modes)]


def speed_options(device: str, smoke: bool, progress) -> dict:
    """Each speed option of ``m2m.speed`` against eager, where batch 1 is launch-bound: the seconds of one
    guided denoising step of M2M-DINO after 4 input images (W = 4, cached; both branches of eq. 6 in one
    batch) at SD-2.1-base size in fp16, the first call of a compiled step (its compilation) timed apart; its
    output against eager's (``SPEED_BOUND``). Before the two inductor modes (a minute or more of compiling
    each), one AdamW step over the SD-size UNet's fp32 parameters per implementation (for-loop, foreach,
    fused), the weights after two steps against for-loop's. ``progress(results)`` gets the rows so far
    after each one: the part's time limit cuts the last rows, never the ones done."""
    from benchmarks.bench_gpu import cuda_seconds_per_call
    from benchmarks.bench_sampling import build
    from m2m.models.cache import ContextCache
    from m2m.speed import sdpa_backend, speed_up

    preset, dtype, calls = ("tiny", torch.float32, 3) if smoke else ("sd21", torch.float16, 20)
    pipe = build(preset, "dino", device, dtype)
    unet = pipe.unet.eval()
    cfg, enc = unet.config.unet_config, pipe.image_encoder.config
    del pipe
    g = torch.Generator(device).manual_seed(0)
    tokens = (unet.config.dino_image_size // enc.patch_size) ** 2 + 1
    features = torch.randn(1, 4, tokens, enc.hidden_size, device=device, dtype=dtype, generator=g)
    with torch.no_grad():  # eq. 6's branches: the zeroed context, then the 4 input images
        cache = unet.encode_context(torch.cat([torch.zeros_like(features), features]), ContextCache(4))
    noisy = torch.randn(2, 1, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], device=device,
                        dtype=dtype, generator=g)
    t = torch.tensor(500, device=device)
    rows, failures, reference = {}, [], None
    for name, speed in speed_option_rows(smoke):
        if speed.compile in ("reduce-overhead", "default") and not any(r.startswith("adamw") for r in rows):
            rows.update(adamw_rows(preset, device, failures))  # AdamW's rows before inductor's minutes of compiling
            progress({"results": {"rows": rows}, "failures": failures})
        try:
            if speed.compile:
                torch.compiler.reset()  # a fresh compilation per mode
            unet.to(memory_format=torch.contiguous_format)
            speed_up(unet, speed)

            @torch.no_grad()
            def step():
                with sdpa_backend(speed.sdpa_backend):
                    return unet(noisy, t, cache=cache, window=4, null_context_rows=1)

            start = time.perf_counter()
            out = step().float().clone()  # a CUDA graph's output is overwritten by its next replay
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            first_s = time.perf_counter() - start
            seconds = cuda_seconds_per_call(step, calls, warmup=2)
            reference = out if reference is None else reference
            diff = ((out - reference).abs().max() / reference.abs().max()).item()
            eager = rows["eager"]["step_s"] if "step_s" in rows.get("eager", {}) else seconds
            rows[name] = {"step_s": seconds, "first_call_s": first_s, "over_eager": seconds / eager, "rel_diff": diff}
            if not diff <= SPEED_BOUND:
                failures.append(f"{name}: output off eager's by {diff:.1e} > {SPEED_BOUND:g} (relative)")
        except Exception as error:  # an option this card or build cannot run is its own failed row
            rows[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            failures.append(f"{name}: {rows[name]['error']}")
        progress({"results": {"rows": rows}, "failures": failures})
    if not any(r.startswith("adamw") for r in rows):  # a smoke run: no inductor rows to go before
        rows.update(adamw_rows(preset, device, failures))
    return {"results": {"preset": preset, "dtype": str(dtype), "calls": calls, "rows": rows}, "failures": failures}


def adamw_rows(preset: str, device: str, failures: list[str]) -> dict:
    """Seconds of one AdamW step over the preset's SD UNet parameters (fp32, random gradients) per
    implementation (``auto`` is foreach on a GPU), and the weights after two steps against the for-loop's."""
    impls = ("for-loop", "foreach", "fused")
    from benchmarks.bench_gpu import cuda_seconds_per_call
    from benchmarks.bench_sampling import build
    from m2m.speed import adamw

    start = [p.detach() for p in build(preset, None, device, torch.float32)[0].parameters()]
    g = torch.Generator(device).manual_seed(1)
    grads = [torch.randn(p.shape, device=device, generator=g) * 1e-3 for p in start]
    rows, weights = {}, {}
    for impl in impls:
        params = [p.clone().requires_grad_() for p in start]
        for p, grad in zip(params, grads):
            p.grad = grad
        try:
            opt = adamw(params, impl, lr=1e-5, weight_decay=1e-2)
            opt.step()
            opt.step()
            weights[impl] = params[0].detach().clone()
            rows[f"adamw {impl}"] = {"step_s": cuda_seconds_per_call(opt.step, 3, warmup=1)}
        except Exception as error:
            rows[f"adamw {impl}"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            failures.append(f"adamw {impl}: {rows[f'adamw {impl}']['error']}")
        del params
    base = rows.get("adamw for-loop", {}).get("step_s")
    for impl in impls:
        row = rows[f"adamw {impl}"]
        if "step_s" in row and "for-loop" in weights:
            row["over_for_loop"] = row["step_s"] / base
            row["max_abs_diff"] = (weights[impl] - weights["for-loop"]).abs().max().item()
            if not row["max_abs_diff"] <= 1e-6:
                failures.append(f"adamw {impl}: weights off the for-loop's by {row['max_abs_diff']:.1e}")
    return rows


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

    def progress(so_far: dict) -> None:  # what a long part has so far, in case its time runs out before its end
        partial = {"part": args.part, "ok": False, "partial": True, "device": device_name(device),
                   "smoke": args.smoke, **so_far}
        args.json.write_text(json.dumps(partial, indent=2) + "\n")

    if args.part == "correctness":
        report = correctness(device, args.smoke)
    elif args.part == "sampling":
        report = sampling(device, args.smoke, progress)
    elif args.part == "speed_options":
        report = speed_options(device, args.smoke, progress)
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
    if part == "sampling":
        lines = []
        for batch, done in r["batches"].items():
            for _, model, s, ratio in done["rows"]:
                aim = ""
                if model == "M2M-dino, 4 in":
                    aim = goal(ratio, GOALS["dino"])
                elif model == "M2M-self, 4 in" and batch == "8":
                    aim = goal(ratio, GOALS["self_b8"])
                lines.append((f"sample b{batch}: {model}", f"{s:.4f} s/img, {ratio:.2f}x SD", aim))
        return lines
    if part == "speed_options":
        lines = []
        for name, row in r["rows"].items():
            if "error" in row:
                lines.append((name, f"FAILED: {row['error']}", ""))
            elif name.startswith("adamw"):
                lines.append((name, f"{row['step_s'] * 1e3:.1f} ms/step, {row.get('over_for_loop', 0):.2f}x for-loop", ""))
            else:
                first = f", first call {row['first_call_s']:.0f} s" if name.startswith("compile") else ""
                lines.append((f"b1 DINO step, {name}", f"{row['step_s'] * 1e3:.1f} ms, {row['over_eager']:.2f}x eager{first}",
                              f"= eager to {SPEED_BOUND:g} (off {row['rel_diff']:.0e})"))
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
            try:  # what the part measured before or beside its failure
                lines = summary(part, report) if report else []
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                lines = []
            for what, value, aim in lines:
                print(f"| | | {what} | {value} | {aim} |")
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
