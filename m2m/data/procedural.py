"""The procedural MIS generator: the default, download-free stand-in for Stable Diffusion (paper section 4).

As in MIS, a caption fixes what a set has in common and the seed makes each image distinct. The caption
fixes a set's shared attributes — ``palette`` (8 named colour palettes), ``shape`` (6 kinds) and
``texture`` (5 backgrounds) — and each seed draws an instance: 1-3 objects with their own position,
size and rotation, and the phase of the background pattern.

Caption grammar (docs/data_procedural.md lists the keywords): the caption is lower-cased and split into
words (runs of letters and digits). For each attribute the first word found in that attribute's keyword
table decides it (``"ocean"`` -> palette ``ocean``, ``"boxes"`` -> shape ``square``, ``"polka"`` ->
texture ``dots``). An attribute that no word names is hashed from the caption's words (joined by single
spaces) with SHA-256, so any caption gives a valid, stable set.

Output is byte-identical for the same caption and seed on any machine: the random stream is numpy's
PCG64 seeded explicitly, and rasterisation uses only ``+ - * /``, ``sqrt`` and ``floor`` (all exactly
rounded in IEEE arithmetic); rotations are rational (``t = tan(theta / 2)``), never ``sin``/``cos``.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from PIL import Image

VERSION = "1"

# name -> (object colour, background colour a, background colour b); backgrounds are a colour (plain), two
# colours (stripes, checker, dots) or the ramp between them (gradient). Every colour is at least 70 (RGB
# distance) from every other palette's colours and each palette's colours are at least 80 apart, so that
# the palette — what a small diffusion model learns first — is recognisable from colour statistics alone.
PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "ocean": ((0, 255, 225), (20, 60, 160), (0, 0, 210)),
    "sunset": ((0, 255, 0), (240, 110, 20), (255, 90, 105)),
    "forest": ((255, 255, 0), (10, 90, 30), (75, 135, 0)),
    "desert": ((0, 135, 255), (235, 210, 150), (180, 130, 60)),
    "candy": ((0, 180, 120), (255, 170, 220), (255, 90, 255)),
    "night": ((120, 0, 255), (10, 10, 30), (90, 0, 75)),
    "ice": ((195, 0, 0), (220, 245, 255), (135, 255, 255)),
    "stone": ((225, 0, 180), (130, 130, 130), (70, 70, 70)),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
TEXTURES = ("plain", "stripes", "checker", "dots", "gradient")
ATTRIBUTES = {"palette": tuple(PALETTES), "shape": SHAPES, "texture": TEXTURES}

KEYWORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "palette": {
        "ocean": ("ocean", "sea", "blue", "water", "lake", "river", "navy", "marine", "wave", "waves"),
        "sunset": ("sunset", "orange", "red", "warm", "fire", "autumn", "fall", "sunrise", "flame", "hot"),
        "forest": ("forest", "green", "tree", "trees", "garden", "grass", "park", "nature", "leaf", "leaves", "jungle"),
        "desert": ("desert", "sand", "sandy", "brown", "wood", "wooden", "beige", "coffee", "bread", "dune"),
        "candy": ("candy", "pink", "purple", "sweet", "flower", "flowers", "love", "wedding", "party", "cake"),
        "night": ("night", "dark", "black", "space", "moon", "midnight", "galaxy", "evening", "shadow"),
        "ice": ("ice", "snow", "winter", "white", "cold", "frozen", "christmas", "frost", "glacier"),
        "stone": ("stone", "grey", "gray", "city", "street", "concrete", "urban", "building", "rock", "metal"),
    },
    "shape": {
        "circle": ("circle", "circles", "round", "ball", "balls", "sphere", "coin", "coins", "sun", "orb"),
        "square": ("square", "squares", "box", "boxes", "cube", "cubes", "block", "blocks", "house", "window"),
        "triangle": ("triangle", "triangles", "pyramid", "mountain", "mountains", "tent", "roof", "peak"),
        "star": ("star", "stars", "starfish", "sparkle", "festive", "celebration", "award"),
        "cross": ("cross", "crosses", "plus", "hospital", "church", "medical", "health"),
        "ring": ("ring", "rings", "donut", "donuts", "doughnut", "hoop", "wreath", "wheel", "tire"),
    },
    "texture": {
        "plain": ("plain", "simple", "minimal", "solid", "clean", "empty", "isolated"),
        "stripes": ("stripes", "striped", "stripe", "lines", "fence", "layers", "horizon"),
        "checker": ("checker", "checkered", "chess", "plaid", "tiles", "tiled", "floor", "pattern"),
        "dots": ("dots", "dotted", "polka", "spots", "spotted", "bubbles", "rain", "confetti"),
        "gradient": ("gradient", "sky", "fade", "glow", "light", "dawn", "dusk", "mist"),
    },
}
_KEYWORD_INDEX = {
    attribute: {word: value for value, words in table.items() for word in words}
    for attribute, table in KEYWORDS.items()
}

# Geometry in units of the image side (pixel centres at (i + 0.5) / size).
TEXTURE_PERIOD = 0.25  # one stripe/checker/dot period is a quarter of the image
TEXTURE_PHASES = 8  # pattern phases a seed can pick, per axis
DOT_RADIUS = 0.28  # dot radius in periods
RING_INNER = 0.55  # inner radius of a ring, in circumradii
STAR_INNER = 0.45  # inner vertices of a star, in circumradii
CROSS_HALF_WIDTH = 0.32  # half-width of a cross arm, in arm lengths
# (count, smallest and largest circumradius); objects never overlap and stay inside the image.
OBJECT_RADII = {1: (0.24, 0.38), 2: (0.18, 0.26), 3: (0.15, 0.20)}
OBJECT_GAP = 0.04
PLACEMENT_TRIES = 64

_SQRT5 = math.sqrt(5.0)
_COS72, _SIN72 = (_SQRT5 - 1.0) / 4.0, math.sqrt(10.0 + 2.0 * _SQRT5) / 4.0
_COS36, _SIN36 = (_SQRT5 + 1.0) / 4.0, math.sqrt(10.0 - 2.0 * _SQRT5) / 4.0
_HALF_SQRT3 = math.sqrt(3.0) / 2.0


def caption_words(caption: str) -> list[str]:
    """The caption's words (letters and digits, any script), lower-cased."""
    return re.findall(r"[^\W_]+", caption.lower())


def stable_index(key: str, n: int) -> int:
    """A platform-independent index in ``[0, n)`` from SHA-256 of ``key``."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % n


def caption_attributes(caption: str) -> dict[str, str]:
    """The shared attributes a caption fixes: keyword look-up first, else a stable hash of the caption."""
    words = caption_words(caption)
    text = " ".join(words)
    attributes = {}
    for attribute, values in ATTRIBUTES.items():
        index = _KEYWORD_INDEX[attribute]
        named = next((index[w] for w in words if w in index), None)
        attributes[attribute] = named or values[stable_index(f"{attribute}:{text}", len(values))]
    return attributes


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` in ``(0, 1)``, each ``(size, size)``; y grows downwards."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.meshgrid(centres, centres)


def rational_rotation(t: float, quarter_turns: int) -> tuple[float, float]:
    """``(cos, sin)`` of ``2 atan(t) + quarter_turns * 90deg`` using only exactly rounded arithmetic."""
    cos, sin = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    for _ in range(quarter_turns % 4):
        cos, sin = -sin, cos
    return cos, sin


def _inside_convex(u: np.ndarray, v: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Points on the inner side of every edge of a counter-clockwise (in u, v) convex polygon."""
    inside = np.ones(u.shape, dtype=bool)
    for (au, av), (bu, bv) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        inside &= (bu - au) * (v - av) - (bv - av) * (u - au) >= 0.0
    return inside


def _turn(point: tuple[float, float], cos: float, sin: float) -> tuple[float, float]:
    return point[0] * cos - point[1] * sin, point[0] * sin + point[1] * cos


def _star_kites() -> list[list[tuple[float, float]]]:
    """A 5-pointed star as 5 convex kites (centre, inner vertex, tip, inner vertex), unit circumradius."""
    tip = (1.0, 0.0)
    inner_a, inner_b = (STAR_INNER * _COS36, -STAR_INNER * _SIN36), (STAR_INNER * _COS36, STAR_INNER * _SIN36)
    kites = []
    for _ in range(5):
        kites.append([(0.0, 0.0), inner_a, tip, inner_b])
        tip, inner_a, inner_b = (_turn(p, _COS72, _SIN72) for p in (tip, inner_a, inner_b))
    return kites


_STAR_KITES = _star_kites()
_TRIANGLE = [(1.0, 0.0), (-0.5, _HALF_SQRT3), (-0.5, -_HALF_SQRT3)]
_SQUARE_HALF = math.sqrt(0.5)
_CROSS_ARM = 1.0 / math.sqrt(1.0 + CROSS_HALF_WIDTH * CROSS_HALF_WIDTH)


def shape_mask(
    shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float, cos: float, sin: float
) -> np.ndarray:
    """Pixels inside ``shape`` centred at ``(cx, cy)`` with circumradius ``radius``, rotated by ``(cos, sin)``."""
    dx, dy = (x - cx) / radius, (y - cy) / radius
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= RING_INNER * RING_INNER)
    if shape == "square":
        return (np.abs(u) <= _SQUARE_HALF) & (np.abs(v) <= _SQUARE_HALF)
    if shape == "triangle":
        return _inside_convex(u, v, _TRIANGLE)
    if shape == "star":
        inside = _inside_convex(u, v, _STAR_KITES[0])
        for kite in _STAR_KITES[1:]:
            inside |= _inside_convex(u, v, kite)
        return inside
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, half = _CROSS_ARM, CROSS_HALF_WIDTH * _CROSS_ARM
        return ((au <= arm) & (av <= half)) | ((au <= half) & (av <= arm))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def texture_field(texture: str, x: np.ndarray, y: np.ndarray, phase: tuple[float, float]) -> np.ndarray:
    """Background mix ``t`` in ``[0, 1]`` (0: colour a, 1: colour b); ``phase`` shifts the pattern, in periods."""
    px, py = x / TEXTURE_PERIOD + phase[0], y / TEXTURE_PERIOD + phase[1]
    if texture == "plain":
        return np.zeros_like(x)
    if texture == "stripes":
        return np.floor(2.0 * py) % 2.0
    if texture == "checker":
        return (np.floor(2.0 * px) + np.floor(2.0 * py)) % 2.0
    if texture == "dots":
        fx, fy = px - np.floor(px) - 0.5, py - np.floor(py) - 0.5
        return (fx * fx + fy * fy <= DOT_RADIUS * DOT_RADIUS).astype(np.float64)
    if texture == "gradient":
        return y.copy()
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def paint_background(palette: str, t: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 background: colour a blended towards colour b by ``t``."""
    _, a, b = (np.asarray(c, dtype=np.float64) for c in PALETTES[palette])
    return np.rint(a + t[..., None] * (b - a)).astype(np.uint8)


def instance_rng(caption: str, seed: int) -> np.random.Generator:
    """The PCG64 stream of one image: seeded by the seed and the caption's SHA-256."""
    caption_key = int.from_bytes(hashlib.sha256(caption.encode("utf-8")).digest()[:8], "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, caption_key])))


def draw_objects(rng: np.random.Generator) -> list[tuple[float, float, float, float, float]]:
    """1-3 non-overlapping objects ``(cx, cy, radius, cos, sin)`` inside the unit square."""
    count = int(rng.integers(1, 4))
    low, high = OBJECT_RADII[count]
    objects: list[tuple[float, float, float, float, float]] = []
    for _ in range(count):
        radius = low + (high - low) * float(rng.random())
        cos, sin = rational_rotation(2.0 * float(rng.random()) - 1.0, int(rng.integers(0, 4)))
        for _ in range(PLACEMENT_TRIES):
            cx = radius + (1.0 - 2.0 * radius) * float(rng.random())
            cy = radius + (1.0 - 2.0 * radius) * float(rng.random())
            if all((cx - ox) ** 2 + (cy - oy) ** 2 >= (radius + r + OBJECT_GAP) ** 2 for ox, oy, r, _, _ in objects):
                objects.append((cx, cy, radius, cos, sin))
                break
    return objects


class ProceduralGenerator:
    """Image sets whose caption fixes palette, shape and texture and whose seed fixes the instance."""

    name = "procedural"

    def __init__(self, image_size: int = 32):
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        self.image_size = image_size
        self._x, self._y = pixel_grid(image_size)

    def settings(self) -> dict:
        """What fixes the output, for the shard metadata."""
        vocabularies = {attribute: list(values) for attribute, values in ATTRIBUTES.items()}
        return {"image_size": self.image_size, "version": VERSION, "attributes": vocabularies}

    def attributes(self, caption: str) -> dict[str, str]:
        """The shared attributes of the set drawn for ``caption``."""
        return caption_attributes(caption)

    def render(self, caption: str, seed: int) -> np.ndarray:
        """One image ``(H, W, 3)`` uint8 of the set of ``caption``, instance ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        attrs = caption_attributes(caption)
        rng = instance_rng(caption, int(seed))
        phase = tuple(float(p) / TEXTURE_PHASES for p in rng.integers(0, TEXTURE_PHASES, size=2))
        image = paint_background(attrs["palette"], texture_field(attrs["texture"], self._x, self._y, phase))
        colour = np.asarray(PALETTES[attrs["palette"]][0], dtype=np.uint8)
        for cx, cy, radius, cos, sin in draw_objects(rng):
            image[shape_mask(attrs["shape"], self._x, self._y, cx, cy, radius, cos, sin)] = colour
        return image

    def generate(self, captions: list[str], seeds: list[list[int]]) -> list[list[Image.Image]]:
        """For each caption, one RGB image per seed."""
        if len(captions) != len(seeds):
            raise ValueError(f"got {len(captions)} captions but {len(seeds)} seed lists")
        return [
            [Image.fromarray(self.render(caption, seed)) for seed in caption_seeds]
            for caption, caption_seeds in zip(captions, seeds, strict=True)
        ]
