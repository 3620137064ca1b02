"""Asset checks: shards match the manifest, training losses are finite, metrics are in range.

The shard and loss checks are blocking: a corrupt dataset or a diverged model stops its downstream
assets in the same run.
"""

import csv
import hashlib
import json
import math
from pathlib import Path

import dagster as dg

from orchestration.defs.resources import DvcResource
from orchestration.project import project_root
from orchestration.dvc.stages import StageGroup, load_pipeline

# The range each Table 1 metric can take; any other metric must at least be finite.
BOUNDS = {
    "fid": (0.0, math.inf),
    "inception_score": (1.0 - 1e-6, math.inf),
    "clip_text_image": (0.0, 100.0),
    "clip_image_image": (0.0, 100.0),
    "consistency": (0.0, 1.0),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def outputs(dvc: DvcResource, asset: str) -> tuple[Path, list[str]]:
    root = dvc.cli().root
    return root, list(load_pipeline(root, strict=False)[asset].first.outs)


def shard_problems(manifest_path: Path) -> tuple[int, list[str]]:
    """Shards the manifest lists that are missing, of another sha256, or of another count."""
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    folder = manifest_path.parent / manifest.get("shards_dir", "shards")
    problems = []
    for entry in manifest["shards"]:
        tar = folder / entry["name"]
        if not tar.is_file():
            problems.append(f"{tar}: missing")
            continue
        digest = sha256(tar)
        if digest != entry["sha256"]:
            problems.append(f"{tar}: sha256 {digest[:12]}… but the manifest says {entry['sha256'][:12]}…")
        sidecar = tar.with_suffix(".json")
        if sidecar.is_file() and json.loads(sidecar.read_text(encoding="utf-8")).get("count") != entry["count"]:
            problems.append(f"{sidecar}: count differs from the manifest's {entry['count']}")
    return len(manifest["shards"]), problems


def loss_problems(loss_csv: Path) -> tuple[int, list[str]]:
    """Rows of ``loss.csv`` whose loss is not a finite number (or no rows at all)."""
    if not loss_csv.is_file():
        return 0, [f"{loss_csv}: missing"]
    with open(loss_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    problems = []
    for line, row in enumerate(rows, start=2):
        try:
            value = float(row.get("loss") or "nan")
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            problems.append(f"{loss_csv}: line {line} (step {row.get('step')}): loss {row.get('loss')!r}")
    if not rows:
        problems.append(f"{loss_csv}: no rows")
    return len(rows), problems


def metric_problems(metrics_json: Path) -> list[str]:
    """Summary metrics outside their range, or not finite."""
    if not metrics_json.is_file():
        return [f"{metrics_json}: missing"]
    summary = json.loads(metrics_json.read_text(encoding="utf-8"))["summary"]
    problems = []
    for name, stats in summary.items():
        low, high = BOUNDS.get(name, (-math.inf, math.inf))
        mean, std = float(stats["mean"]), float(stats["std"])
        if not (math.isfinite(mean) and low <= mean <= high):
            problems.append(f"{metrics_json}: {name} mean {mean} outside [{low:g}, {high:g}]")
        if not (math.isfinite(std) and std >= 0):
            problems.append(f"{metrics_json}: {name} std {std} is not a finite non-negative number")
    return problems


def result(problems: list[str], **numbers) -> dg.AssetCheckResult:
    metadata = {key: dg.MetadataValue.int(value) for key, value in numbers.items()}
    if problems:
        metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:50]))
    return dg.AssetCheckResult(passed=not problems, metadata=metadata)


def shard_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="shards_match_manifest",
        blocking=True,
        description="Every shard the manifest lists exists with the manifest's sha256 and sample count.",
    )
    def _check(dvc: DvcResource) -> dg.AssetCheckResult:
        root, outs = outputs(dvc, asset)
        manifest = next(root / out for out in outs if out.endswith("manifest.json"))
        count, problems = shard_problems(manifest)
        return result(problems, shards=count)

    return _check


def loss_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="loss_is_finite",
        blocking=True,
        description="loss.csv has rows and no NaN or infinite training loss.",
    )
    def _check(dvc: DvcResource) -> dg.AssetCheckResult:
        root, outs = outputs(dvc, asset)
        rows, problems = 0, []
        for out in outs:
            n, found = loss_problems(root / out / "loss.csv")
            rows, problems = rows + n, problems + found
        return result(problems, rows=rows)

    return _check


def metrics_check(asset: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="metrics_in_range",
        description="Table 1 metrics are finite and in range: FID >= 0, IS >= 1, CLIP in [0, 100], "
        "consistency in [0, 1], standard deviations >= 0.",
    )
    def _check(dvc: DvcResource) -> dg.AssetCheckResult:
        root, outs = outputs(dvc, asset)
        problems = [p for out in outs for p in metric_problems(root / out / "metrics.json")]
        return result(problems, models=len(outs))

    return _check


CHECKS = {"dataset": shard_check, "train": loss_check, "evaluate": metrics_check}  # by stage role


def build_checks(groups: dict[str, StageGroup]) -> list[dg.AssetChecksDefinition]:
    """The checks that apply to each stage asset, by its role."""
    return [CHECKS[group.first.role](name) for name, group in groups.items() if group.first.role in CHECKS]


@dg.definitions
def asset_checks() -> dg.Definitions:
    return dg.Definitions(asset_checks=build_checks(load_pipeline(project_root(), strict=False)))
