"""Task data for fine-tuning (paper section 7.1.2): what the novel-view and procedure readers share.

The layouts, readers and fixtures live in ``tasks_nvs`` (Objaverse-style renders) and ``tasks_procedure``
(VGSI-style wikiHow methods); both return items ``{"images": (N, 3, H, W) in [-1, 1], "cond": ..., "id"}``
where the N images are an ordered window of the item's images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from m2m.files import atomic_file

SAMPLES = ("subset", "window", "first")


def load_image(path: Path, image_size: int | None = None) -> torch.Tensor:
    """An RGB image file as a float ``(3, H, W)`` tensor in ``[-1, 1]``, resized (bicubic) if asked."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: image file not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return array.permute(2, 0, 1) / 127.5 - 1.0


def save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    """Write a PNG whole or not at all."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")


def item_folders(root: str | Path) -> list[Path]:
    """The item sub-folders of a task-data root, sorted by name; a missing or empty root is an error."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: task-data folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no item folders inside")
    return folders


class TaskDataset(torch.utils.data.Dataset):
    """Items of ``n_images`` of an item's images each, drawn by ``sample``:

    - ``"subset"`` (training): distinct images at random; in random order where the order carries no
      meaning (views), in their own order where it does (procedure steps). The images are then no fixed
      stride apart, so only the task condition tells the model which view or step comes next.
    - ``"window"``: consecutive images from a random start.
    - ``"first"`` (evaluation): consecutive images from the first one.

    Random draws use torch's generator, so ``torch.manual_seed`` and DataLoader workers make them
    reproducible. Items with fewer images are skipped, counted in ``skipped`` and named in a warning.
    """

    def __init__(self, n_images: int, sample: str, image_size: int | None):
        if n_images < 1:
            raise ValueError(f"n_images must be at least 1, got {n_images}")
        if sample not in SAMPLES:
            raise ValueError(f"sample must be one of {SAMPLES}, got {sample!r}")
        self.n_images, self.sample, self.image_size = n_images, sample, image_size
        self.skipped: list[str] = []

    def _keep(self, folder: Path, count: int) -> bool:
        if count >= self.n_images:
            return True
        self.skipped.append(folder.name)
        warnings.warn(f"{folder}: {count} images, fewer than n_images={self.n_images}; skipped", stacklevel=3)
        return False

    def _start(self, count: int, wrap: bool) -> int:
        """Index of a window's first image; with ``wrap`` the window may run past the end (orbits)."""
        if self.sample == "first":
            return 0
        choices = count if wrap else count - self.n_images + 1
        return int(torch.randint(choices, (1,)))

    def _choose(self, count: int, ordered: bool) -> list[int]:
        """Indices of the ``n_images`` images of one item of ``count``. ``ordered``: the images keep their
        order (procedures) and windows do not wrap; else windows wrap round (orbits) and subsets are
        shuffled."""
        if self.sample == "subset":
            chosen = torch.randperm(count)[: self.n_images].tolist()
            return sorted(chosen) if ordered else chosen
        start = self._start(count, wrap=not ordered)
        return [(start + k) % count for k in range(self.n_images)]
