"""Image sets for evaluation, and a folder of real image sets for zero-shot tests (paper section 8.3).

MIS test sets come from the shards, with their caption and procedural attributes. A folder of image sets
holds one sub-folder per set, e.g. MSCOCO images grouped by object category::

    DIR/
      dog/      0001.jpg 0002.png 0003.webp ... [caption.txt]
      pizza/    ...

Images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``) are taken in natural file-name order. An optional
``caption.txt`` gives the set a caption for the text-image CLIP score. Images not already at the model's
square size are centre-cropped to a square and resized (bicubic), so photos keep their aspect ratio.
Sets with fewer readable images than needed, empty folders, non-image files and unreadable images are
skipped and counted; nothing usable at all is an error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps
from tqdm.auto import tqdm

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
CAPTION_FILE = "caption.txt"
LISTED_SKIPS = 20


@dataclass
class EvalSet:
    """One image set to condition on: its preceding images (RGB PIL), caption and procedural attributes."""

    id: str
    images: list[Image.Image]
    caption: str | None = None
    attributes: dict | None = None


@dataclass
class ImageSetCounts:
    """What reading image sets found, used and skipped."""

    found: int = 0
    used: int = 0
    not_read_past_limit: int = 0
    skipped_empty: int = 0
    skipped_too_few: int = 0
    non_image_files: int = 0
    unreadable_images: int = 0
    resized_images: int = 0
    with_caption: int = 0
    skipped: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        """Record why a set was skipped (the first :data:`LISTED_SKIPS` reasons are kept)."""
        if len(self.skipped) < LISTED_SKIPS:
            self.skipped.append(reason)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop ``image`` to a square and resize it to ``size`` x ``size`` RGB."""
    image = image.convert("RGB")
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _open_image(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def read_image_sets(
    folder: str | Path, num_images: int, image_size: int, limit: int | None = None
) -> tuple[list[EvalSet], ImageSetCounts]:
    """The first ``limit`` usable sets of ``folder``, each with its first ``num_images`` readable images
    fitted to ``image_size``, and the counts of what was skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: image-sets folder not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder with one sub-folder per image set")
    counts = ImageSetCounts()
    entries = sorted(folder.iterdir(), key=_natural_key)
    counts.non_image_files += sum(1 for e in entries if e.is_file())
    set_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    counts.found = len(set_dirs)
    if not set_dirs:
        raise ValueError(f"{folder}: no set folders (expected one sub-folder of images per set)")
    sets: list[EvalSet] = []
    for set_dir in tqdm(set_dirs, desc="reading image sets", unit="set"):
        if limit is not None and len(sets) >= limit:
            counts.not_read_past_limit += 1
            continue
        files = sorted((f for f in set_dir.iterdir() if f.is_file()), key=_natural_key)
        image_files = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        counts.non_image_files += sum(1 for f in files if f not in image_files and f.name != CAPTION_FILE)
        if not image_files:
            counts.skipped_empty += 1
            counts.skip(f"{set_dir.name}: no images")
            continue
        images = []
        for path in image_files:
            image = _open_image(path)
            if image is None:
                counts.unreadable_images += 1
                continue
            images.append(image)
            if len(images) == num_images:
                break
        if len(images) < num_images:
            counts.skipped_too_few += 1
            counts.skip(f"{set_dir.name}: {len(images)} readable images, {num_images} needed")
            continue
        counts.resized_images += sum(1 for image in images if image.size != (image_size, image_size))
        caption_path = set_dir / CAPTION_FILE
        caption = caption_path.read_text(encoding="utf-8").strip() if caption_path.is_file() else None
        counts.with_caption += bool(caption)
        sets.append(EvalSet(set_dir.name, [fit_image(image, image_size) for image in images], caption or None))
    counts.used = len(sets)
    if not sets:
        raise ValueError(
            f"{folder}: no usable image set ({counts.found} folders: {counts.skipped_empty} without images, "
            f"{counts.skipped_too_few} with fewer than {num_images} readable images)"
        )
    return sets, counts


def read_mis_eval_sets(
    mis: str | Path, split: str, num_images: int, image_size: int, limit: int | None = None
) -> tuple[list[EvalSet], ImageSetCounts]:
    """The first ``limit`` MIS sets of ``split`` (manifest or dataset folder), each with its first
    ``num_images`` images fitted to ``image_size``, its caption and its procedural attributes."""
    from m2m.data.loader import read_mis_sets

    counts = ImageSetCounts()
    sets: list[EvalSet] = []
    for sample in read_mis_sets(mis, split=split, limit=limit):
        counts.found += 1
        images = sample["images"][:num_images]
        if len(images) < num_images:
            counts.skipped_too_few += 1
            counts.skip(f"{sample['id']}: {len(images)} images, {num_images} needed")
            continue
        counts.resized_images += sum(1 for image in images if image.size != (image_size, image_size))
        counts.with_caption += bool(sample.get("caption"))
        sets.append(
            EvalSet(
                str(sample["id"]),
                [fit_image(image, image_size) for image in images],
                sample.get("caption") or None,
                sample.get("attributes") or None,
            )
        )
    counts.used = len(sets)
    if not sets:
        raise ValueError(f"{mis}: no usable {split} set ({counts.found} read, {counts.skipped_too_few} too short)")
    return sets, counts
