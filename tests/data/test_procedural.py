"""The procedural MIS generator: caption grammar, determinism, set structure."""

import hashlib
import itertools

import numpy as np
import pytest
from PIL import Image

from m2m.data.procedural import (
    ATTRIBUTES,
    OBJECT_GAP,
    PALETTES,
    ProceduralGenerator,
    caption_attributes,
    draw_objects,
    instance_rng,
)

# sha256 of the raw RGB bytes: PNG bytes also depend on the zlib build, the pixels must not.
PINNED = [
    (32, "a blue ocean with stars", 0, "131b3a4e512991f8ee835a619ec9510052f7e4cf5de79ec6d87f83ac7e9efe92"),
    (32, "red boxes on a checkered floor", 7, "02c795c1c00bfebd5ef49153fcd4fe95dc2bc5e9398de8ff41216ee88148ef54"),
    (32, "polka dots donut", 24, "1f57a5c0a35414a3d77eb77e781b89cb61db333619c0d7a83439d4bf7145b5c9"),
    (48, "Ünïcode café 東京", 3, "edaf38b54a9c6a80cb834b54af19feca41b236bffc6517da2a27627e24a5e52f"),
]


@pytest.mark.parametrize("size, caption, seed, digest", PINNED)
def test_pixels_are_pinned(size, caption, seed, digest):
    image = ProceduralGenerator(size).generate([caption], [[seed]])[0][0]
    assert hashlib.sha256(image.tobytes()).hexdigest() == digest


def test_png_round_trip_is_lossless(tmp_path):
    image = ProceduralGenerator().generate(["sunset stripes"], [[3]])[0][0]
    image.save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").tobytes() == image.tobytes()


def test_keywords_and_synonyms_fix_attributes():
    assert caption_attributes("Boxes floating on the OCEAN, polka pattern") == {
        "palette": "ocean",
        "shape": "square",
        "texture": "dots",
    }
    assert caption_attributes("a sunset over mountains in the sky")["palette"] == "sunset"
    assert caption_attributes("a sunset over mountains in the sky")["shape"] == "triangle"
    assert caption_attributes("a sunset over mountains in the sky")["texture"] == "gradient"
    # the first keyword of an attribute wins
    assert caption_attributes("green then blue")["palette"] == "forest"
    assert caption_attributes("blue then green")["palette"] == "ocean"


def test_unknown_words_hash_stably_and_spread():
    assert caption_attributes("the quick brown fox")["shape"] == "star"
    assert caption_attributes("東京") == {"palette": "forest", "shape": "ring", "texture": "stripes"}
    assert caption_attributes("") == {"palette": "candy", "shape": "ring", "texture": "dots"}
    drawn = [caption_attributes(f"untitled photo {i}") for i in range(400)]
    for attribute, values in ATTRIBUTES.items():
        assert {d[attribute] for d in drawn} == set(values)
    # case and punctuation do not change a caption's set
    assert caption_attributes("Untitled, photo 3!") == caption_attributes("untitled photo 3")


def test_same_caption_and_seed_give_the_same_image_and_seeds_differ():
    a, b = ProceduralGenerator(), ProceduralGenerator()
    seeds = list(range(25))
    first = a.generate(["stone crosses"], [seeds])[0]
    second = b.generate(["stone crosses"], [seeds])[0]
    assert [i.tobytes() for i in first] == [i.tobytes() for i in second]
    assert len({i.tobytes() for i in first}) == 25


def test_a_set_shares_its_palette_and_the_caption_is_mixed_into_the_instance():
    obj, a, _ = PALETTES["night"]
    images = ProceduralGenerator().generate(["night circles plain"], [list(range(10))])[0]
    for image in images:
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours == {obj, a}
    other = ProceduralGenerator().render("ocean circles plain", 0)
    assert instance_rng("night circles plain", 0).random() != instance_rng("ocean circles plain", 0).random()
    assert other.tobytes() != np.asarray(images[0]).tobytes()


def test_palettes_are_far_apart():
    colours = [(name, np.asarray(c, dtype=float)) for name, palette in PALETTES.items() for c in palette]
    for (name_a, a), (name_b, b) in itertools.combinations(colours, 2):
        assert np.linalg.norm(a - b) >= (80 if name_a == name_b else 70), (name_a, name_b)


def test_objects_are_inside_and_apart():
    counts = set()
    for seed in range(200):
        objects = draw_objects(np.random.default_rng(seed))
        asked = int(np.random.default_rng(seed).integers(1, 4))  # draw_objects' first draw: how many
        assert 1 <= len(objects) <= asked  # an object that finds no free place is left out, never added
        counts.add(len(objects))
        for cx, cy, r, cos, sin in objects:
            assert r <= cx <= 1 - r and r <= cy <= 1 - r
            assert cos * cos + sin * sin == pytest.approx(1.0)
        for (x1, y1, r1, *_), (x2, y2, r2, *_) in itertools.combinations(objects, 2):
            assert np.hypot(x1 - x2, y1 - y2) >= r1 + r2 + OBJECT_GAP - 1e-12
    assert counts == {1, 2, 3}


@pytest.mark.parametrize("size", [8, 17, 64])
def test_any_size_gives_rgb_images(size):
    sets = ProceduralGenerator(size).generate(["a", "b"], [[0, 1], [2]])
    assert [len(s) for s in sets] == [2, 1]
    assert all(i.mode == "RGB" and i.size == (size, size) for s in sets for i in s)


def test_settings_record_what_fixes_the_output():
    settings = ProceduralGenerator(24).settings()
    assert settings["image_size"] == 24 and settings["version"]
    assert settings["attributes"]["shape"] == list(ATTRIBUTES["shape"])


def test_bad_input_is_refused():
    generator = ProceduralGenerator()
    with pytest.raises(ValueError, match="2 captions but 1 seed lists"):
        generator.generate(["a", "b"], [[0]])
    with pytest.raises(ValueError, match="non-negative integer"):
        generator.generate(["a"], [[-1]])
    with pytest.raises(ValueError, match="non-negative integer"):
        generator.generate(["a"], [[1.5]])
    with pytest.raises(ValueError, match="at least 8"):
        ProceduralGenerator(4)
