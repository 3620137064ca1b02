"""The unconditional branch of eq. 6 from one copy of its zeroed context (``+ log W``), timed against W copies.

One cached denoising step of M2M-Self at the SD-2.1-base architecture (random weights): ``--sets`` sets in
both guidance branches, W = ``--window`` cached context images, every Image-Set Attention layer attending to
the W images (conditional rows) or to the zeroed context (unconditional rows) either over all W identical
copies or over one with ``+ log W`` (``m2m/models/attention.py: repeated_context_attention``). Also the plain
SD UNet on the same batch, for the ratio to SD. Ratios come from one run; the outputs of the two ways are
compared (max |difference|).

    python benchmarks/bench_uncond_context.py                      # CPU, 16x16 latents
    python benchmarks/bench_uncond_context.py --device cuda --latent 64 --sets 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from m2m.files import atomic_file
from m2m.models.cache import ContextCache

RESULTS = Path(__file__).resolve().parent / "results"


def build(latent: int, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    from m2m.models import presets
    from m2m.models.unet import M2MUNet

    torch.manual_seed(0)
    with torch.device(device):
        sd_unet = UNet2DConditionModel.from_config({**presets.SD21_UNET, "sample_size": latent})
        unet = M2MUNet.from_sd_unet(sd_unet, "self", **presets.PRESET_SETTINGS["sd21"])
    for attn, _ in unet.image_set_layers():  # non-zero output projections: the context costs what it costs
        torch.nn.init.normal_(attn.to_out[0].weight, std=0.02)
    return sd_unet.to(device, dtype).eval(), unet.to(device, dtype).eval()


def interleaved_seconds(calls: dict, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per call of each of ``calls``, timed in turns (A, B, C, A, B, C, ...) so that a
    change in the machine's load falls on all of them alike."""
    import statistics

    times = {name: [] for name in calls}
    for name, call in calls.items():
        call()  # warm-up
    for _ in range(repeats):
        for name, call in calls.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, default=16, help="latent side (SD-2.1-base: 64)")
    parser.add_argument("--sets", type=int, default=2, help="sets per batch (each in both guidance branches)")
    parser.add_argument("--window", type=int, default=4, help="W cached context images")
    parser.add_argument("--repeats", type=int, default=5, help="timed turns (the median is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--json", type=Path, help="where the report goes (default results/uncond_context_<device>.json)")
    args = parser.parse_args(argv)
    device, dtype = args.device, getattr(torch, args.dtype)
    sd_unet, unet = build(args.latent, device, dtype)
    channels, side, w, sets = 4, args.latent, args.window, args.sets
    context = torch.randn(sets, w, channels, side, side, device=device, dtype=dtype)
    context = torch.cat([torch.zeros_like(context), context])  # eq. 6: the zeroed condition, then the context
    noisy = torch.randn(2 * sets, 1, channels, side, side, device=device, dtype=dtype)
    cache = unet.encode_context(context, ContextCache(w))

    def step(null_rows: int):
        return lambda: unet(noisy, 500, visible=[w], cache=cache, window=w, null_context_rows=null_rows)

    text = torch.randn(2 * sets, 77, 1024, device=device, dtype=dtype)  # SD's CLIP text tokens, both branches
    one_copy, w_copies = step(sets)(), step(0)()
    calls = {
        "sd_unet_s": lambda: sd_unet(noisy.flatten(0, 1), 500, encoder_hidden_states=text),
        "w_copies_s": step(0),
        "one_copy_s": step(sets),
    }
    rows = interleaved_seconds(calls, device, args.repeats)
    rows["max_abs_diff"] = float((one_copy - w_copies).abs().max())
    rows["max_abs_output"] = float(w_copies.abs().max())
    rows["one_copy_over_w_copies"] = rows["one_copy_s"] / rows["w_copies_s"]
    rows["w_copies_over_sd"] = rows["w_copies_s"] / rows["sd_unet_s"]
    rows["one_copy_over_sd"] = rows["one_copy_s"] / rows["sd_unet_s"]
    report = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "threads": torch.get_num_threads(),
              "results": rows}
    with atomic_file(args.json or RESULTS / f"uncond_context_{device}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
