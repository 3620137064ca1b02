"""CC12M caption reading and filtering (section 4).

The paper keeps the CC12M alt-texts that fit CLIP's 77-token context (SOT and EOT included): 12,237,187
captions. Rows are ``url<TAB>caption`` without a header, in ``.tsv`` or ``.tsv.gz`` files. Each row is
kept or dropped for exactly one reason, checked in this order:

- ``malformed``: not exactly two tab-separated columns;
- ``undecodable``: not valid UTF-8;
- ``empty``: the caption is empty or whitespace only (or cleans to no token at all);
- ``duplicate``: the same caption text was already kept or dropped as too long;
- ``id_collision``: a different caption already has the same 12-hex id (expected about once in 12M);
- ``too_long``: more than ``max_tokens`` CLIP tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

from m2m.data import write_json
from m2m.files import atomic_file

REASONS = ("malformed", "undecodable", "empty", "duplicate", "id_collision", "too_long")
MAX_EXAMPLES = 10
ROW_GROUP_ROWS = 131072


def caption_id(caption: str) -> str:
    """Stable caption id: ``c`` + the first 12 hex digits of sha1 of the caption's UTF-8 bytes."""
    return "c" + hashlib.sha1(caption.encode("utf-8")).hexdigest()[:12]


def read_tsv_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw row without its line ending) of a ``.tsv`` or ``.tsv.gz`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                yield line_no, raw.rstrip(b"\n").removesuffix(b"\r")
    except (EOFError, gzip.BadGzipFile, OSError) as err:
        raise ValueError(f"{path}: unreadable after line {line_no}: {err}") from err


def parse_row(raw: bytes) -> tuple[str | None, str | None]:
    """(drop reason, caption) of one raw row; the reason is None for a well-formed, non-empty row."""
    fields = raw.split(b"\t")
    if len(fields) != 2:
        return "malformed", None
    try:
        fields[0].decode("utf-8")
        caption = fields[1].decode("utf-8")
    except UnicodeDecodeError:
        return "undecodable", None
    if not caption.strip():
        return "empty", None
    return None, caption


class CaptionFilter:
    """Streams rows through the drop rules; yields kept (id, caption, n_tokens) in input order."""

    def __init__(self, max_tokens: int = 77, batch_size: int = 4096) -> None:
        from m2m.data.tokenizer import load_tokenizer

        if max_tokens < 2:
            raise ValueError(f"--max-tokens: must be at least 2 (SOT and EOT), got {max_tokens}")
        if batch_size < 1:
            raise ValueError(f"--batch-size: must be positive, got {batch_size}")
        self.tokenizer = load_tokenizer()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.total_rows = 0
        self.kept = 0
        self.dropped = dict.fromkeys(REASONS, 0)
        self.examples: dict[str, list[dict]] = {"malformed": [], "undecodable": []}
        self._seen: dict[int, int] = {}  # 48-bit id -> next 64 bits of the caption's sha1

    def _drop(self, reason: str, file: str, line: int) -> None:
        self.dropped[reason] += 1
        examples = self.examples.get(reason)
        if examples is not None and len(examples) < MAX_EXAMPLES:
            examples.append({"file": file, "line": line})

    def _rows(self, paths: list[str | Path], limit: int | None) -> Iterator[tuple[str, int, bytes]]:
        for path in paths:
            for line, raw in read_tsv_lines(path):
                if limit is not None and self.total_rows >= limit:
                    return
                self.total_rows += 1
                yield str(path), line, raw

    def filter(self, paths: list[str | Path], limit: int | None = None) -> Iterator[list[tuple[str, str, int]]]:
        """Batches of kept (id, caption, n_tokens), reading at most ``limit`` rows in all."""
        batch: list[tuple[str, str]] = []
        for name, line, raw in self._rows(paths, limit):
            reason, caption = parse_row(raw)
            if reason is None:
                reason, cid = self._admit(caption)
            if reason is not None:
                self._drop(reason, name, line)
                continue
            batch.append((cid, caption))
            if len(batch) >= self.batch_size:
                yield self._tokenize(batch)
                batch = []
        if batch:
            yield self._tokenize(batch)

    def _admit(self, caption: str) -> tuple[str | None, str]:
        """(drop reason, "") for a repeated caption or an id collision, else (None, caption id)."""
        digest = hashlib.sha1(caption.encode("utf-8")).digest()
        key, rest = int.from_bytes(digest[:6], "big"), int.from_bytes(digest[6:14], "big")
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = rest
            return None, "c" + digest[:6].hex()
        return ("duplicate" if seen == rest else "id_collision"), ""

    def _tokenize(self, batch: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
        counts = self.tokenizer.count_tokens([caption for _, caption in batch])
        kept = []
        for (cid, caption), n in zip(batch, counts):
            if n <= 2:
                self.dropped["empty"] += 1
            elif n > self.max_tokens:
                self.dropped["too_long"] += 1
            else:
                kept.append((cid, caption, n))
        self.kept += len(kept)
        return kept


def filter_captions(
    inputs: list[str | Path],
    output: str | Path,
    report: str | Path,
    max_tokens: int = 77,
    limit: int | None = None,
    batch_size: int = 4096,
) -> dict:
    """Filter CC12M TSV files into a Parquet of (id, caption, n_tokens) and a JSON drop report."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if not inputs:
        raise ValueError("--input: give at least one CC12M TSV file")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit: must be non-negative, got {limit}")
    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: caption file not found")
    output, report = Path(output), Path(report)
    schema = pa.schema([("id", pa.string()), ("caption", pa.string()), ("n_tokens", pa.int32())])
    captions = CaptionFilter(max_tokens=max_tokens, batch_size=batch_size)
    start = time.perf_counter()
    with atomic_file(output) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer, tqdm(total=limit, unit="rows", unit_scale=True) as bar:
            pending: list[tuple[str, str, int]] = []
            for kept in captions.filter(inputs, limit):
                pending.extend(kept)
                bar.update(captions.total_rows - bar.n)
                if len(pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_pylist(_records(pending), schema=schema))
                    pending = []
            bar.update(captions.total_rows - bar.n)
            writer.write_table(pa.Table.from_pylist(_records(pending), schema=schema))
    seconds = time.perf_counter() - start
    result = {
        "inputs": [str(p) for p in inputs],
        "output": str(output),
        "max_tokens": max_tokens,
        "total_rows": captions.total_rows,
        "kept": captions.kept,
        "dropped": captions.dropped,
        "malformed_lines": captions.examples["malformed"],
        "undecodable_lines": captions.examples["undecodable"],
        "seconds": round(seconds, 3),
        "captions_per_second": round(captions.total_rows / seconds, 1) if seconds > 0 else None,
    }
    write_json(report, result)
    return result


def _records(rows: list[tuple[str, str, int]]) -> list[dict]:
    return [{"id": cid, "caption": caption, "n_tokens": n} for cid, caption, n in rows]

