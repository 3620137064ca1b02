"""``m2m build-manifest``: verified MIS shards -> manifest (counts, sha256) and train/test split."""

from __future__ import annotations

import argparse

from m2m.cli.flags import HelpFormatter

HELP = "check every MIS shard's sha256 and write the manifest and the train/test split"
DESCRIPTION = """\
Verifies each shard in --shards against its sidecar (sha256 of the tar), then writes
  OUT            {"shards": [{"name", "count", "sha256"}], "total", "split", "test_percent", ...}
  split.json     {"train": [caption ids], "test": [caption ids]} beside OUT
A caption is in the test split when int(sha1(id), 16) % 100 < --test-percent, so the split never
depends on how captions were sharded.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "build-manifest", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--shards", default="assets/mis/shards", help="folder of mis-*.tar shards")
    parser.add_argument("--out", default="assets/mis/manifest.json", help="manifest to write")
    parser.add_argument("--test-percent", type=float, default=10, help="share of captions in the test split")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m.data.shards import build_manifest

    manifest = build_manifest(args.shards, args.out, test_percent=args.test_percent)
    split = manifest["split"]
    print(
        f"{len(manifest['shards'])} shards, {manifest['total']} sets "
        f"(train {split['train']}, test {split['test']}) -> {args.out}"
    )
    return 0
