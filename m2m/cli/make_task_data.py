"""``m2m make-task-data``: write a tiny fine-tuning fixture in the Objaverse-style (novel views) or
VGSI-style (procedures) layout (paper section 7.1.2; layouts in docs/data_procedural.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m.cli.flags import HelpFormatter
from m2m.files import atomic_folder

HELP = "write tiny novel-view (Objaverse-style) or procedure (VGSI-style) fine-tuning data"

DESCRIPTION = """\
Writes procedural task data in the layouts the fine-tuning readers accept:
  nvs        one folder per object: 000.png..011.png (12 views 30 degrees apart) + cameras.json
  procedure  one folder per method: method.json (goal, method, steps) + one image per step
The folder appears complete or not at all: it is written beside --out and renamed into place,
replacing an earlier one.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-task-data", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--kind", required=True, choices=("nvs", "procedure"), help="which task's layout")
    parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. assets/tasks/nvs")
    parser.add_argument("--count", type=int, default=64, help="objects (nvs) or methods (procedure); default 64")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels; default 32")
    parser.add_argument("--steps", type=int, default=6, help="steps per method (procedure only); default 6")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m.data.tasks_nvs import write_nvs_fixture
    from m2m.data.tasks_procedure import write_procedure_fixture

    out = args.out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    with atomic_folder(out) as tmp:
        if args.kind == "nvs":
            ids = write_nvs_fixture(tmp, args.count, args.image_size, args.seed)
        else:
            ids = write_procedure_fixture(tmp, args.count, args.steps, args.image_size, args.seed)
    print(f"wrote {len(ids)} {args.kind} items ({args.image_size}x{args.image_size}) to {out}")
    return 0
