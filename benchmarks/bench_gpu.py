"""One GPU check at SD-2.1-base size (random weights): correctness, sampling and training throughput.

Prints one table: the plain SD UNet baseline and M2M-Self / M2M-DINO (4 input images) sampling at
batch 1 and 8 (DDIM 50 + CFG + VAE decode, fp16) and training (bf16 autocast, AdamW), as ratios to the
baseline measured in the same run on the same card.

    python benchmarks/bench_gpu.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.bench_sampling import build, m2m_seconds_per_image, sd_seconds_per_image


def check_correctness(device: str) -> dict:
    """Image-Set Attention vs a dense float64 reference (bf16 and fp32), and cached vs uncached sampling."""
    from m2m.models.attention import image_set_attention, masked_attention_reference

    out = {}
    torch.manual_seed(0)
    b, n, lq, d, heads = 2, 5, 512, 320, 5
    q = torch.randn(b, n, lq, d, device=device)
    k = torch.randn(b, 1 + n * lq, d, device=device)
    v = torch.randn(b, 1 + n * lq, d, device=device)
    visible = list(range(n))
    ref = masked_attention_reference(q.cpu(), k.cpu(), v.cpu(), visible, heads, lq)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        got = image_set_attention(q.to(dtype), k.to(dtype), v.to(dtype), visible, heads, lq).double().cpu()
        out[f"isa_rel_err_{name}"] = ((got - ref).norm() / ref.norm()).item()
    for variant in ("self", "dino"):
        pipe = build("tiny", variant, device, torch.float32)
        images = torch.rand(2, 3, 3, 32, 32, device=device) * 2 - 1
        kw = dict(num_images=3, window=2, num_inference_steps=5, output_type="pt", progress=False)
        a = pipe(images, generator=torch.Generator(device).manual_seed(0), **kw).images
        c = pipe(images, generator=torch.Generator(device).manual_seed(0), use_cache=False, **kw).images
        out[f"{variant}_cache_max_abs_diff"] = (a - c).abs().max().item()
    return out


def cuda_seconds_per_call(fn, calls: int, warmup: int = 1) -> float:
    """Mean wall time of ``fn()`` on the GPU after ``warmup`` calls; peak memory counts from the first timed call.
    Without CUDA (a smoke run on a CPU) the same wall time, unsynchronised."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def peak_gib() -> float | None:
    """Peak GPU memory since the last reset, GiB; None without CUDA."""
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def train_step_rate(model, kind: str, batch_images: int, n_images: int, device: str, steps: int = 6) -> dict:
    """Noisy images per second of one training step: bf16 autocast forward + backward + AdamW; and the
    model-FLOP utilisation: the FLOPs of one forward pass (``FlopCounterMode``, as ``m2m train`` counts
    them) times 3 for forward and backward, per image, at that rate, over the device's bf16 matmul peak
    (fp32 on a CPU, where autocast stays off)."""
    from diffusers import DDPMScheduler

    from m2m.models.presets import SD21_SCHEDULER
    from m2m.training.flops import counting, matmul_peak
    from m2m.training.objective import m2m_loss

    torch.manual_seed(0)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SD21_SCHEDULER.items() if k != "set_alpha_to_one"})
    unet = model if kind == "sd" else model.unet
    unet.float().train()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    if kind == "sd":
        cfg = unet.config
        latents = torch.randn(batch_images, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device)
        text = torch.randn(batch_images, 77, cfg.cross_attention_dim, device=device)

        def loss_fn():
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch_images,), device=device)
            pred = unet(noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=text).sample
            return torch.nn.functional.mse_loss(pred.float(), noise)
    else:
        sets = batch_images // n_images
        cfg = unet.config.unet_config
        z0 = torch.randn(sets, n_images, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], device=device)
        context = z0
        if model.context_encoder.external:  # precomputed DINOv2 features: patches plus the class token
            enc = model.image_encoder.config
            tokens = (unet.config.dino_image_size // enc.patch_size) ** 2 + 1
            context = torch.randn(sets, n_images, tokens, enc.hidden_size, device=device)

        def loss_fn():
            return m2m_loss(model, noise_scheduler, None, precomputed=(z0, context))

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def step():
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad(), autocast, counting() as counter:
        loss_fn()
    flops_per_image = 3 * counter.get_total_flops() / batch_images
    peak = matmul_peak(torch.device(device), torch.bfloat16 if cuda else torch.float32)
    seconds = cuda_seconds_per_call(step, steps, warmup=2)
    rate = batch_images / seconds
    return {"s_per_step": seconds, "img_per_s": rate, "peak_gib": peak_gib(),
            "flops_per_image": flops_per_image, "peak_flops": peak, "mfu": flops_per_image * rate / peak}


def sampling_rows(preset: str, batch: int, steps: int, device: str, dtype: torch.dtype, repeats: int = 2,
                  uncached: bool = True) -> list:
    """(what, model, s / image, ratio to SD) of DDIM ``steps`` + CFG (+ VAE at sd21) sampling at ``batch``
    sets per call: the plain SD UNet, then M2M-Self and M2M-DINO after 4 input images (and, with
    ``uncached``, without the cache at batch 1), all measured in this call."""
    kw = dict(steps=steps, batch=batch, device=device, dtype=dtype, repeats=repeats)
    base = sd_seconds_per_image(build(preset, None, device, dtype), **kw)
    rows = [(f"sample b{batch}", "SD UNet", base, 1.0)]
    for variant in ("self", "dino"):
        pipe = build(preset, variant, device, dtype)
        s = m2m_seconds_per_image(pipe, 4, 1, **kw)
        rows.append((f"sample b{batch}", f"M2M-{variant}, 4 in", s, s / base))
        if batch == 1 and uncached:
            s = m2m_seconds_per_image(pipe, 4, 1, use_cache=False, **kw)
            rows.append((f"sample b{batch}", f"M2M-{variant}, 4 in, no cache", s, s / base))
        del pipe
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def training_rows(preset: str, train_batch: int, device: str) -> tuple[list, dict]:
    """Training rows (what, model, s / image, ratio to SD) and each model's ``train_step_rate`` result:
    the SD UNet on ``train_batch`` images, M2M-Self and M2M-DINO on ``train_batch // 4`` sets of 4."""
    sd = build(preset, None, device, torch.float32)[0]
    base = train_step_rate(sd, "sd", train_batch, 1, device)
    del sd
    rows = [("train", f"SD UNet, {train_batch} img", 1 / base["img_per_s"], 1.0)]
    res = {"train_sd": base}
    for variant in ("self", "dino"):
        pipe = build(preset, variant, device, torch.float32)
        r = train_step_rate(pipe, variant, train_batch, 4, device)
        res[f"train_{variant}"] = r
        rows.append(("train", f"M2M-{variant}, {train_batch // 4} sets x 4", 1 / r["img_per_s"],
                     base["img_per_s"] / r["img_per_s"]))
        del pipe
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--train-batch", type=int, default=16, help="noisy images per training step")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    res.update(check_correctness(device))
    print(json.dumps(res, indent=1), flush=True)

    rows = []
    for batch in (1, 8):
        rows += sampling_rows("sd21", batch, args.steps, device, torch.float16)
        print(rows[-3:], flush=True)
    train, trained = training_rows("sd21", args.train_batch, device)
    rows += train
    res.update(trained)
    res["rows"] = rows
    print(f"\n{res['device']}, SD-2.1-base size, random weights, DDIM {args.steps} + CFG (fp16); training bf16 autocast\n")
    print("| what | model | s / image | ratio to SD |")
    print("|---|---|---|---|")
    for what, model, s, ratio in rows:
        print(f"| {what} | {model} | {s:.4f} | {ratio:.2f} |")
    for key in ("train_sd", "train_self", "train_dino"):
        print(f"{key}: {res[key]['img_per_s']:.1f} img/s, {res[key]['peak_gib']:.1f} GiB peak, MFU {res[key]['mfu']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))

if __name__ == "__main__":
    main()
