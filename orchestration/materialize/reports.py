"""What the Dagster UI shows about a materialized stage, read from the files the stage wrote.

One function per ``m2m`` sub-command: counts and drop reasons, shard sizes, the split, the first image
set of the data (a small markdown preview), the last training losses and metric tables. The sample grids
of trained and evaluated models are MLflow images, linked from the asset page (``orchestration/mlflow``). Nothing is computed here
that the stage did not already write; images are only tiled and shrunk for display.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from orchestration.dvc.stages import Stage

PREVIEW_SIDE = 384  # longest side of an image preview, in pixels
PREVIEW_CELL = 64  # tiles of small images are scaled up to this many pixels


def image_markdown(image, alt: str, caption: str | None = None) -> dg.MetadataValue:
    """A PIL image as an inline markdown preview, shrunk to ``PREVIEW_SIDE``, under ``caption``."""
    image = image.convert("RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    text = f"![{alt}](data:image/png;base64,{encoded})"
    return dg.MetadataValue.md(f"**{caption}**\n\n{text}" if caption else text)


def tile(images: list, columns: int):
    """Images of one size side by side, ``columns`` per row, scaled up to ``PREVIEW_CELL`` when small."""
    from PIL import Image

    cell = max(PREVIEW_CELL, images[0].width)
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i, image in enumerate(images):
        cell_image = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
        grid.paste(cell_image, (i % columns * cell, i // columns * cell))
    return grid


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def markdown_table(header: list[str], rows: list[list]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def captions_report(stage: Stage, root: Path) -> dict:
    """``filter-captions``: rows read and kept, drops by reason, a few kept captions."""
    import pyarrow.parquet as pq

    report_path = next((root / out for out in stage.outs if out.endswith(".json")), None)
    parquet = next(root / out for out in stage.outs if out.endswith(".parquet"))
    meta = {}
    if report_path and report_path.is_file():
        report = read_json(report_path)
        meta["captions read"] = dg.MetadataValue.int(report["total_rows"])
        meta["captions kept"] = dg.MetadataValue.int(report["kept"])
        meta["dropped by reason"] = markdown_table(["reason", "captions"], sorted(report["dropped"].items()))
        if report.get("captions_per_second"):
            meta["captions/s"] = dg.MetadataValue.float(float(report["captions_per_second"]))
    table = pq.read_table(parquet, columns=["id", "caption", "n_tokens"]).slice(0, 5).to_pylist()
    meta["first captions"] = markdown_table(["id", "caption", "tokens"], [list(row.values()) for row in table])
    meta["dagster/row_count"] = dg.MetadataValue.int(pq.ParquetFile(parquet).metadata.num_rows)
    return meta


def first_set(tar_path: Path, limit: int = 25) -> list:
    """The images of the first sample of a webdataset shard (members ``<key>.<nnn>.png``), in order."""
    from PIL import Image

    images, first_key = [], None
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            first_key = first_key or key
            if key != first_key or len(images) == limit:
                break
            if ext.endswith(".png"):
                with tar.extractfile(member) as handle:
                    images.append(Image.open(io.BytesIO(handle.read())).convert("RGB"))
    return images


def shard_report(stage: Stage, root: Path) -> dict:
    """``generate-mis``: the shard's set count, sha256 and the first set as a grid."""
    tar = next(root / out for out in stage.outs if out.endswith(".tar"))
    sidecar = read_json(tar.with_suffix(".json"))
    meta = {
        "image sets": dg.MetadataValue.int(sidecar["count"]),
        "sha256": dg.MetadataValue.text(sidecar["sha256"]),
        "backend": dg.MetadataValue.text(str(sidecar.get("backend"))),
        "shard bytes": dg.MetadataValue.int(tar.stat().st_size),
    }
    images = first_set(tar)
    if images:
        meta["first image set"] = image_markdown(tile(images, 5), "first image set")
    return meta


def manifest_report(stage: Stage, root: Path) -> dict:
    """``build-manifest``: sets per shard and the train/test split."""
    manifest = read_json(next(root / out for out in stage.outs if out.endswith("manifest.json")))
    return {
        "image sets": dg.MetadataValue.int(manifest["total"]),
        "train sets": dg.MetadataValue.int(manifest["split"]["train"]),
        "test sets": dg.MetadataValue.int(manifest["split"]["test"]),
        "shards": markdown_table(
            ["shard", "sets", "sha256"], [[s["name"], s["count"], s["sha256"][:16]] for s in manifest["shards"]]
        ),
    }


def task_report(stage: Stage, root: Path) -> dict:
    """``make-task-data``: items written and the first item's images."""
    from PIL import Image

    folder = root / stage.outs[0]
    items = sorted(p for p in folder.iterdir() if p.is_dir())
    meta = {"items": dg.MetadataValue.int(len(items))}
    if items:
        images = [Image.open(p).convert("RGB") for p in sorted(items[0].glob("*.png"))]
        if images:
            meta[f"first item ({items[0].name})"] = image_markdown(tile(images, min(6, len(images))), items[0].name)
    return meta


def last_losses(loss_csv: Path, n: int = 5) -> list[dict]:
    with open(loss_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[-n:]


def training_report(stage: Stage, root: Path) -> dict:
    """``train``: final metrics and the last losses of each model folder."""
    meta = {}
    for out in stage.outs:
        folder = root / out
        if (folder / "train_metrics.json").is_file():
            numbers = {k: v for k, v in read_json(folder / "train_metrics.json").items() if isinstance(v, (int, float))}
            rows = [[key, f"{value:.6g}"] for key, value in numbers.items()]
            meta["training metrics"] = markdown_table(["metric", "value"], rows)
        if (folder / "loss.csv").is_file():
            rows = last_losses(folder / "loss.csv")
            if rows:
                meta["last losses"] = markdown_table(list(rows[0]), [list(row.values()) for row in rows])
                meta["final loss"] = dg.MetadataValue.float(float(rows[-1]["loss"]))
    return meta


def evaluation_report(stage: Stage, root: Path) -> dict:
    """``evaluate``: Table 1 (mean ± std over the generated positions) per model."""
    rows, meta = [], {}
    for out in stage.outs:
        folder = root / out
        if not (folder / "metrics.json").is_file():
            continue
        report = read_json(folder / "metrics.json")
        summary = report["summary"]
        row = {"model": report["model"]["method"]}
        row.update({key: f"{value['mean']:.2f} ± {value['std']:.2f}" for key, value in summary.items()})
        rows.append(row)
    if rows:  # one column per model, one row per metric: narrow enough for the asset page
        metrics = list(dict.fromkeys(key for row in rows for key in row if key != "model"))
        table = [[metric, *(row.get(metric, "") for row in rows)] for metric in metrics]
        meta["Table 1"] = markdown_table(["metric (mean ± std)", *(row["model"] for row in rows)], table)
    return meta


REPORTS: dict[str, Callable[[Stage, Path], dict]] = {
    "captions": captions_report,
    "shards": shard_report,
    "dataset": manifest_report,
    "task-data": task_report,
    "train": training_report,
    "evaluate": evaluation_report,
}


def describe(stage: Stage, root: Path) -> dict:
    """The UI metadata of ``stage`` from its output files."""
    return REPORTS[stage.role](stage, root) if stage.role in REPORTS else {}
