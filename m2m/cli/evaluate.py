"""``m2m evaluate``: Table 1 metrics per n-th generated image (paper sections 7.2, 8.3, 8.4)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m.cli.flags import HelpFormatter

HELP = "Table 1 metrics per n-th generated image (FID, IS, CLIP scores, consistency)"

DESCRIPTION = """\
Condition a trained model on the first K images of each set, generate M more, and score every n-th
generated image over all sets: FID (against the first preceding images), Inception Score, text-image
CLIP (against the set caption) and image-image CLIP (against all preceding images); on procedural MIS
sets also the consistency score. Each metric is reported as mean ± std over the M positions, as the
paper's Table 1, with a per-position table and plot and a grid of preceding | generated images.

Sets come from the MIS test split (--mis) or from any folder of real photos with one sub-folder per
set (--image-sets, zero-shot as in section 8.3).

--metrics-backend tiny (default) needs no download but its numbers are not comparable to the paper;
standard uses Inception-v3 weights from --inception-weights and CLIP from --clip-folder.

Writes OUT/metrics.json, metrics.md, per_position.csv, per_position.png and grid.png.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--model", required=True, type=Path, help="M2M pipeline folder (m2m train's --out)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mis", type=Path, help="MIS dataset folder or its manifest.json")
    source.add_argument("--image-sets", type=Path, help="folder with one sub-folder of images per set")
    parser.add_argument("--split", choices=["test", "train"], default="test", help="MIS split (default: test)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the report, e.g. assets/eval/NAME")
    parser.add_argument("--num-sets", type=int, default=64, help="sets to evaluate (paper: 10,000; default 64)")
    parser.add_argument("--preceding", type=int, default=4, help="preceding images K per set (default 4)")
    parser.add_argument("--generate", type=int, default=10, help="images M generated per set (default 10)")
    parser.add_argument("--window", type=int, help="context window W (default: --preceding)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM denoising steps (default 50)")
    parser.add_argument(
        "--guidance-scale", type=float, default=None,
        help="guidance scale s of eq. 6 (default: the model's own; sd21 7.5 as in the paper, tiny 1)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sets generated together (default 8)")
    parser.add_argument(
        "--metrics-backend", choices=["tiny", "standard"], default="tiny", help="feature networks (default: tiny)"
    )
    parser.add_argument(
        "--inception-weights", type=Path, help="torch-fidelity Inception-v3 weights file, or its folder (standard)"
    )
    parser.add_argument("--clip-folder", type=Path, help="local CLIP model folder (standard)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto ($M2M_DEVICE, else cuda when present), cpu or cuda")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m.device import pick_device
    from m2m.evaluation.evaluate import evaluate
    from m2m.evaluation.features import load_feature_networks
    from m2m.evaluation.image_sets import read_image_sets, read_mis_eval_sets
    from m2m.pipeline import load_on

    for name in ("num_sets", "preceding", "generate", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.model / "model_index.json").is_file():
        raise FileNotFoundError(f"{args.model}: not an M2M pipeline folder (model_index.json missing)")
    device = pick_device(args.device)
    networks = load_feature_networks(args.metrics_backend, args.inception_weights, args.clip_folder)
    networks.to(device)
    pipe = load_on(args.model, device)
    if args.mis is not None:
        sets, counts = read_mis_eval_sets(args.mis, args.split, args.preceding, pipe.image_size, args.num_sets)
        data = {"source": "mis", "path": str(args.mis), "split": args.split}
    else:
        sets, counts = read_image_sets(args.image_sets, args.preceding, pipe.image_size, args.num_sets)
        data = {"source": "image-sets", "path": str(args.image_sets)}
    data["counts"] = counts.as_dict()
    report = evaluate(
        pipe,
        args.model,
        sets,
        data,
        networks,
        args.out,
        preceding=args.preceding,
        generate=args.generate,
        window=args.window,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(f"{report['model']['method']} on {len(sets)} sets ({networks.label}):")
    for key, value in report["summary"].items():
        print(f"  {key}: {value['mean']:.2f} ± {value['std']:.2f}")
    for note in report["notes"]:
        print(f"  note: {note}")
    print(f"report: {args.out}/metrics.md")
    return 0
