"""Consistency scores on procedural sets, novel-view and procedure fixtures."""

import json

import numpy as np
import pytest
from PIL import Image

from m2m.data.procedural import ProceduralGenerator
from m2m.data.tasks_nvs import write_nvs_fixture
from m2m.data.tasks_procedure import ProcedureDataset, write_procedure_fixture
from m2m.evaluation.consistency import (
    chance_level,
    kind_contrast,
    nvs_consistency,
    object_shape_fits,
    procedure_consistency,
    set_consistency,
    set_shape_fits,
    shape_fit,
)


def _set(caption, seeds=range(6)):
    generator = ProceduralGenerator()
    return generator.generate([caption], [list(seeds)])[0], generator.attributes(caption)


def test_a_set_agrees_with_its_own_attributes():
    images, reference = _set("ocean stars polka")
    assert set_consistency(images, reference) == {
        "palette": 1.0,
        "shape": 1.0,
        "texture": 1.0,
        "score": 1.0,
        "n_images": 6,
    }


def test_a_set_disagrees_with_other_attributes_per_attribute():
    images, _ = _set("ocean stars polka")
    result = set_consistency(images, {"palette": "forest", "shape": "star", "texture": "stripes"})
    assert (result["palette"], result["shape"], result["texture"]) == (0.0, 1.0, 0.0)
    assert result["score"] == pytest.approx(1 / 3)


def test_references_per_image_mix_sets():
    a, ref_a = _set("ocean stars polka", range(2))
    b, ref_b = _set("night boxes checker", range(2))
    assert set_consistency(a + b, [ref_a] * 2 + [ref_b] * 2)["score"] == 1.0
    assert set_consistency(a + b, [ref_b] * 2 + [ref_a] * 2)["score"] == 0.0


def test_shape_fit_is_high_for_the_sets_shape_lower_for_blurred_or_other_shapes_and_zero_without_objects():
    from PIL import ImageFilter

    images, reference = _set("ocean stars polka")
    clean = shape_fit(images, reference)
    assert clean >= 0.85
    assert shape_fit(images, {**reference, "shape": "ring"}) < clean - 0.3
    blurred = [image.filter(ImageFilter.GaussianBlur(1.2)) for image in images]
    assert 0.5 < shape_fit(blurred, reference) < 0.8  # rounded stars: most of the way to a fit ...
    assert set_consistency(blurred, reference)["shape"] == 0.0  # ... that the detector does not accept
    background = Image.new("RGB", images[0].size, (0, 40, 90))
    assert shape_fit([background], reference) == 0.0


def test_any_shape_fit_reads_the_best_kind_whatever_the_sets_shape():
    images, reference = _set("ocean stars polka")
    own = set_shape_fits(images, reference)
    wrong = set_shape_fits(images, {**reference, "shape": "ring"})
    assert own["any_shape_fit"] == pytest.approx(own["shape_fit"])  # the set's own shape fits its stars best
    assert wrong["any_shape_fit"] == own["any_shape_fit"] and wrong["shape_fit"] < own["shape_fit"] - 0.3


def test_the_shape_fit_is_also_read_per_kind():
    from PIL import ImageFilter

    stars, star_ref = _set("ocean stars polka")
    rings, ring_ref = _set("ocean rings polka")
    blurred = [image.filter(ImageFilter.GaussianBlur(1.2)) for image in rings]  # rings drawn badly
    fits = set_shape_fits(stars + blurred, [star_ref] * len(stars) + [ring_ref] * len(rings))
    by_kind = fits["shape_fit_by_kind"]
    assert set(by_kind) == {"star", "ring"}
    assert by_kind["star"] == pytest.approx(set_shape_fits(stars, star_ref)["shape_fit"])
    assert by_kind["ring"] == pytest.approx(set_shape_fits(blurred, ring_ref)["shape_fit"])
    assert by_kind["ring"] < by_kind["star"] - 0.1
    assert fits["shape_fit"] == pytest.approx((by_kind["star"] + by_kind["ring"]) / 2)  # equal counts


def test_the_kind_contrast_says_whether_the_objects_follow_the_sets_kind():
    stars, star_ref = _set("ocean stars polka")
    rings, ring_ref = _set("ocean rings polka")
    labels = [star_ref] * len(stars) + [ring_ref] * len(rings)
    followed = set_shape_fits(stars + rings, labels)
    assert followed["kind_contrast"] > 0.3  # stars for the star set, rings for the ring set
    star_fit = [object_shape_fits(image)["star"] for image in stars + rings]
    ring_fit = [object_shape_fits(image)["ring"] for image in stars + rings]
    n = len(stars)
    by_hand = (np.mean(star_fit[:n]) - np.mean(star_fit[n:]) + np.mean(ring_fit[n:]) - np.mean(ring_fit[:n])) / 2
    assert followed["kind_contrast"] == pytest.approx(by_hand)  # each kind against the other sets only
    ignored = set_shape_fits(stars + stars, labels)  # the same objects whatever the set's kind
    assert ignored["kind_contrast"] == pytest.approx(0.0, abs=1e-9)
    assert set_shape_fits(rings + stars, labels)["kind_contrast"] < -0.3  # each set drawn as the other
    assert "kind_contrast" not in set_shape_fits(stars, star_ref)  # one kind: nothing to contrast
    with pytest.raises(ValueError, match="two shape kinds"):
        kind_contrast([object_shape_fits(image) for image in stars], ["star"] * len(stars))


def test_bad_calls_are_refused():
    images, reference = _set("ocean stars polka", range(2))
    with pytest.raises(ValueError, match="2 images but 1 reference"):
        set_consistency(images, [reference])
    with pytest.raises(ValueError, match="at least one"):
        set_consistency([], reference)
    with pytest.raises(ValueError, match="lack 'texture'"):
        set_consistency(images, {"palette": "ocean", "shape": "star"})


def test_chance_level_uniform_and_empirical():
    uniform = chance_level()
    assert (uniform["palette"], uniform["shape"], uniform["texture"]) == (1 / 8, 1 / 6, 1 / 5)
    assert uniform["score"] == pytest.approx((1 / 8 + 1 / 6 + 1 / 5) / 3)
    refs = [{"palette": "ocean", "shape": s, "texture": "plain"} for s in ("star", "ring")]
    empirical = chance_level(refs)
    assert (empirical["palette"], empirical["shape"], empirical["texture"]) == (1.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def nvs_objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("nvs")
    objects = []
    for object_id in write_nvs_fixture(root, 2, 32, seed=3):
        views = [Image.open(root / object_id / f"{k:03d}.png") for k in range(12)]
        cameras = np.asarray(json.loads((root / object_id / "cameras.json").read_text()))
        objects.append((views, cameras))
    return objects


def test_nvs_true_views_are_consistent_and_shifted_cameras_are_not(nvs_objects):
    views, cameras = nvs_objects[0]
    assert nvs_consistency(views, cameras, views, cameras)["score"] == 1.0
    shifted = nvs_consistency(views, np.roll(cameras, 1, axis=0), views, cameras)
    assert (shifted["object"], shifted["rotation"]) == (1.0, 0.0)
    tolerant = nvs_consistency(views, np.roll(cameras, 1, axis=0), views, cameras, tolerance_deg=30.0)
    assert tolerant["rotation"] == 1.0
    flat = nvs_consistency(views, cameras.reshape(12, 16)[:, :12], views, cameras[:, :3])
    assert flat["score"] == 1.0


def test_nvs_another_object_is_not_the_object(nvs_objects):
    (views_a, cameras), (views_b, _) = nvs_objects
    assert nvs_consistency(views_b, cameras, views_a, cameras)["object"] == 0.0


def test_nvs_bad_calls_are_refused(nvs_objects):
    views, cameras = nvs_objects[0]
    with pytest.raises(ValueError, match="3 generated views but 12 target cameras"):
        nvs_consistency(views[:3], cameras, views, cameras)
    with pytest.raises(ValueError, match="same size"):
        nvs_consistency([views[0].resize((16, 16))], cameras[:1], views, cameras)


def test_procedure_steps_read_back_from_the_reader(tmp_path):
    write_procedure_fixture(tmp_path, 3, n_steps=6, image_size=32, seed=1)
    dataset = ProcedureDataset(tmp_path, n_images=6, sample="first")
    for index in range(len(dataset)):
        item = dataset[index]
        reference = json.loads((tmp_path / item["id"] / "method.json").read_text())["attributes"]
        steps = item["cond"].tolist()
        assert procedure_consistency(item["images"], steps, 6, reference)["score"] == 1.0
        reversed_ = procedure_consistency(item["images"], steps[::-1], 6, reference)
        assert (reversed_["palette"], reversed_["shape"], reversed_["progress"]) == (1.0, 1.0, 0.0)
        off_by_one = [min(s + 1, 6) for s in steps]
        assert procedure_consistency(item["images"], off_by_one, 6, reference, tolerance=1)["progress"] == 1.0
    with pytest.raises(ValueError, match="6 generated steps but 2 step indices"):
        procedure_consistency(item["images"], [1, 2], 6, reference)
