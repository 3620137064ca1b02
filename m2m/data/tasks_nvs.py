"""Novel-view synthesis data, Objaverse-style (paper sections 7.1.2 and 8.5.1): reader and fixture.

Layout (one folder per object)::

    ROOT/<object_id>/000.png ... 011.png   the views, numbered from 000 without gaps
    ROOT/<object_id>/cameras.json          [[4 rows of 4] or [3 rows of 4], ...], one per view, in view order
                     (or cameras.npy)      float array (V, 4, 4) or (V, 3, 4)
    ROOT/<object_id>/object.json           fixture only: the object's attributes (ignored by the reader)

Cameras are camera-to-world extrinsics in the OpenGL/Blender convention (world z up; the camera looks along
its -z axis, y up), so a camera's azimuth is ``atan2(y, x)`` of its centre. A 4x4 matrix must end in
``[0, 0, 0, 1]``. The reader's condition is each view's flattened 3x4 matrix.

The fixture's objects are a body sphere with three smaller satellites at random places, drawn in a
palette of the procedural generator (background: colour a, body: object colour, satellites: colour b)
and rendered orthographically with a z-buffer from 12 cameras 30 degrees apart on a circle at elevation
``atan(12/35)`` (about 19 degrees), so each view shows the object turned with the camera.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from m2m.data import write_json
from m2m.data.procedural import PALETTES, pixel_grid
from m2m.data.tasks import TaskDataset, item_folders, load_image, save_png

N_VIEWS = 12
CAMERA_DISTANCE = 2.0
ELEVATION_COS, ELEVATION_SIN = 35.0 / 37.0, 12.0 / 37.0
VIEW_EXTENT = 1.15  # the image spans [-1.15, 1.15] world units on each camera axis
SHADE_MIN = 0.7  # brightness of a sphere's rim relative to its centre
VIEW_NAME = re.compile(r"^\d{3}\.png$")


def orbit_cameras(distance: float = CAMERA_DISTANCE) -> np.ndarray:
    """The fixture's 12 camera-to-world matrices ``(12, 4, 4)``: azimuths 0, 30, ... 330 degrees, looking at
    the origin (cosines and sines of 30-degree steps are built from ``sqrt(3) / 2`` exactly)."""
    step_cos, step_sin = math.sqrt(3.0) / 2.0, 0.5
    cos, sin = 1.0, 0.0
    cameras = []
    for _ in range(N_VIEWS):
        back = np.array([ELEVATION_COS * cos, ELEVATION_COS * sin, ELEVATION_SIN])
        right = np.array([-sin, cos, 0.0])
        up = np.array([-ELEVATION_SIN * cos, -ELEVATION_SIN * sin, ELEVATION_COS])
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, distance * back
        cameras.append(c2w)
        cos, sin = cos * step_cos - sin * step_sin, sin * step_cos + cos * step_sin
    return np.stack(cameras)


def camera_azimuth(camera) -> float:
    """Azimuth in degrees ``[0, 360)`` of a camera-to-world matrix (3x4, 4x4 or flattened)."""
    matrix = np.asarray(camera, dtype=np.float64).reshape(-1, 4)[:3]
    return math.degrees(math.atan2(matrix[1, 3], matrix[0, 3])) % 360.0


def draw_object(rng: np.random.Generator) -> dict:
    """A random asymmetric object: palette, body radius and three satellites ``[x, y, z, radius]``."""
    palette = list(PALETTES)[int(rng.integers(len(PALETTES)))]
    satellites = []
    while len(satellites) < 3:
        direction = 2.0 * rng.random(3) - 1.0
        norm2 = float(direction @ direction)
        if not 0.04 < norm2 <= 1.0 or abs(direction[2]) > 0.5 * math.sqrt(norm2):
            continue
        distance = 0.6 + 0.2 * float(rng.random())
        centre = direction * (distance / math.sqrt(norm2))
        satellites.append([*map(float, centre), 0.2 + 0.12 * float(rng.random())])
    return {"palette": palette, "body_radius": 0.4 + 0.1 * float(rng.random()), "satellites": satellites}


def render_view(obj: dict, camera: np.ndarray, image_size: int) -> np.ndarray:
    """The object seen from a camera-to-world ``camera``: orthographic, z-buffered, rim-shaded spheres."""
    colour, background, satellite = (np.asarray(c, dtype=np.float64) for c in PALETTES[obj["palette"]])
    x, y = pixel_grid(image_size)
    px, py = (x - 0.5) * (2.0 * VIEW_EXTENT), (0.5 - y) * (2.0 * VIEW_EXTENT)
    right, up, back, centre = (camera[:3, i] for i in range(4))
    image = np.broadcast_to(background, (image_size, image_size, 3)).copy()
    depth = np.full((image_size, image_size), np.inf)
    spheres = [([0.0, 0.0, 0.0, obj["body_radius"]], colour)] + [(s, satellite) for s in obj["satellites"]]
    for (sx, sy, sz, radius), tint in spheres:
        offset = np.array([sx, sy, sz]) - centre
        d2 = (px - offset @ right) ** 2 + (py - offset @ up) ** 2
        hit = d2 <= radius * radius
        height = np.sqrt(np.maximum(radius * radius - d2, 0.0))
        z = -(offset @ back) - height
        front = hit & (z < depth)
        depth[front] = z[front]
        shade = SHADE_MIN + (1.0 - SHADE_MIN) * height[front] / radius
        image[front] = tint * shade[:, None]
    return np.rint(image).astype(np.uint8)


def write_nvs_fixture(root: str | Path, n_objects: int, image_size: int = 32, seed: int = 0) -> list[str]:
    """Write ``n_objects`` procedural objects in the Objaverse-style layout; returns their ids."""
    if n_objects < 1 or image_size < 8:
        raise ValueError(f"need n_objects >= 1 and image_size >= 8, got {n_objects} and {image_size}")
    root, cameras = Path(root), orbit_cameras()
    ids = []
    for index in tqdm(range(n_objects), desc="nvs objects", unit="object"):
        obj = draw_object(np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index]))))
        folder = root / f"object-{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for view, camera in enumerate(cameras):
            save_png(render_view(obj, camera, image_size), folder / f"{view:03d}.png")
        write_json(folder / "cameras.json", cameras.tolist())
        write_json(folder / "object.json", obj)
        ids.append(folder.name)
    return ids


def _camera(entry, path: Path, index: int) -> np.ndarray:
    """One camera-to-world matrix, checked, as 3x4 float32."""
    try:
        matrix = np.asarray(entry, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: camera {index} is not a matrix of numbers") from err
    if matrix.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"{path}: camera {index} has shape {matrix.shape}, expected 3x4 or 4x4")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: camera {index} contains non-finite values")
    if matrix.shape[0] == 4 and np.abs(matrix[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6:
        raise ValueError(f"{path}: camera {index} is 4x4 but its last row is not [0, 0, 0, 1]")
    return matrix[:3].astype(np.float32)


def read_cameras(folder: Path) -> np.ndarray:
    """An object's camera-to-world matrices as ``(V, 3, 4)`` float32, from cameras.json or cameras.npy."""
    json_path, npy_path = folder / "cameras.json", folder / "cameras.npy"
    if json_path.is_file():
        path = json_path
        try:
            entries = json.loads(json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{json_path}: not valid JSON ({err})") from err
        if not isinstance(entries, list):
            raise ValueError(f"{json_path}: expected a list of 3x4 or 4x4 matrices")
    elif npy_path.is_file():
        path = npy_path
        try:
            entries = np.load(npy_path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{npy_path}: not a readable .npy array ({err})") from err
        if entries.ndim != 3:
            raise ValueError(f"{npy_path}: shape {entries.shape}, expected (V, 4, 4) or (V, 3, 4)")
    else:
        raise FileNotFoundError(f"{folder}: no cameras.json or cameras.npy")
    if len(entries) == 0:
        raise ValueError(f"{path}: no cameras")
    return np.stack([_camera(entry, path, i) for i, entry in enumerate(entries)])


def view_files(folder: Path) -> list[Path]:
    """An object's views ``000.png``, ``001.png``, ... in order; a gap in the numbering is an error."""
    views = sorted(p for p in folder.iterdir() if VIEW_NAME.match(p.name))
    for expected, path in enumerate(views):
        if path.name != f"{expected:03d}.png":
            raise ValueError(f"{folder}: views must be numbered 000.png, 001.png, ...; {expected:03d}.png is missing")
    if not views:
        raise ValueError(f"{folder}: no views (000.png, 001.png, ...)")
    return views


class NVSDataset(TaskDataset):
    """Objaverse-style objects as items of ``n_images`` views (``sample``: a random subset in random order,
    a window along the orbit that wraps past the last view, or the first views), with ``cond`` the views'
    flattened 3x4 camera-to-world matrices ``(N, 12)``."""

    def __init__(self, root: str | Path, n_images: int = 5, sample: str = "subset", image_size: int | None = None):
        super().__init__(n_images, sample, image_size)
        self.items: list[tuple[str, list[Path], np.ndarray]] = []
        for folder in item_folders(root):
            views, cameras = view_files(folder), read_cameras(folder)
            if len(cameras) != len(views):
                raise ValueError(f"{folder}: {len(views)} views but {len(cameras)} cameras")
            if self._keep(folder, len(views)):
                self.items.append((folder.name, views, cameras))
        if not self.items:
            raise ValueError(f"{root}: no object has at least {n_images} views")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        object_id, views, cameras = self.items[index]
        chosen = self._choose(len(views), ordered=False)
        return {
            "images": torch.stack([load_image(views[i], self.image_size) for i in chosen]),
            "cond": torch.from_numpy(cameras[chosen].reshape(len(chosen), 12)),
            "id": object_id,
        }
