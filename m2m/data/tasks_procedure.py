"""Visual procedure data, VGSI-style wikiHow methods (paper sections 7.1.2 and 8.5.2): reader and fixture.

Layout (one folder per method)::

    ROOT/<method_id>/method.json   {"goal": str, "method": str,
                                    "steps": [{"index": 1, "text": str, "image": "step-01.png"}, ...]}
    ROOT/<method_id>/step-01.png   the step images, at the paths (relative to the folder) the steps name

Steps are listed in order and numbered from 1 as wikiHow numbers them (``index`` = position + 1); the
reader's condition is that 1-based index. Other keys (the fixture's ``attributes``) are ignored.

The fixture's methods fill one large procedural shape from the bottom up: at step ``k`` of ``n`` the lowest
``round(k / n)`` of its rows are in the palette's object colour and the rest in colour b, on a plain
colour-a background; palette, shape, place, size and rotation are random per method.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from m2m.data import write_json
from m2m.data.procedural import PALETTES, SHAPES, pixel_grid, rational_rotation, shape_mask
from m2m.data.procedural_detect import as_rgb_array
from m2m.data.tasks import TaskDataset, item_folders, load_image, save_png

SCENE_RADII = (0.3, 0.42)  # circumradius of the shape, in image sides


def draw_scene(rng: np.random.Generator) -> dict:
    """A random method scene: palette, shape, centre, circumradius and rotation ``(cos, sin)``."""
    palette = list(PALETTES)[int(rng.integers(len(PALETTES)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius = SCENE_RADII[0] + (SCENE_RADII[1] - SCENE_RADII[0]) * float(rng.random())
    centre = [radius + (1.0 - 2.0 * radius) * float(rng.random()) for _ in range(2)]
    rotation = rational_rotation(2.0 * float(rng.random()) - 1.0, int(rng.integers(0, 4)))
    return {"palette": palette, "shape": shape, "centre": centre, "radius": radius, "rotation": list(rotation)}


def render_step(scene: dict, step: int, n_steps: int, image_size: int) -> np.ndarray:
    """Step ``step`` (1-based) of ``n_steps``: the shape filled from the bottom to ``step / n_steps``."""
    x, y = pixel_grid(image_size)
    mask = shape_mask(scene["shape"], x, y, *scene["centre"], scene["radius"], *scene["rotation"])
    rows = np.flatnonzero(mask.any(axis=1))
    top, bottom = int(rows[0]), int(rows[-1])
    filled_rows = (2 * step * (bottom - top + 1) + n_steps) // (2 * n_steps)
    filled = mask & (np.arange(image_size)[:, None] > bottom - filled_rows)
    colour, background, unfilled = PALETTES[scene["palette"]]
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = background
    image[mask] = unfilled
    image[filled] = colour
    return image


def split_scene(image, palette: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the filled (nearest the object colour) and unfilled (nearest colour b) parts of a scene."""
    pixels = as_rgb_array(image).astype(np.float64)
    colours = np.asarray(PALETTES[palette], dtype=np.float64)
    nearest = ((pixels[..., None, :] - colours) ** 2).sum(-1).argmin(-1)
    return nearest == 0, nearest == 2


def detect_progress(filled: np.ndarray, unfilled: np.ndarray) -> float:
    """The fill level: over the longest run of rows that show the shape, the share of rows below the fill
    line that best separates filled rows (below) from unfilled ones (above). 0 when no shape is visible."""
    shown = np.flatnonzero((filled | unfilled).any(axis=1))
    if shown.size == 0:
        return 0.0
    runs = np.split(shown, np.flatnonzero(np.diff(shown) > 1) + 1)
    rows = max(runs, key=len)
    f, u = filled[rows].sum(axis=1), unfilled[rows].sum(axis=1)
    # cost of a fill line before row s: filled pixels above it plus unfilled pixels below it
    cost = np.concatenate([[0], np.cumsum(f)]) + np.concatenate([np.cumsum(u[::-1])[::-1], [0]])
    return float((len(rows) - int(cost.argmin())) / len(rows))


def write_procedure_fixture(
    root: str | Path, n_methods: int, n_steps: int = 6, image_size: int = 32, seed: int = 0
) -> list[str]:
    """Write ``n_methods`` fill-the-shape methods of ``n_steps`` steps in the VGSI-style layout; returns ids.

    ``n_steps`` is at most ``image_size // 3`` so that every step differs by at least a row.
    """
    if n_methods < 1 or image_size < 8 or not 1 <= n_steps <= image_size // 3:
        raise ValueError(
            f"need n_methods >= 1, image_size >= 8 and 1 <= n_steps <= image_size // 3; "
            f"got {n_methods}, {image_size}, {n_steps}"
        )
    root, ids = Path(root), []
    for index in tqdm(range(n_methods), desc="procedure methods", unit="method"):
        scene = draw_scene(np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index]))))
        folder = root / f"method-{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        steps = []
        for step in range(1, n_steps + 1):
            name = f"step-{step:02d}.png"
            save_png(render_step(scene, step, n_steps, image_size), folder / name)
            text = f"Fill the {scene['shape']} with {scene['palette']} paint up to {step}/{n_steps} of its height."
            steps.append({"index": step, "text": text, "image": name})
        goal = f"How to Paint a {scene['shape'].title()}"
        write_json(
            folder / "method.json",
            {"goal": goal, "method": "Fill It from the Bottom Up", "steps": steps, "attributes": scene},
        )
        ids.append(folder.name)
    return ids


def read_method(folder: Path) -> tuple[list[Path], list[int]]:
    """A method's step image paths and 1-based indices, checked against the layout."""
    path = folder / "method.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: method.json not found")
    try:
        method = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(method, dict):
        raise ValueError(f"{path}: expected a JSON object with goal, method and steps")
    for field in ("goal", "method"):
        if not isinstance(method.get(field), str):
            raise ValueError(f"{path}: field {field!r} must be a string")
    steps = method.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError(f"{path}: field 'steps' must be a non-empty list")
    images, indices = [], []
    for position, step in enumerate(steps):
        where = f"{path}: steps[{position}]"
        if not isinstance(step, dict):
            raise ValueError(f"{where} must be an object with index, text and image")
        if step.get("index") != position + 1 or isinstance(step.get("index"), bool):
            raise ValueError(f"{where}.index must be {position + 1} (steps in order, numbered from 1)")
        if not isinstance(step.get("text"), str) or not isinstance(step.get("image"), str):
            raise ValueError(f"{where}: fields 'text' and 'image' must be strings")
        image = folder / step["image"]
        if not image.is_file():
            raise FileNotFoundError(f"{where}.image: {image} not found")
        images.append(image)
        indices.append(position + 1)
    return images, indices


class ProcedureDataset(TaskDataset):
    """VGSI-style methods as items of ``n_images`` steps in order (``sample``: a random subset, a window of
    consecutive steps or the first steps), with ``cond`` their 1-based step indices ``(N,)`` (long)."""

    def __init__(self, root: str | Path, n_images: int = 5, sample: str = "subset", image_size: int | None = None):
        super().__init__(n_images, sample, image_size)
        self.items: list[tuple[str, list[Path], list[int]]] = []
        for folder in item_folders(root):
            images, indices = read_method(folder)
            if self._keep(folder, len(images)):
                self.items.append((folder.name, images, indices))
        if not self.items:
            raise ValueError(f"{root}: no method has at least {n_images} steps")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        method_id, images, indices = self.items[index]
        chosen = self._choose(len(images), ordered=True)
        return {
            "images": torch.stack([load_image(images[i], self.image_size) for i in chosen]),
            "cond": torch.tensor([indices[i] for i in chosen], dtype=torch.long),
            "id": method_id,
        }
