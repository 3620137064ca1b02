"""MIS webdataset shards: resumable, reproducible writing; manifest; train/test split (section 4).

Shard ``k`` holds captions ``[k*S, (k+1)*S)`` of the filtered Parquet, one sample per caption: key = the
caption id, ``000.png``...``024.png`` (25 images from distinct seeds, as in MIS), ``txt`` (the caption)
and ``json`` (seeds, backend, settings, attributes). The tar is written under a temporary name and
renamed when complete; then the sidecar ``mis-k.json`` records its count, keys and sha256. A shard
whose sidecar matches its tar and the requested settings is skipped, anything else is redone, so
shards run as independent partitions and a killed run resumes without duplicates.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from PIL import Image

from m2m.data import write_json
from m2m.files import atomic_file

SHARD_PREFIX = "mis-"
SPLITS = ("train", "test")
PRECOMPUTED = "latents.safetensors"

logger = logging.getLogger(__name__)


class MISGenerator(Protocol):
    """What ``generate-mis`` needs from a backend (procedural or Stable Diffusion)."""

    name: str

    def settings(self) -> dict:
        """Everything that fixes the images besides caption and seed (recorded with every shard)."""

    def generate(self, captions: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        """For each caption, one RGB image per seed."""

    def attributes(self, caption: str) -> dict:
        """What the caption fixes for its whole set (empty when the backend does not know)."""


def shard_name(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard:06d}.tar"


def image_seeds(seed: int, caption_id: str, n: int) -> list[int]:
    """Seeds of a caption's ``n`` images: sha256 of ``"{seed}:{id}:{j}"`` as a 63-bit integer.

    They depend on nothing but the run seed, the caption id and the image index, so any shard (and
    any single set) is reproducible alone, whatever the batching.
    """
    return [
        int.from_bytes(hashlib.sha256(f"{seed}:{caption_id}:{j}".encode()).digest()[:8], "big") >> 1
        for j in range(n)
    ]


def in_test_split(caption_id: str, test_percent: float) -> bool:
    """Deterministic split by caption id: test when ``int(sha1(id), 16) % 100 < test_percent``."""
    return int(hashlib.sha1(caption_id.encode("utf-8")).hexdigest(), 16) % 100 < test_percent


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_captions(captions: str | Path, shard: int, samples_per_shard: int) -> list[dict]:
    """Rows ``[shard*S, (shard+1)*S)`` of the filtered-captions Parquet as ``{"id", "caption"}``."""
    import pyarrow.parquet as pq

    path = Path(captions)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: filtered captions not found (run `m2m filter-captions` first)")
    if samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard: must be positive, got {samples_per_shard}")
    if shard < 0:
        raise ValueError(f"--shard: must be non-negative, got {shard}")
    parquet = pq.ParquetFile(path)
    missing = {"id", "caption"} - set(parquet.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    total = parquet.metadata.num_rows
    start, stop = shard * samples_per_shard, min((shard + 1) * samples_per_shard, total)
    if start >= total:
        n_shards = -(-total // samples_per_shard)
        raise ValueError(
            f"--shard {shard}: past the end of {path} ({total} captions make shards 0..{n_shards - 1} "
            f"of {samples_per_shard})"
        )
    rows, offset = [], 0
    for group in range(parquet.num_row_groups):
        n = parquet.metadata.row_group(group).num_rows
        if offset + n > start and offset < stop:
            table = parquet.read_row_group(group, columns=["id", "caption"])
            rows.extend(table.slice(max(start - offset, 0), stop - max(start, offset)).to_pylist())
        offset += n
    return rows


def read_sidecar(tar: Path) -> dict | None:
    sidecar = tar.with_suffix(".json")
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def shard_is_complete(tar: Path, keys: list[str], backend: str, settings: dict) -> bool:
    """True when the tar, its sidecar, the sidecar's sha256, keys, backend and settings all agree."""
    sidecar = read_sidecar(tar)
    return (
        tar.is_file()
        and sidecar is not None
        and sidecar.get("keys") == keys
        and sidecar.get("backend") == backend
        and sidecar.get("settings") == settings
        and sidecar.get("sha256") == sha256_file(tar)
    )


def write_shard(
    captions: str | Path,
    out_dir: str | Path,
    shard: int,
    generator: MISGenerator,
    samples_per_shard: int = 64,
    images_per_caption: int = 25,
    seed: int = 0,
    captions_per_call: int = 8,
    precompute=None,
) -> tuple[dict, bool]:
    """Generate shard ``shard`` unless it is already complete; returns (sidecar, written).

    ``precompute`` (e.g. ``sd_generator.LatentPrecomputer``) maps a set's images to tensors stored as
    ``latents.safetensors`` in the same sample, so that training need not encode them.
    """
    import webdataset as wds

    if images_per_caption < 1 or images_per_caption > 1000:
        raise ValueError(f"--images-per-caption: must be in 1..1000, got {images_per_caption}")
    rows = shard_captions(captions, shard, samples_per_shard)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tar = out_dir / shard_name(shard)
    keys = [row["id"] for row in rows]
    settings = {**generator.settings(), "images_per_caption": images_per_caption, "seed": seed}
    if precompute is not None:
        settings["precompute"] = precompute.settings()
    if shard_is_complete(tar, keys, generator.name, settings):
        return read_sidecar(tar), False
    with atomic_file(tar) as tmp:
        with open(tmp, "wb") as stream, wds.TarWriter(stream, mtime=0, user="m2m", group="m2m") as sink:
            progress = Progress(tar.name, len(rows), images_per_caption)
            for start in range(0, len(rows), max(1, captions_per_call)):
                chunk = rows[start : start + max(1, captions_per_call)]
                seeds = [image_seeds(seed, row["id"], images_per_caption) for row in chunk]
                sets = generator.generate([row["caption"] for row in chunk], seeds)
                for row, row_seeds, images in zip(chunk, seeds, sets):
                    item = sample(row, row_seeds, images, generator, settings)
                    if precompute is not None:
                        item[PRECOMPUTED] = save_tensors(precompute(images))
                    sink.write(item)
                progress.update(len(chunk))
            stream.flush()
            os.fsync(stream.fileno())
    sidecar = {
        "shard": shard,
        "count": len(rows),
        "sha256": sha256_file(tar),
        "keys": keys,
        "backend": generator.name,
        "settings": settings,
    }
    write_json(tar.with_suffix(".json"), sidecar)
    return sidecar, True


class Progress:
    """One log line per caption batch (sets done, images/s, ETA): a whole line each, so that it reaches
    a log that reads lines (the Dagster run log) while the shard is being written, not a redrawn bar."""

    def __init__(self, name: str, total: int, images_per_set: int) -> None:
        self.name, self.total, self.images_per_set = name, total, images_per_set
        self.done, self.start = 0, time.monotonic()

    def update(self, sets: int) -> str:
        self.done += sets
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done * self.images_per_set / elapsed
        eta = datetime.timedelta(seconds=round(elapsed / self.done * (self.total - self.done)))
        line = f"{self.name}: {self.done}/{self.total} sets, {rate:.2f} images/s, ETA {eta}"
        logger.info(line)
        return line


def sample(row: dict, seeds: list[int], images: list[Image.Image], generator: MISGenerator, settings: dict) -> dict:
    """One webdataset sample: the set's images, its caption and its metadata."""
    if len(images) != len(seeds):
        raise ValueError(f"{generator.name} returned {len(images)} images for {len(seeds)} seeds ({row['id']})")
    meta = {
        "caption_id": row["id"],
        "seeds": seeds,
        "backend": generator.name,
        "settings": settings,
        "attributes": generator.attributes(row["caption"]),
    }
    out = {"__key__": row["id"], "txt": row["caption"], "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
    out.update({f"{j:03d}.png": image.convert("RGB") for j, image in enumerate(images)})
    return out


def save_tensors(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def shard_paths(shards_dir: str | Path) -> list[Path]:
    """The complete shards of a folder, in index order (temporary files are not shards)."""
    folder = Path(shards_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: shard folder not found (run `m2m generate-mis` first)")
    return sorted(folder.glob(f"{SHARD_PREFIX}[0-9]*.tar"))


def check_complete_set(folder: Path, tars: list[Path]) -> None:
    """Every sidecar has its tar, and the shard indices run without a gap from the first to the last."""
    names = {tar.name for tar in tars}
    for sidecar in sorted(folder.glob(f"{SHARD_PREFIX}[0-9]*.json")):
        if sidecar.with_suffix(".tar").name not in names:
            raise ValueError(f"{sidecar}: sidecar without its shard {sidecar.with_suffix('.tar').name}; "
                             "rerun generate-mis for this shard")
    indices = sorted(int(tar.stem[len(SHARD_PREFIX):]) for tar in tars)
    gaps = sorted(set(range(indices[0], indices[-1] + 1)) - set(indices))
    if gaps:
        raise ValueError(f"{folder}: shard {folder / shard_name(gaps[0])} is missing between "
                         f"{shard_name(indices[0])} and {shard_name(indices[-1])}; rerun generate-mis --shard {gaps[0]}")


def verify_shards(manifest_path: str | Path) -> dict:
    """Every shard the manifest lists has the sha256 recorded there; returns the manifest.

    Training reads shards by name: a shard regenerated or damaged after ``build-manifest`` would
    change the data under an unchanged manifest (and split). Also fills ``images_per_set``: the
    fewest images a set of these shards has (from the sidecars).
    """
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        root = path.parent / manifest["shards_dir"]
        entries = [(root / shard["name"], shard["sha256"]) for shard in manifest["shards"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an MIS manifest ({type(err).__name__}: {err}); run `m2m build-manifest`") from None
    sizes = []
    for tar, expected in entries:
        if not tar.is_file():
            raise FileNotFoundError(f"{tar}: shard listed in {path} not found")
        digest = sha256_file(tar)
        if digest != expected:
            raise ValueError(f"{tar}: sha256 {digest[:12]}... differs from {path} ({expected[:12]}...); "
                             "the shard changed after build-manifest: rerun build-manifest (or generate-mis)")
        settings = (read_sidecar(tar) or {}).get("settings", {})
        if "images_per_caption" in settings:
            sizes.append(int(settings["images_per_caption"]))
    return {**manifest, "images_per_set": min(sizes) if sizes else None}


def build_manifest(
    shards_dir: str | Path, out: str | Path, test_percent: float = 10, split_out: str | Path | None = None
) -> dict:
    """Verify every shard against its sidecar; write the manifest and ``split.json`` beside it."""
    from tqdm import tqdm

    if not 0 <= test_percent <= 100:
        raise ValueError(f"--test-percent: must be in 0..100, got {test_percent}")
    out = Path(out)
    split_out = Path(split_out) if split_out else out.with_name("split.json")
    tars = shard_paths(shards_dir)
    if not tars:
        raise ValueError(f"{shards_dir}: no {SHARD_PREFIX}*.tar shards")
    check_complete_set(Path(shards_dir), tars)
    entries, split = [], {name: [] for name in SPLITS}
    for tar in tqdm(tars, unit="shards", desc="verify"):
        sidecar = read_sidecar(tar)
        if sidecar is None:
            sidecar_name = tar.with_suffix(".json").name
            raise ValueError(f"{tar}: sidecar {sidecar_name} missing or unreadable; rerun generate-mis for this shard")
        digest = sha256_file(tar)
        if sidecar.get("sha256") != digest:
            raise ValueError(f"{tar}: sha256 {digest} does not match its sidecar; rerun generate-mis for this shard")
        keys = sidecar["keys"]
        if len(keys) != sidecar.get("count"):
            raise ValueError(f"{tar.with_suffix('.json')}: count {sidecar.get('count')} but {len(keys)} keys")
        entries.append({"name": tar.name, "count": len(keys), "sha256": digest})
        for key in keys:
            split["test" if in_test_split(key, test_percent) else "train"].append(key)
    all_keys = split["train"] + split["test"]
    if len(set(all_keys)) != len(all_keys):
        raise ValueError(f"{shards_dir}: a caption id appears in more than one shard")
    manifest = {
        "shards_dir": os.path.relpath(Path(shards_dir).resolve(), out.resolve().parent),
        "shards": entries,
        "total": len(all_keys),
        "split": {name: len(ids) for name, ids in split.items()},
        "test_percent": test_percent,
        "split_file": os.path.relpath(split_out.resolve(), out.resolve().parent),
    }
    write_json(split_out, split)
    write_json(out, manifest)
    return manifest
