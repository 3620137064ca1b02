"""``m2m promote``: move the registry alias ``champion`` to a better challenger, or roll it back."""

from __future__ import annotations

import argparse

from m2m.cli.flags import HelpFormatter

HELP = "move the registry alias 'champion' when the challenger is better (or --rollback)"
DESCRIPTION = """\
Every newly registered version of a model gets the alias 'challenger'. This command moves
'champion' to the challenger only when it beats the current champion on the chosen metrics (no
worse on any, better on at least one); otherwise it leaves the registry as it is and says why. A
model's first challenger becomes champion unopposed.

Default metrics: FID (min) and image-image CLIP (max) for m2m-self and m2m-dino (from the
evaluation), the training loss over the last 10% of steps (min) for the fine-tuned m2m-dino-nvs and
m2m-dino-procedure.

  m2m promote --model m2m-self
  m2m promote --model m2m-self --metric fid:min --metric consistency:max
  m2m promote --model m2m-self --rollback              # back to the previous champion
  m2m promote --model m2m-self --rollback --to-version 2

The registry is the project's MLflow store (mlflow/mlflow.db), or $MLFLOW_TRACKING_URI.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "promote", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--model", required=True, help="registered model name, e.g. m2m-self")
    parser.add_argument(
        "--metric", action="append", default=None, metavar="NAME:min|max", help="a promotion criterion (repeatable)"
    )
    parser.add_argument("--rollback", action="store_true", help="point 'champion' back at an earlier version")
    parser.add_argument("--to-version", type=int, default=None, metavar="N", help="with --rollback: this version")
    parser.add_argument("--project", default=".", help="project folder whose mlflow/ store to use")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m import registry, tracking

    if args.to_version is not None and not args.rollback:
        raise ValueError("--to-version needs --rollback")
    if args.rollback and args.metric:
        raise ValueError("--metric applies to a promotion, not to --rollback")
    rules = [registry.Rule.parse(text) for text in args.metric] if args.metric else None
    uri = tracking.tracking_uri(args.project)
    store = tracking.local_store(uri)
    if store is not None and not store.is_file():  # nothing to promote in, and nothing is created
        raise ValueError(
            f"--project {args.project}: no MLflow store at {store} (run the pipeline there first, or point "
            "--project or $MLFLOW_TRACKING_URI at the project's store)"
        )
    tracking.configure(args.project, uri)
    if args.rollback:
        decision = registry.rollback(args.model, args.to_version)
    else:
        decision = registry.promote(args.model, rules)
    print(decision)
    return 1 if decision.refused else 0
