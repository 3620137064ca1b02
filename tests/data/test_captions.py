"""Caption filtering: drop reasons, stable ids, report, atomic output, the shipped sample."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pyarrow.parquet as pq
import pytest

from m2m.cli import main
from m2m.data.captions import caption_id, filter_captions, parse_row
from m2m.resources import resource_path

INVALID_KEPT = [
    "red circle on a striped background",
    "Red circle on a striped background",
    "neon star ⭐ over ocean waves 🌊",
    "pastel squares on a checkerboard",
]


def run_filter(tmp_path, inputs, **kwargs):
    out, report = tmp_path / "filtered.parquet", tmp_path / "report.json"
    result = filter_captions(inputs, out, report, **kwargs)
    assert json.loads(report.read_text()) == result
    return pq.read_table(out).to_pylist(), result


def test_invalid_rows_are_dropped_for_the_right_reason(tmp_path):
    rows, report = run_filter(tmp_path, [resource_path("cc12m_invalid.tsv")])
    assert [r["caption"] for r in rows] == INVALID_KEPT
    assert report["total_rows"] == 13 and report["kept"] == 4
    assert report["dropped"] == {
        "malformed": 3,
        "undecodable": 1,
        "empty": 2,
        "duplicate": 2,
        "id_collision": 0,
        "too_long": 1,
    }
    assert [e["line"] for e in report["malformed_lines"]] == [2, 8, 11]
    assert [e["line"] for e in report["undecodable_lines"]] == [5]
    assert all(e["file"].endswith("cc12m_invalid.tsv") for e in report["malformed_lines"])
    assert report["captions_per_second"] > 0


def test_ids_are_sha1_prefixes_and_n_tokens_counts_sot_eot(tmp_path):
    rows, _ = run_filter(tmp_path, [resource_path("cc12m_invalid.tsv")])
    for row in rows:
        assert row["id"] == "c" + hashlib.sha1(row["caption"].encode()).hexdigest()[:12] == caption_id(row["caption"])
    assert rows[0]["n_tokens"] == 8  # SOT red circle on a striped background EOT


def test_gzip_and_duplicates_across_files(tmp_path):
    plain = resource_path("cc12m_invalid.tsv")
    zipped = tmp_path / "part-1.tsv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    rows, report = run_filter(tmp_path, [zipped, plain])
    assert [r["caption"] for r in rows] == INVALID_KEPT
    assert report["total_rows"] == 26
    assert report["dropped"]["duplicate"] == 2 + 7  # in file 2, every well-formed non-empty row is a repeat
    assert report["malformed_lines"][0]["file"] == str(zipped)


def test_token_limit_is_inclusive(tmp_path):
    tsv = tmp_path / "edge.tsv"
    lines = [f"https://e.example.com/{k}.jpg\t" + " ".join(["red"] * k) for k in (73, 74, 75, 76)]
    tsv.write_text("\n".join(lines) + "\n")
    rows, report = run_filter(tmp_path, [tsv])
    assert [r["n_tokens"] for r in rows] == [75, 76, 77]
    assert report["dropped"]["too_long"] == 1
    rows, _ = run_filter(tmp_path, [tsv], max_tokens=76)
    assert [r["n_tokens"] for r in rows] == [75, 76]


def test_limit_and_small_batches_give_the_same_prefix(tmp_path):
    sample = resource_path("cc12m_sample.tsv")
    full, _ = run_filter(tmp_path, [sample], batch_size=7)
    head, report = run_filter(tmp_path, [sample], limit=50, batch_size=4096)
    assert report["total_rows"] == 50 and head == full[:50]


def test_failure_keeps_the_previous_output(tmp_path):
    good, _ = run_filter(tmp_path, [resource_path("cc12m_invalid.tsv")])
    before = (tmp_path / "filtered.parquet").read_bytes()
    broken = tmp_path / "broken.tsv.gz"
    broken.write_bytes(gzip.compress(resource_path("cc12m_sample.tsv").read_bytes())[:2000])
    with pytest.raises(ValueError, match=r"broken\.tsv\.gz: unreadable after line \d+"):
        filter_captions([broken], tmp_path / "filtered.parquet", tmp_path / "report.json")
    assert (tmp_path / "filtered.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tsv.gz", "filtered.parquet", "report.json"]


def test_parse_row_reasons():
    assert parse_row(b"u\tcap") == (None, "cap")
    assert parse_row(b"u cap")[0] == "malformed"
    assert parse_row(b"u\ta\tb")[0] == "malformed"
    assert parse_row(b"u\t \t")[0] == "malformed"
    assert parse_row(b"u\t \xc2\xa0")[0] == "empty"
    assert parse_row(b"u\t\xff")[0] == "undecodable"


def test_shipped_sample_is_clean_and_describes_attributes(tmp_path):
    rows, report = run_filter(tmp_path, [resource_path("cc12m_sample.tsv")])
    assert report["total_rows"] == report["kept"] == len(rows) >= 250
    assert len({r["id"] for r in rows}) == len(rows)
    words = r"circle|square|triangle|star|ring|cross|heart|hexagon|diamond|crescent"
    with_shape = [r for r in rows if re.search(rf"\b({words})", r["caption"], re.I)]
    with_palette = [r for r in rows if re.search(r"\b(pastel|neon|earthy|ocean|sunset|red|blue)\b", r["caption"], re.I)]
    with_texture = [r for r in rows if re.search(r"\b(strip|dot|checker|gradient|plain|grid)", r["caption"], re.I)]
    assert len(with_shape) > 200 and len(with_palette) > 50 and len(with_texture) > 50
    assert len(rows) - len(with_shape) >= 30  # captions naming no shape at all


def test_cli_writes_outputs_and_reports_bad_input_in_one_line(tmp_path, capsys):
    out, report = tmp_path / "c" / "filtered.parquet", tmp_path / "c" / "report.json"
    argv = ["filter-captions", "--input", str(resource_path("cc12m_invalid.tsv"))]
    assert main([*argv, "--output", str(out), "--report", str(report)]) == 0
    assert "kept 4 of 13 captions" in capsys.readouterr().out
    assert pq.read_table(out).num_rows == 4
    assert main(["filter-captions", "--input", str(tmp_path / "missing.tsv"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"m2m filter-captions: error: {tmp_path / 'missing.tsv'}: caption file not found"]


def test_a_different_caption_with_a_taken_id_is_an_id_collision(tmp_path):
    from m2m.data.captions import CaptionFilter

    captions = CaptionFilter()
    digest = hashlib.sha1(b"blue ring").digest()
    captions._seen[int.from_bytes(digest[:6], "big")] = 0  # as if another caption had taken this id
    assert captions._admit("blue ring") == ("id_collision", "")
    assert captions._admit("red ring") == (None, caption_id("red ring"))
    assert captions._admit("red ring") == ("duplicate", "")
