"""The attribute detector: near exact on generated images, palette robust to blur and noise."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from m2m.data.procedural import ATTRIBUTES, ProceduralGenerator
from m2m.data.procedural_detect import as_rgb_array, detect_attributes, detect_palette, detect_shape


@pytest.fixture(scope="module")
def generated():
    """300 images of 300 hashed captions (every attribute value occurs), with their attributes."""
    generator = ProceduralGenerator(32)
    captions = [f"untitled photo {i}" for i in range(300)]
    images = [generator.generate([c], [[i]])[0][0] for i, c in enumerate(captions)]
    return images, [generator.attributes(c) for c in captions]


def test_every_attribute_is_recovered_on_generated_images(generated):
    images, references = generated
    hits = Counter()
    for image, reference in zip(images, references, strict=True):
        detected = detect_attributes(image)
        hits.update(a for a in ATTRIBUTES if detected[a] == reference[a])
    for attribute, values in ATTRIBUTES.items():
        assert {r[attribute] for r in references} == set(values)
        assert hits[attribute] / len(images) >= 0.95, attribute


def test_palette_survives_blur_and_noise(generated):
    images, references = generated
    rng = np.random.default_rng(0)
    hits = 0
    for image, reference in zip(images, references, strict=True):
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)
        noisy = np.clip(blurred + rng.normal(0.0, 40.0, blurred.shape), 0, 255).astype(np.uint8)
        hits += detect_palette(noisy) == reference["palette"]
    assert hits / len(images) >= 0.95


def test_palette_is_read_from_mean_colour_alone_most_of_the_time(generated):
    images, references = generated
    hits = sum(
        detect_palette(np.broadcast_to(np.asarray(i).mean((0, 1)).round().astype(np.uint8), (32, 32, 3)))
        == r["palette"]
        for i, r in zip(images, references, strict=True)
    )
    assert hits / len(images) >= 0.75


def test_a_blob_or_nothing_is_no_shape():
    assert detect_shape(np.zeros((32, 32), dtype=bool)) is None
    noise = np.random.default_rng(1).random((32, 32)) < 0.3
    assert detect_shape(noise) is None


def test_tensors_in_minus_one_one_read_like_images():
    image = ProceduralGenerator().generate(["candy stars on stripes"], [[5]])[0][0]
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    assert np.array_equal(as_rgb_array(tensor), np.asarray(image))
    assert (
        detect_attributes(tensor)
        == detect_attributes(image)
        == {
            "palette": "candy",
            "shape": "star",
            "texture": "stripes",
        }
    )


def test_other_inputs_are_refused():
    with pytest.raises(ValueError, match="float64 \\(32, 32, 3\\)"):
        as_rgb_array(np.zeros((32, 32, 3)))
    assert as_rgb_array(Image.new("L", (4, 4))).shape == (4, 4, 3)
