"""Consistency scores: does a generated image belong to its set? Exact on procedural data.

- MIS sets (section 4): the generated image's shared attributes (palette, shape, texture), read back by the
  generator's own detector, against the set's.
- Novel views (section 8.5.1): the generated view shows the same object (palette) and its rotation follows
  the camera — the nearest of the object's reference views lies at the target camera's azimuth.
- Procedures (section 8.5.2): the generated step shows the same scene (palette, shape) at the expected
  progress.

Each function is pure: images (PIL, uint8 ``(H, W, 3)`` or float ``(3, H, W)`` in [-1, 1]) and
attribute dicts in, fractions in ``[0, 1]`` out, with ``score`` their mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from m2m.data.procedural import ATTRIBUTES
from m2m.data.procedural_detect import (
    as_rgb_array,
    detect_attributes,
    detect_palette,
    detect_shape,
    shape_fits,
    split_object,
)
from m2m.data.tasks_nvs import camera_azimuth
from m2m.data.tasks_procedure import detect_progress, split_scene


def _per_image(reference_attrs: dict | Sequence[dict], count: int) -> list[dict]:
    references = [reference_attrs] * count if isinstance(reference_attrs, dict) else list(reference_attrs)
    if len(references) != count:
        raise ValueError(f"got {count} images but {len(references)} reference attribute dicts")
    return references


def _with_score(fractions: dict[str, float], count: int) -> dict:
    return {**fractions, "score": float(np.mean(list(fractions.values()))), "n_images": count}


def set_consistency(generated_images, reference_attrs: dict | Sequence[dict]) -> dict:
    """Per-attribute agreement of generated images with their sets' attributes, and ``score``, the mean.

    ``reference_attrs`` is one dict for all images (one set) or one per image (``{"palette", "shape",
    "texture"}``, as ``ProceduralGenerator.attributes`` gives).
    """
    images = list(generated_images)
    if not images:
        raise ValueError("set_consistency needs at least one generated image")
    references = _per_image(reference_attrs, len(images))
    hits = Counter()
    for image, reference in zip(images, references, strict=True):
        detected = detect_attributes(image)
        for attribute in ATTRIBUTES:
            if attribute not in reference:
                raise ValueError(f"reference attributes lack {attribute!r}: {reference}")
            hits[attribute] += detected[attribute] == reference[attribute]
    return _with_score({a: hits[a] / len(images) for a in ATTRIBUTES}, len(images))


def shape_fit(generated_images, reference_attrs: dict | Sequence[dict]) -> float:
    """Mean fit of each generated image's objects to its set's shape (area-weighted IoU with the shape's
    rasterisation, in [0, 1]), the objects split off as the detector does. A diagnostic beside the
    score, not part of it: it rises before the detector accepts a shape at ``MIN_SHAPE_FIT``."""
    return set_shape_fits(generated_images, reference_attrs)["shape_fit"]


def set_shape_fits(generated_images, reference_attrs: dict | Sequence[dict]) -> dict:
    """``shape_fit`` (the fit to each set's own shape) and ``any_shape_fit`` (the fit to whichever shape
    kind fits each image's objects best: is a clean shape drawn at all?), from one pass over the objects;
    ``shape_fit_by_kind``: ``shape_fit`` of the images of each shape kind the sets have (is one kind drawn
    and the others not, or none?).

    Where the sets have two kinds or more, ``kind_contrast``: is the kind read from the set? For each
    kind k, the fit to k of the images of k's sets minus the fit to k of the images of the other sets,
    averaged over the kinds. 0 when a model draws the same objects whatever the set's kind (a blob that
    fits a square as well in every set); 0.38 for the held-out images of the six-kind MIS of the
    benchmarks, 0.21 for circles against squares alone (a circle fits a square better than a star does)."""
    images = list(generated_images)
    if not images:
        raise ValueError("shape_fit needs at least one generated image")
    references = _per_image(reference_attrs, len(images))
    fits = [object_shape_fits(image) for image in images]
    own = [(ref["shape"], fit[ref["shape"]]) for fit, ref in zip(fits, references)]
    kinds = sorted({kind for kind, _ in own})
    result = {
        "shape_fit": float(np.mean([value for _, value in own])),
        "any_shape_fit": float(np.mean([max(fit.values()) for fit in fits])),
        "shape_fit_by_kind": {k: float(np.mean([value for kind, value in own if kind == k])) for k in kinds},
    }
    if len(kinds) > 1:
        result["kind_contrast"] = kind_contrast(fits, [kind for kind, _ in own])
    return result


def kind_contrast(fits: Sequence[dict[str, float]], kinds: Sequence[str]) -> float:
    """``kind_contrast`` of ``set_shape_fits`` from each image's fits (``object_shape_fits``) and its set's
    shape kind; the images must come from sets of two kinds or more."""
    present = sorted(set(kinds))
    if len(present) < 2:
        raise ValueError(f"kind_contrast needs sets of two shape kinds or more, got {present}")
    return float(np.mean([
        np.mean([fit[k] for fit, kind in zip(fits, kinds) if kind == k])
        - np.mean([fit[k] for fit, kind in zip(fits, kinds) if kind != k])
        for k in present
    ]))


def object_shape_fits(image) -> dict[str, float]:
    """Each shape kind's fit to the image's objects, split off as the detector does (its palette first)."""
    rgb = as_rgb_array(image)
    object_mask, _ = split_object(rgb, detect_palette(rgb))
    return shape_fits(object_mask)


def chance_level(reference_attrs: Sequence[dict] | None = None) -> dict:
    """Agreement expected by chance, per attribute and ``score``.

    Without references: ``1 / number of classes`` (a uniform guess). With the reference sets' attributes:
    the empirical rate at which two sets drawn from them agree, ``sum_v p_v^2``.
    """
    if reference_attrs is None:
        return _with_score({a: 1.0 / len(values) for a, values in ATTRIBUTES.items()}, 0)
    references = list(reference_attrs)
    if not references:
        raise ValueError("chance_level needs at least one reference attribute dict")
    fractions = {}
    for attribute in ATTRIBUTES:
        counts = np.asarray(list(Counter(r[attribute] for r in references).values()), dtype=np.float64)
        fractions[attribute] = float(((counts / counts.sum()) ** 2).sum())
    return _with_score(fractions, 0)


def _angle_gap_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def nvs_consistency(
    generated_images,
    target_cameras: np.ndarray,
    reference_views,
    reference_cameras: np.ndarray,
    tolerance_deg: float = 15.0,
) -> dict:
    """Novel views: ``object`` (palette as in the reference views) and ``rotation`` (the nearest reference
    view, by pixel distance, lies within ``tolerance_deg`` of the target camera's azimuth).

    Cameras are camera-to-world ``(V, 3, 4)``/``(V, 4, 4)`` or flattened ``(V, 12)``. With the fixture's
    12 views 30 degrees apart, the default tolerance asks for the exact view (chance 1/12).
    """
    images = [as_rgb_array(image) for image in generated_images]
    references = [as_rgb_array(view) for view in reference_views]
    targets = [camera_azimuth(c) for c in np.asarray(target_cameras, dtype=np.float64)]
    azimuths = [camera_azimuth(c) for c in np.asarray(reference_cameras, dtype=np.float64)]
    if not images or len(images) != len(targets):
        raise ValueError(f"got {len(images)} generated views but {len(targets)} target cameras")
    if not references or len(references) != len(azimuths):
        raise ValueError(f"got {len(references)} reference views but {len(azimuths)} reference cameras")
    if any(image.shape != references[0].shape for image in images + references):
        raise ValueError("generated and reference views must all have the same size")
    palette = Counter(detect_palette(view) for view in references).most_common(1)[0][0]
    stack = np.stack(references).astype(np.float64)
    object_hits = rotation_hits = 0
    for image, target in zip(images, targets, strict=True):
        object_hits += detect_palette(image) == palette
        nearest = int(((stack - image.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)).argmin())
        rotation_hits += _angle_gap_deg(azimuths[nearest], target) <= tolerance_deg
    return _with_score({"object": object_hits / len(images), "rotation": rotation_hits / len(images)}, len(images))


def procedure_consistency(
    generated_images, steps: Sequence[int], n_steps: int, reference_attrs: dict, tolerance: int = 0
) -> dict:
    """Procedures: ``palette`` and ``shape`` as the method's, and ``progress`` (the step read from the fill
    level within ``tolerance`` steps of the expected 1-based ``steps``)."""
    images = list(generated_images)
    if not images or len(images) != len(steps):
        raise ValueError(f"got {len(images)} generated steps but {len(steps)} step indices")
    hits = Counter()
    for image, step in zip(images, steps, strict=True):
        palette = detect_palette(image)
        hits["palette"] += palette == reference_attrs["palette"]
        filled, unfilled = split_scene(image, reference_attrs["palette"])
        hits["shape"] += detect_shape(filled | unfilled) == reference_attrs["shape"]
        read = min(max(round(detect_progress(filled, unfilled) * n_steps), 1), n_steps)
        hits["progress"] += abs(read - int(step)) <= tolerance
    return _with_score({k: hits[k] / len(images) for k in ("palette", "shape", "progress")}, len(images))
