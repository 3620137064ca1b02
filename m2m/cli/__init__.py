"""The ``m2m`` command line: one sub-command per pipeline step.

Each sub-command lives in its own module with ``register(subparsers)`` and ``run(args)``;
modules import their heavy dependencies inside ``run`` so ``m2m --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from m2m.cli.flags import HelpFormatter

# (sub-command, module) in the order a newcomer meets them.
COMMANDS = [
    ("filter-captions", "m2m.cli.filter_captions"),
    ("generate-mis", "m2m.cli.generate_mis"),
    ("build-manifest", "m2m.cli.build_manifest"),
    ("make-task-data", "m2m.cli.make_task_data"),
    ("pretrain-encoder", "m2m.cli.pretrain_encoder"),
    ("init", "m2m.cli.init"),
    ("train", "m2m.cli.train"),
    ("sample", "m2m.cli.sample"),
    ("evaluate", "m2m.cli.evaluate"),
    ("promote", "m2m.cli.promote"),
    ("check-weights", "m2m.cli.check_weights"),
]

DESCRIPTION = """\
M2M generates sets of related images auto-regressively: give it K images, it draws the next M.

The pipeline, in order (each step is also a Dagster asset and a DVC stage):
  filter-captions   CC12M captions -> Parquet, dropping captions over 77 CLIP tokens
  generate-mis      captions -> MIS webdataset shards (25 images per caption)
  build-manifest    shards -> manifest (counts, sha256) and train/test split
  make-task-data    tiny Objaverse-style / VGSI-style fine-tuning fixtures
  pretrain-encoder  the tiny preset's DINOv2 E_v, pre-trained on procedural images
  init              a fresh M2M model folder (preset tiny|sd21, variant self|dino)
  train             pre-train on MIS (eq. 5) or fine-tune on a task (section 6.2)
  sample            input images -> generated images + a grid PNG (eq. 6/7)
  evaluate          Table 1 metrics per n-th generated image
  promote           move the registry alias 'champion' when the challenger is better
  check-weights     validate weights folders before a long run (sd21)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2m", description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS:
        mod = importlib.import_module(module)
        cmd = mod.register(sub)
        cmd.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the words as given, for a command that relaunches itself
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (OSError, ValueError, FloatingPointError) as err:
        # Bad input (OSError: missing, truncated or unwritable files) and a diverging run are reported
        # as one line naming the file / row / field; tracebacks are for bugs.
        print(f"m2m {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: Exception) -> str:
    """The error's message on one line; the OS's own text for file errors that carry a file name."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
