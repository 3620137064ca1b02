"""Fixtures for the data tests: captions and a tiny generator (weight-shaped folders: tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def captions_parquet(tmp_path_factory):
    """The shipped sample, filtered: 300 captions."""
    from m2m.data.captions import filter_captions
    from m2m.resources import resource_path

    root = tmp_path_factory.mktemp("captions")
    out = root / "filtered.parquet"
    filter_captions([resource_path("cc12m_sample.tsv")], out, root / "report.json")
    return out


class ColourGenerator:
    """A tiny in-test backend: each image is a flat colour from the caption's length and the seed."""

    name = "colour"

    def __init__(self, image_size: int = 8) -> None:
        self.image_size = image_size
        self.calls = 0

    def settings(self) -> dict:
        return {"image_size": self.image_size}

    def attributes(self, caption: str) -> dict:
        return {"length": len(caption)}

    def image(self, caption: str, seed: int) -> Image.Image:
        colour = [len(caption) % 256, seed % 256, seed >> 55]
        return Image.fromarray(np.full((self.image_size, self.image_size, 3), colour, np.uint8))

    def generate(self, captions, seeds):
        self.calls += 1
        return [[self.image(caption, seed) for seed in row] for caption, row in zip(captions, seeds)]


@pytest.fixture(scope="session")
def colour_generator_class():
    return ColourGenerator


@pytest.fixture
def colour_generator():
    return ColourGenerator()
