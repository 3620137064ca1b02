"""Sampling speed (paper section 8.6, Fig. 9) and the context cache, as ratios measured in one run.

Time per generated image for M2M-Self and M2M-DINO with 1, 2, 4 preceding images and 1, 2, 4 generated
images, cached and uncached, next to the same DDIM + CFG loop with a plain SD UNet of the same size; and
the time per image early vs late in a long sequence at a fixed window W.

    python benchmarks/bench_sampling.py                          # tiny preset, CPU
    python benchmarks/bench_sampling.py --preset sd21 --steps 50  # SD-2.1-base size, random weights, GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(preset: str, variant: str | None, device: str, dtype: torch.dtype):
    """A random-weight pipeline of the preset's architecture; variant None gives the plain SD baseline."""
    from m2m.models import presets

    torch.manual_seed(0)
    with torch.device(device):  # initialise the random weights where they will run
        return _build(presets, preset, variant, device, dtype)


def _build(presets, preset, variant, device, dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import Dinov2Config, Dinov2Model

    from m2m.models.context import context_encoder
    from m2m.models.unet import M2MUNet
    from m2m.pipeline import M2MPipeline

    unet_cfg = presets.TINY_UNET if preset == "tiny" else presets.SD21_UNET
    dino_cfg = presets.TINY_DINO if preset == "tiny" else presets.GIANT_DINO
    sched_cfg = presets.TINY_SCHEDULER if preset == "tiny" else presets.SD21_SCHEDULER
    sd_unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = None if preset == "tiny" else AutoencoderKL.from_config(presets.SD21_VAE).to(device, dtype)
    if variant is None:
        return sd_unet.to(device, dtype), vae, DDIMScheduler(**sched_cfg)
    external = context_encoder(variant).external  # timed with a random DINOv2 of the preset's size
    encoder = Dinov2Model(Dinov2Config(**dino_cfg)).to(device, dtype).eval() if external else None
    settings = presets.PRESET_SETTINGS[preset]
    unet = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=dino_cfg["hidden_size"] if encoder else None, **settings)
    for attn, _ in unet.image_set_layers():  # non-zero output projections: the context must cost what it costs
        torch.nn.init.normal_(attn.to_out[0].weight, std=0.02)
    pipe = M2MPipeline(unet=unet, scheduler=DDIMScheduler(**sched_cfg), vae=vae, image_encoder=encoder)
    return pipe.to(device, dtype)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def sd_seconds_per_image(sd, steps: int, batch: int, device: str, dtype: torch.dtype, repeats: int) -> float:
    """The baseline: DDIM ``steps`` with CFG (2 branches) and a VAE decode, one image per set."""
    unet, vae, scheduler = sd
    cfg = unet.config
    text = torch.randn(2 * batch, 77, cfg.cross_attention_dim, device=device, dtype=dtype)

    def once():
        scheduler.set_timesteps(steps, device=device)
        latents = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device, dtype=dtype)
        for t in scheduler.timesteps:
            eps_u, eps_c = unet(torch.cat([latents, latents]), t, encoder_hidden_states=text).sample.chunk(2)
            latents = scheduler.step(eps_u + 7.5 * (eps_c - eps_u), t, latents).prev_sample
        if vae is not None:
            vae.decode(latents / vae.config.scaling_factor)

    return timed(once, device, repeats) / batch


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def m2m_seconds_per_image(pipe, n_inputs, n_generated, steps, batch, device, dtype, repeats, use_cache=True):
    size = pipe.image_size
    images = torch.rand(batch, n_inputs, 3, size, size, device=device, dtype=dtype) * 2 - 1

    def once():
        pipe(images, num_images=n_generated, window=4, num_inference_steps=steps, output_type="pt",
             use_cache=use_cache, progress=False)

    return timed(once, device, repeats) / (batch * n_generated)


def sequence_seconds(pipe, n_inputs: int, n_generated: int, steps: int, batch: int, device: str,
                     dtype: torch.dtype, window: int = 4) -> list[float]:
    """Seconds of each generated image of one call that continues ``n_inputs`` images by ``n_generated``
    (cached, window ``window``): from the start of an image's denoising to the start of the next one's
    (its VAE decode and its entry into the cache included), the last to the end of the call. One
    warm-up call of two images first."""
    size = pipe.image_size
    images = torch.rand(batch, n_inputs, 3, size, size, device=device, dtype=dtype) * 2 - 1
    kw = dict(window=window, num_inference_steps=steps, output_type="pt", progress=False)
    pipe(images, num_images=2, **kw)
    starts = []
    denoise = pipe._denoise

    def timed_denoise(*args, **kwargs):
        sync(device)
        starts.append(time.perf_counter())
        return denoise(*args, **kwargs)

    pipe._denoise = timed_denoise
    try:
        pipe(images, num_images=n_generated, **kw)
        sync(device)
        starts.append(time.perf_counter())
    finally:
        del pipe._denoise  # the class's method again
    return [b - a for a, b in zip(starts, starts[1:])]


def late_over_early(seconds: list[float], span: int = 5) -> float:
    """Mean time of the last ``span`` images over that of the first ``span``: 1 is flat along the sequence."""
    return (sum(seconds[-span:]) / span) / (sum(seconds[:span]) / span)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "sd21"], default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (the paper uses 50)")
    parser.add_argument("--batch", type=int, default=1, help="image sets per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=int, default=50, help="length of the long sequence (image 5 vs this one)")
    parser.add_argument("--inputs", type=int, nargs="+", default=[1, 2, 4], help="numbers of preceding images")
    parser.add_argument("--generated", type=int, nargs="+", default=[1, 2, 4], help="numbers of generated images")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.set_num_threads(torch.get_num_threads())
    kw = dict(steps=args.steps, batch=args.batch, device=device, dtype=dtype, repeats=args.repeats)

    results = {"preset": args.preset, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "steps": args.steps, "batch": args.batch}
    base = sd_seconds_per_image(build(args.preset, None, device, dtype), **kw)
    results["sd_s_per_image"] = base
    rows = [("SD UNet (baseline)", "-", "-", "-", base, 1.0)]
    for variant in ("self", "dino"):
        pipe = build(args.preset, variant, device, dtype)
        for n_in in args.inputs:
            for n_out in args.generated:
                s = m2m_seconds_per_image(pipe, n_in, n_out, **kw)
                rows.append((f"M2M-{variant}", n_in, n_out, "yes", s, s / base))
                results[f"{variant}_in{n_in}_out{n_out}"] = s
        s = m2m_seconds_per_image(pipe, 4, 1, use_cache=False, **kw)
        rows.append((f"M2M-{variant}", 4, 1, "no", s, s / base))
        results[f"{variant}_in4_out1_uncached"] = s
        # Flat in the sequence: the mean time of images long-4..long against images 1-5 of one call (W = 4).
        seconds = sequence_seconds(pipe, 4, args.long, args.steps, args.batch, device, dtype)
        results[f"{variant}_late_over_early"] = late_over_early(seconds)
        rows.append((f"M2M-{variant}", 4, f"image {args.long} vs 5", "yes", sum(seconds[-5:]) / 5 / args.batch,
                     late_over_early(seconds)))

    print(f"\n{results['device']}, preset {args.preset}, DDIM {args.steps} + CFG, {args.batch} set(s) per call\n")
    print("| model | input images | generated | cache | s / image | ratio |")
    print("|---|---|---|---|---|---|")
    for name, n_in, n_out, cache, s, ratio in rows:
        print(f"| {name} | {n_in} | {n_out} | {cache} | {s:.4f} | {ratio:.2f} |")
    print("\nratio: to the SD baseline; for 'image N vs 5' rows, late image time over early image time.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
