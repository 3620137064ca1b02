"""``m2m filter-captions``: CC12M TSV -> Parquet of captions that fit CLIP's 77 tokens (section 4)."""

from __future__ import annotations

import argparse

from m2m.cli.flags import HelpFormatter

HELP = "keep the CC12M captions that fit in CLIP's 77 tokens (writes Parquet + a drop report)"
DESCRIPTION = """\
Reads CC12M TSV files (url<TAB>caption, no header; .tsv or .tsv.gz) and writes the captions that
SD-2.1's CLIP text encoder can take whole: at most 77 tokens, start and end tokens included.
Empty, undecodable, malformed and duplicate rows are dropped too; every drop is counted by reason
in the report, with the first malformed line numbers. Output columns: id, caption, n_tokens.

The tiny preset's captions ship with the project:
  m2m filter-captions --input m2m/resources/cc12m_sample.tsv
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "filter-captions", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="CC12M TSV files (.tsv or .tsv.gz)")
    parser.add_argument("--output", default="assets/captions/filtered.parquet", help="Parquet to write")
    parser.add_argument("--report", default="assets/captions/filter_report.json", help="drop report (JSON) to write")
    parser.add_argument("--max-tokens", type=int, default=77, help="longest caption kept, SOT/EOT included")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="read at most N rows (quick runs)")
    parser.add_argument("--batch-size", type=int, default=4096, help="captions per tokenizer batch")
    return parser


def run(args: argparse.Namespace) -> int:
    from m2m.data.captions import filter_captions

    report = filter_captions(
        args.input, args.output, args.report, max_tokens=args.max_tokens, limit=args.limit, batch_size=args.batch_size
    )
    dropped = ", ".join(f"{reason} {n}" for reason, n in report["dropped"].items() if n)
    print(
        f"kept {report['kept']} of {report['total_rows']} captions (dropped: {dropped or 'none'}) "
        f"at {report['captions_per_second']} captions/s -> {report['output']}"
    )
    return 0
