"""The judge of the learning benchmarks: balanced held-out sets, per-set scores and bootstrap intervals.

What it keeps from the proof of learning: K = 4 preceding images, M generated images per set (DDIM, the
window W = K), and the procedural generator's own detector with its thresholds
(``m2m.data.procedural_detect``) reading palette, shape and texture back; the score is their mean, and the
kind contrast (``m2m.evaluation.consistency.kind_contrast``) says whether the shape kind is read from the
set. What it changes, and why (docs/evaluation.md, "The judge"):

- held-out sets made for the judge, balanced: every shape kind, palette and texture the protocol scores
  appears in the same number of sets (the sample captions' test split of the kind-only MIS had 24
  squares to 8 circles, so a model drawing squares everywhere scored shape 0.72);
- at least ``MIN_SETS`` sets, and a bootstrap 95% interval on every number (sets resampled within their
  shape kind, the set being the unit: its images share one context);
- every model at s = 1 and s = 2 (eq. 6): the tiny preset's own s is 1, and the kind contrast of the
  kind-only pilots rose at s = 2.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learning.common import PRECEDING

MIN_SETS = 64
GUIDANCE_SCALES = (1.0, 2.0)
RESAMPLES = 1000
CONFIDENCE = 0.95
SCORED = ("palette", "shape", "texture")


@dataclass(frozen=True)
class Protocol:
    """The attribute values a protocol's held-out sets take (empty: all the generator has)."""

    name: str
    shapes: tuple[str, ...] = ()
    palettes: tuple[str, ...] = ()
    textures: tuple[str, ...] = ()

    def values(self) -> dict[str, tuple[str, ...]]:
        from m2m.data.procedural import PALETTES, SHAPES, TEXTURES

        return {"palette": self.palettes or tuple(PALETTES), "shape": self.shapes or SHAPES,
                "texture": self.textures or TEXTURES}

    def set_count(self, at_least: int = MIN_SETS) -> int:
        """The smallest number of sets, at least ``at_least``, in which every value of every attribute
        appears equally often."""
        step = math.lcm(*(len(v) for v in self.values().values()))
        return step * math.ceil(at_least / step)


PROTOCOLS = {p.name: p for p in (
    Protocol("six-kind"),
    Protocol("two-kind", shapes=("circle", "square")),
    Protocol("kind-only", shapes=("circle", "square"), palettes=("ocean",), textures=("plain",)),
)}


def balanced_captions(protocol: Protocol, n_sets: int, seed: int = 0) -> list[str]:
    """``n_sets`` captions ``"<palette> <shape> <texture> heldout <serial>"``: each attribute's values
    repeated equally often and shuffled on their own (seeded), so every marginal count is equal and the
    attributes are not tied to one another. ``n_sets`` must be a multiple of every attribute's count."""
    values = protocol.values()
    uneven = {a: len(v) for a, v in values.items() if n_sets % len(v)}
    if uneven:
        raise ValueError(f"{protocol.name}: {n_sets} sets cannot hold every value equally often ({uneven})")
    rng = np.random.default_rng(seed)
    columns = {a: rng.permutation(np.repeat(np.asarray(v), n_sets // len(v))) for a, v in values.items()}
    return [f"{columns['palette'][i]} {columns['shape'][i]} {columns['texture'][i]} heldout {i:06d}"
            for i in range(n_sets)]


def heldout_root(work: Path, protocol: Protocol, n_sets: int) -> Path:
    """Where a protocol's held-out MIS of ``n_sets`` sets lives under ``work``."""
    return work / f"{protocol.name}-{n_sets}"


def heldout_mis(root: Path, protocol: Protocol, n_sets: int | None = None, seed: int = 0) -> Path:
    """The protocol's balanced held-out MIS under ``root`` (every set in its test split; captions and
    caption ids no training MIS of the benchmarks uses, so no image of it was trained on). Kept on a
    rerun when its captions are the same."""
    from bench_learning import mis_from_captions

    n_sets = n_sets or protocol.set_count()
    captions = balanced_captions(protocol, n_sets, seed)
    text = "".join(f"https://example.org/heldout/{i}\t{c}\n" for i, c in enumerate(captions))
    root.mkdir(parents=True, exist_ok=True)
    tsv = root / "captions.tsv"
    if not (tsv.is_file() and tsv.read_text(encoding="utf-8") == text and (root / "manifest.json").is_file()):
        (root / "manifest.json").unlink(missing_ok=True)
        shutil.rmtree(root / "shards", ignore_errors=True)  # complete shards of other captions would be kept
        tsv.write_text(text, encoding="utf-8")
        mis_from_captions(root, tsv, test_percent=100)
    return root


@dataclass
class HeldOut:
    """The held-out sets as the judge reads them: context ``(S, K, 3, H, W)`` in [-1, 1], the real next
    ``M`` images of every set ``(S, M, 3, H, W)`` in [0, 1], and each set's attributes."""

    context: object
    following: object
    attributes: list[dict]


def read_heldout(mis: Path, image_size: int, generate: int) -> HeldOut:
    from m2m.evaluation.evaluate import preceding_images
    from m2m.evaluation.image_sets import read_mis_eval_sets

    sets, _ = read_mis_eval_sets(mis, "test", PRECEDING + generate, image_size)
    images = preceding_images(sets, PRECEDING + generate)
    return HeldOut(images[:, :PRECEDING], (images[:, PRECEDING:] + 1) / 2, [s.attributes for s in sets])


def read_set(images, reference: dict) -> tuple[list[float], list[float]]:
    """One set's share of images ``(M, H, W, 3)`` uint8 whose palette, shape and texture the detector reads
    as the set's (in ``SCORED`` order), and its images' mean fit to every shape kind (``SHAPES`` order)."""
    from m2m.data.procedural import SHAPES
    from m2m.data.procedural_detect import detect_attributes
    from m2m.evaluation.consistency import object_shape_fits

    hits, fits = np.zeros(len(SCORED)), np.zeros(len(SHAPES))
    for image in images:
        detected = detect_attributes(image)
        hits += [detected[a] == reference[a] for a in SCORED]
        fit = object_shape_fits(image)
        fits += [fit[k] for k in SHAPES]
    return list(hits / len(images)), list(fits / len(images))


def per_set(images, attributes: Sequence[dict], workers: int = 1) -> dict[str, np.ndarray]:
    """``read_set`` of every set of images ``(S, M, 3, H, W)`` in [0, 1], in ``workers`` processes (the
    detector is most of the judge's time once generation runs on a GPU)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from m2m.data.procedural_detect import as_rgb_array

    arrays = [np.stack([as_rgb_array(image * 2 - 1) for image in set_images]) for set_images in images]
    if workers > 1:  # spawned: the parent may hold a CUDA context, which a forked child must not touch
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            read = list(pool.map(read_set, arrays, attributes, chunksize=max(1, len(arrays) // (4 * workers))))
    else:
        read = [read_set(a, r) for a, r in zip(arrays, attributes, strict=True)]
    hits = np.asarray([h for h, _ in read])
    return {**{a: hits[:, i] for i, a in enumerate(SCORED)}, "fits": np.asarray([f for _, f in read])}


def statistics(rows: dict[str, np.ndarray], kinds: np.ndarray) -> dict[str, np.ndarray]:
    """The judge's numbers from per-set rows: ``rows[a]`` ``(R, S)`` for R resamples (or R = 1) of the
    S sets, ``rows["fits"]`` ``(R, S, shape kinds)``; ``kinds`` ``(S,)`` the index of each set's kind.

    The kind contrast is ``kind_contrast`` of the consistency module on set means (every set has the
    same number of images, so the mean over images is the mean over sets)."""
    out = {a: rows[a].mean(-1) for a in SCORED}
    out["score"] = np.mean([out[a] for a in SCORED], axis=0)
    own = np.take_along_axis(rows["fits"], kinds[None, :, None], -1)[..., 0]
    out["shape_fit"] = own.mean(-1)
    present = np.unique(kinds)
    if len(present) > 1:
        fits = rows["fits"]
        out["kind_contrast"] = np.mean([fits[:, kinds == k, k].mean(-1) - fits[:, kinds != k, k].mean(-1)
                                        for k in present], axis=0)
    return out


def bootstrap(rows: dict[str, np.ndarray], kinds: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Every number of ``statistics`` with its bootstrap ``CONFIDENCE`` percentile interval: the sets
    are resampled with replacement within their shape kind, so every resample keeps the balanced design
    (and the kind contrast's terms exist)."""
    rng = np.random.default_rng(seed)
    index = np.zeros((resamples, len(kinds)), dtype=int)
    for k in np.unique(kinds):
        members = np.flatnonzero(kinds == k)
        index[:, members] = rng.choice(members, size=(resamples, len(members)))
    point = statistics({a: v[None] for a, v in rows.items()}, kinds)
    resampled = statistics({a: v[index] for a, v in rows.items()}, kinds)
    tail = (1 - CONFIDENCE) / 2 * 100
    return {name: {"value": float(point[name][0]), "low": float(np.percentile(resampled[name], tail)),
                   "high": float(np.percentile(resampled[name], 100 - tail))} for name in point}


def judge_images(images, attributes: Sequence[dict], seed: int = 0, workers: int = 1) -> dict:
    """The judge's numbers with intervals for images ``(S, M, 3, H, W)`` in [0, 1] of sets with
    ``attributes``."""
    from m2m.data.procedural import SHAPES

    kinds = np.asarray([SHAPES.index(a["shape"]) for a in attributes])
    numbers = bootstrap(per_set(images, attributes, workers), kinds, seed=seed)
    return {"sets": len(attributes), "images_per_set": int(images.shape[1]), **numbers}


def judge(pipe, held: HeldOut, generate: int, steps: int, seed: int = 0, batch_size: int = 16,
          scales: Sequence[float] = GUIDANCE_SCALES, workers: int = 1) -> dict[str, dict]:
    """The model's numbers at every guidance scale s of eq. 6, keyed ``"s = <s>"``."""
    from m2m.evaluation.evaluate import generate_continuations

    results = {}
    for s in scales:
        generated = generate_continuations(pipe, held.context, generate, PRECEDING, steps, s, seed, batch_size)
        results[f"s = {s:g}"] = judge_images(generated, held.attributes, seed, workers)
    return results


def interval(number: dict) -> str:
    """``0.52 [0.47, 0.58]``."""
    return f"{number['value']:.2f} [{number['low']:.2f}, {number['high']:.2f}]"
