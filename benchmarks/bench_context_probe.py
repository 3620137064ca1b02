"""What can Image-Set Attention read from a set's context? Linear probes on the context features.

Image-Set Attention (eq. 4) reads the clean context through keys and values that are linear maps of the
context features: the frozen encoder's tokens (M2M-DINO: ``v = E_v(I)``) or the UNet's own hidden states of
the clean images at t = 0 (M2M-Self), at each layer's input. What no linear read-out of those features can
tell apart, a softmax-weighted mix of their values has little of to pass on. So for each attribute of the
procedural MIS (palette, shape kind, texture) a multinomial logistic regression is fitted on the features
of the train split's images and scored on the held-out sets' images:

- ``tokens, mean``: the mean over an image's tokens (what an attention spread over the whole image reads);
- ``tokens, all``: every token, flattened (knows where each token is: the most a linear read-out can use).

Feature sources: the pixels themselves, each ``--encoders`` DINOv2 folder's tokens (by default the tiny
preset's shipped E_v, ``weights/tiny/dinov2``, pre-trained on procedural images by ``m2m pretrain-encoder``:
never on an MIS image, so neither the probe's training nor its held-out images were seen by it), and each
``--models`` folder's context features: M2M-DINO's own ``image_encoder`` tokens, M2M-Self's hidden states at
the input of its first Image-Set Attention layer (16x16) and of its mid block's (8x8).
The probe is fixed: features standardised on the train split, L2 penalty ``--l2``, L-BFGS; no setting is
tuned on the held-out images.

Writes ``results/context_probe.json`` and a "Context probe, <date>" section of ``RESULTS.md`` (a run on
another day adds its own section; the earlier ones stay as they were measured).

    python benchmarks/bench_context_probe.py                 # the shipped E_v and models, about 3 minutes on one core
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from learning.common import load, offline_on_cpu
from learning.report import ATTRIBUTES, run_header, save_json, write_section
from m2m.models import presets

SECTION = "## Context probe"
IMAGES_PER_SET = 4


def probe_accuracy(train_x: torch.Tensor, train_y: list, test_x: torch.Tensor, test_y: list, l2: float) -> float:
    """Held-out accuracy of a multinomial logistic regression fitted on ``train_x`` (``(n, d)``) by L-BFGS."""
    classes = sorted(set(train_y))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    y = torch.tensor([index[c] for c in train_y])
    weight = torch.zeros(x.shape[1], len(classes), dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(1).tolist()
    return float(np.mean([classes[p] == c for p, c in zip(predicted, test_y)]))


def split_images(mis: Path, split: str, limit: int | None) -> tuple[torch.Tensor, dict[str, list]]:
    """The split's images ``(n, 3, 32, 32)`` in [-1, 1] and each image's set attributes."""
    from m2m.evaluation.evaluate import preceding_images
    from m2m.evaluation.image_sets import read_mis_eval_sets

    sets, _ = read_mis_eval_sets(mis, split, IMAGES_PER_SET, 32, limit)
    if not sets:
        raise SystemExit(f"{mis}: no {split} sets with {IMAGES_PER_SET} images")
    images = preceding_images(sets, IMAGES_PER_SET).flatten(0, 1)
    return images, {a: [s.attributes[a] for s in sets for _ in s.images] for a in ATTRIBUTES}


@torch.no_grad()
def context_tokens(pipe, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each Image-Set Attention reads: ``{source: (n, tokens, width)}``. M2M-DINO: its encoder's tokens
    (one source; every layer projects the same features). M2M-Self: the hidden states at the input of the
    first Image-Set Attention layer and of the mid block's, from the clean pass at t = 0."""
    from m2m.models.cache import ContextCache

    unet = pipe.unet
    encoder = unet.context_encoder
    if encoder.external:
        return {"E_v tokens": encoder.features(pipe.image_encoder, images[:, None], unet.config.dino_image_size)[:, 0]}
    names = {id(attn): name for name, attn in unet.unet.named_modules()}
    layers = [names[id(attn)] for attn, _ in unet.image_set_layers()]
    first = next(name for name in layers if name.startswith("down_blocks."))
    mid = next(name for name in layers if name.startswith("mid_block."))
    modules = dict(unet.unet.named_modules())
    chosen = {"first Image-Set Attention (16x16)": modules[first], "mid block (8x8)": modules[mid]}
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_, args, kwargs):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).float()
        return hook

    hooks = [attn.register_forward_pre_hook(keep(name), with_kwargs=True) for name, attn in chosen.items()]
    try:
        unet.encode_context(images[:, None].to(unet.dtype), ContextCache())  # a cache of its own, then dropped
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def feature_sources(args):
    """Each source of features, loaded once: ``images (n, 3, H, W) -> {row name: tokens (n, tokens, width)}``."""
    from transformers import Dinov2Model

    from m2m.models.encoders import dino_features

    yield lambda images: {"pixels": images.flatten(2).transpose(1, 2)}  # one token per pixel
    for folder in args.encoders:  # a DINOv2 folder (benchmarks/pretrain_encoder.py) read as M2M-DINO reads E_v
        encoder = Dinov2Model.from_pretrained(folder, local_files_only=True).eval()
        yield lambda images, encoder=encoder, name=folder.name: {
            f"E_v ({name}): tokens": dino_features(encoder, images[:, None], images.shape[-1])[:, 0]}
    for folder in args.models:
        pipe = load(folder)
        variant = pipe.unet.context_encoder.display_name
        yield lambda images, pipe=pipe, name=f"{variant} ({folder.name})": {
            f"{name}: {source}": tokens for source, tokens in context_tokens(pipe, images).items()}


def probe_rows(name: str, train: torch.Tensor, test: torch.Tensor, labels: tuple[dict, dict], l2: float) -> dict:
    """Accuracy per attribute of the mean and the flattened tokens ``(n, tokens, width)``."""
    rows = {}
    for pooling, pool in (("mean", lambda t: t.mean(1)), ("all", lambda t: t.flatten(1))):
        rows[f"{name}, {pooling}"] = {
            a: probe_accuracy(pool(train).double(), labels[0][a], pool(test).double(), labels[1][a], l2)
            for a in ATTRIBUTES
        }
    return rows


def run(args) -> dict:
    train_images, train_labels = split_images(args.data, "train", args.train_sets)
    test_images, test_labels = split_images(args.data, "test", args.test_sets)
    labels = (train_labels, test_labels)
    results = {}
    for read in feature_sources(args):
        with torch.no_grad():
            train_tokens, test_tokens = read(train_images), read(test_images)
        for source in train_tokens:
            rows = probe_rows(source, train_tokens[source].float(), test_tokens[source].float(), labels, args.l2)
            results.update(rows)
            print(*(f"{name}: " + ", ".join(f"{a} {v:.2f}" for a, v in row.items()) for name, row in rows.items()),
                  sep="\n", flush=True)
    chance = {a: max(test_labels[a].count(v) for v in set(test_labels[a])) / len(test_labels[a]) for a in ATTRIBUTES}
    return {"rows": results, "chance": chance, "train_images": len(train_images), "test_images": len(test_images)}


def section(report: dict) -> str:
    lines = [f"{SECTION}, {report['date']}", "", f"`python benchmarks/bench_context_probe.py {report['settings']['argv']}` on "
             f"{report['machine']}: a linear probe (multinomial logistic regression, L2 {report['settings']['l2']:g}) "
             f"of each attribute from the context features of {report['train_images']} training images, accuracy on "
             f"{report['test_images']} images of held-out sets. `mean`: the mean token; `all`: every token. "
             "Raw numbers: `results/context_probe.json`.", "",
             "| features | palette | shape | texture |", "|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(f"{row[a]:.2f}" for a in ATTRIBUTES) + " |"
              for name, row in report["rows"].items()]
    lines += ["| the most frequent value (chance) | " + " | ".join(f"{report['chance'][a]:.2f}" for a in ATTRIBUTES)
              + " |", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("assets/bench/learning/mis"), help="a procedural MIS")
    parser.add_argument("--models", type=Path, nargs="*",
                        default=[Path("models/tiny-m2m-dino"), Path("models/tiny-m2m-self")],
                        help="pipeline folders whose context features are probed")
    parser.add_argument("--encoders", type=Path, nargs="*", default=[presets.TINY_DINO_FOLDER],
                        help="DINOv2 folders probed alone (default: the tiny preset's E_v)")
    parser.add_argument("--train-sets", type=int, default=None, help="training sets read (default: all)")
    parser.add_argument("--test-sets", type=int, default=None, help="held-out sets read (default: all)")
    parser.add_argument("--l2", type=float, default=1e-3, help="the probe's L2 penalty")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and results/")
    args = parser.parse_args(argv)
    if args.l2 < 0:
        parser.error("--l2 must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_on_cpu(args.threads)
    report = {**run_header(args, argv), "date": time.strftime("%Y-%m-%d", time.gmtime()), **run(args)}
    print(section(report))
    if not args.no_write:
        save_json(report, "context_probe.json")
        write_section(section(report), section(report).splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
