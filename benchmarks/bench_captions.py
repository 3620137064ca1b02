"""Caption filtering throughput (section 4): captions/s of ``m2m filter-captions`` end to end.

Writes a synthetic CC12M-format TSV (default 200,000 rows: alt-text-like captions, about 5% with
non-ASCII text, 2% duplicates, 1% over 77 tokens, a few empty and malformed rows), filters it, and
prints one result line and a markdown table, with the time the whole of CC12M (12.4M rows) would take
at that rate on this machine.

    python benchmarks/bench_captions.py [--rows 200000] [--batch-size 4096]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

CC12M_ROWS = 12_423_374
WORDS = (
    "a the of with on in and for at by photo illustration vector design pattern background seamless red blue "
    "green yellow pastel neon circle square triangle star ring cross stripes dots checker gradient plain "
    "wedding bride dog cat beach city street mountain lake house kitchen garden woman man child people "
    "portrait vintage modern abstract watercolor texture wooden table coffee flowers sunset night sky"
).split()
NON_ASCII = ["café", "“quoted”", "it’s", "naïve", "😀", "🌊", "façade", "Zürich", "日本", "—", "…", "ﬁne"]


def synthetic_rows(n: int, rng: random.Random) -> list[bytes]:
    """CC12M-like rows with the mix of problems a real dump has."""
    rows: list[bytes] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.02 and rows:
            rows.append(rng.choice(rows))  # exact duplicate
            continue
        if kind < 0.021:
            rows.append(b"https://images.example.com/broken-row-without-a-tab")
            continue
        if kind < 0.022:
            rows.append(b"https://images.example.com/e.jpg\t   ")
            continue
        length = rng.randint(60, 90) if kind < 0.032 else rng.randint(3, 30)
        words = [rng.choice(WORDS) for _ in range(length)]
        if kind > 0.95:
            words[rng.randrange(length)] = rng.choice(NON_ASCII)
        caption = " ".join(words)
        rows.append(f"https://images.example.com/{i:08x}.jpg\t{caption}".encode("utf-8"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from m2m.data.captions import filter_captions
    from m2m.data.tokenizer import load_tokenizer

    load_tokenizer()  # built once per process; not part of the rate
    with tempfile.TemporaryDirectory() as tmp:
        tsv = Path(tmp) / "synthetic.tsv"
        tsv.write_bytes(b"\n".join(synthetic_rows(args.rows, random.Random(args.seed))) + b"\n")
        out, report = Path(tmp) / "out.parquet", Path(tmp) / "report.json"
        report = filter_captions([tsv], out, report, batch_size=args.batch_size)
    rate = report["captions_per_second"]
    cores = len(os.sched_getaffinity(0))
    print(f"filter-captions: {rate:,.0f} captions/s on {cores} CPU cores ({report['total_rows']:,} rows)")
    print()
    print("| rows | kept | " + " | ".join(report["dropped"]) + " | seconds | captions/s | CC12M (12.4M rows) |")
    print("|---" * (5 + len(report["dropped"])) + "|")
    dropped = " | ".join(f"{n:,}" for n in report["dropped"].values())
    print(
        f"| {report['total_rows']:,} | {report['kept']:,} | {dropped} | {report['seconds']:.1f} | {rate:,.0f} "
        f"| {CC12M_ROWS / rate / 60:.1f} min |"
    )


if __name__ == "__main__":
    main()
