"""Image grids: rows of image sets, preceding images | generated images (as the paper's figures)."""

from __future__ import annotations

from PIL import Image


def image_grid(rows: list[list[Image.Image]], split: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile ``rows`` of equally sized images; a wider gap after column ``split`` separates context from output."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image")
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    n_cols = max(len(r) for r in rows)
    gap = 4 * pad if split else 0
    grid = Image.new("RGB", (n_cols * (w + pad) + pad + gap, len(rows) * (h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            x = pad + c * (w + pad) + (gap if split and c >= split else 0)
            grid.paste(image.convert("RGB").resize((w, h), Image.NEAREST), (x, pad + r * (h + pad)))
    return grid
