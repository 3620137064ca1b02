"""benchmarks/learning/judge.py and bench_judge.py: balanced held-out sets, intervals, s = 1 and s = 2."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from learning.judge import (  # noqa: E402
    MIN_SETS,
    PROTOCOLS,
    balanced_captions,
    bootstrap,
    heldout_mis,
    judge_images,
    read_heldout,
    statistics,
)

from m2m.data.procedural import SHAPES, caption_attributes  # noqa: E402


@pytest.mark.parametrize("name, sets", [("six-kind", 120), ("two-kind", 80), ("kind-only", 64)])
def test_every_protocol_scores_at_least_64_sets_with_every_value_equally_often(name, sets):
    protocol = PROTOCOLS[name]
    assert protocol.set_count() == sets >= MIN_SETS
    captions = balanced_captions(protocol, sets)
    read = [caption_attributes(c) for c in captions]  # what the generator makes of each caption
    for attribute, values in protocol.values().items():
        counts = Counter(r[attribute] for r in read)
        assert set(counts) == set(values) and set(counts.values()) == {sets // len(values)}, attribute
    assert len(set(captions)) == sets


def test_the_attributes_are_shuffled_apart():
    """Balanced columns that moved in step (palette i with shape i) would confound one with the other."""
    read = [caption_attributes(c) for c in balanced_captions(PROTOCOLS["six-kind"], 120)]
    pairs = Counter((r["palette"], r["shape"]) for r in read)
    assert len(pairs) > 30  # of 48 combinations; lockstep columns would give at most 8


def test_an_uneven_count_is_refused():
    with pytest.raises(ValueError, match="cannot hold every value equally often"):
        balanced_captions(PROTOCOLS["two-kind"], 64)


@pytest.mark.slow
def test_the_heldout_mis_holds_the_balanced_sets_no_training_set_shares(tmp_path):
    from bench_learning import build_training_mis

    protocol = PROTOCOLS["kind-only"]
    mis = heldout_mis(tmp_path / "heldout", protocol, n_sets=4)
    held = read_heldout(mis, 32, generate=1)
    assert held.context.shape == (4, 4, 3, 32, 32) and held.following.shape == (4, 1, 3, 32, 32)
    assert Counter(a["shape"] for a in held.attributes) == {"circle": 2, "square": 2}
    assert json.loads((mis / "manifest.json").read_text())["split"] == {"train": 0, "test": 4}
    train = build_training_mis(tmp_path / "train", 4, shapes=protocol.shapes, palettes=protocol.palettes,
                               textures=protocol.textures)
    ids = [set(pq.read_table(root / "captions.parquet")["id"].to_pylist()) for root in (mis, train)]
    assert len(ids[0]) == 4 and not ids[0] & ids[1]  # other caption ids: other image seeds


def test_the_numbers_are_the_consistency_modules_on_one_image_per_set():
    from m2m.evaluation.consistency import kind_contrast

    rng = np.random.default_rng(0)
    kinds = np.repeat([0, 1, 2], 4)
    fits = rng.uniform(size=(12, len(SHAPES)))
    rows = {"palette": rng.integers(0, 2, 12).astype(float), "shape": np.zeros(12), "texture": np.ones(12),
            "fits": fits}
    numbers = statistics({k: v[None] for k, v in rows.items()}, kinds)
    as_dicts = [dict(zip(SHAPES, f)) for f in fits]
    assert numbers["kind_contrast"][0] == pytest.approx(kind_contrast(as_dicts, [SHAPES[k] for k in kinds]))
    assert numbers["score"][0] == pytest.approx((rows["palette"].mean() + 0 + 1) / 3)


def test_sets_are_resampled_within_their_kind():
    """A shape score that is 1 in every circle set and 0 in every square set is 0.5 in every resample that
    keeps the balanced design; resampling across kinds would spread it."""
    kinds = np.repeat([0, 1], 32)
    rows = {"palette": np.ones(64), "shape": (kinds == 0).astype(float), "texture": np.ones(64),
            "fits": np.zeros((64, len(SHAPES)))}
    shape = bootstrap(rows, kinds)["shape"]
    assert shape == {"value": 0.5, "low": 0.5, "high": 0.5}


def test_an_interval_holds_the_value_and_narrows_with_more_sets():
    rng = np.random.default_rng(1)

    def width(n):
        kinds = np.repeat([0, 1], n // 2)
        rows = {a: rng.integers(0, 2, n).astype(float) for a in ("palette", "shape", "texture")}
        rows["fits"] = rng.uniform(size=(n, len(SHAPES)))
        numbers = bootstrap(rows, kinds)
        assert all(v["low"] <= v["value"] <= v["high"] for v in numbers.values())
        return numbers["score"]["high"] - numbers["score"]["low"]

    assert 0 < width(256) < width(16)


@pytest.mark.slow
def test_the_sets_own_images_score_one_and_a_positive_kind_contrast(tmp_path):
    mis = heldout_mis(tmp_path / "heldout", PROTOCOLS["kind-only"], n_sets=8)
    held = read_heldout(mis, 32, generate=2)
    numbers = judge_images(held.following, held.attributes)
    assert numbers["sets"] == 8 and numbers["images_per_set"] == 2
    assert numbers["shape"]["value"] == numbers["palette"]["value"] == 1.0
    assert numbers["kind_contrast"]["low"] > 0.1
    swapped = judge_images(held.following.flip(0), held.attributes)  # every set's images under another's
    assert swapped["shape"]["value"] < 1.0


@pytest.mark.slow
def test_bench_judge_scores_a_model_at_s_1_and_2_and_resumes(tmp_path, monkeypatch):
    import bench_judge
    from learning import report

    from m2m.build import build_pipeline

    folder = tmp_path / "m2m-self"
    build_pipeline("tiny", "self", seed=0).save_pretrained(folder, safe_serialization=True)
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(bench_judge, "RESULTS", tmp_path)
    argv = ["--models", str(folder), "--protocol", "kind-only", "--label", "t", "--sets", "2", "--smoke",
            "--generate", "1", "--steps", "1", "--work", str(tmp_path / "work"), "--threads", "1"]
    assert bench_judge.main(argv) == 0
    first = json.loads((tmp_path / "judge_t.json").read_text())
    assert set(first["rows"]["m2m-self"]) == {"s = 1", "s = 2"}
    assert "kind_contrast" in first["rows"]["m2m-self"]["s = 1"]
    calls = []
    monkeypatch.setattr(bench_judge, "judge", lambda *a, **k: calls.append(a))
    assert bench_judge.main(argv) == 0
    assert calls == []  # the model scored under the same protocol is not scored again
    with pytest.raises(SystemExit):
        bench_judge.main([a for a in argv if a != "--smoke"])  # 2 sets: below the bar without --smoke


@pytest.mark.slow
def test_the_detector_reads_the_same_in_worker_processes(tmp_path):
    from learning.judge import per_set

    mis = heldout_mis(tmp_path / "heldout", PROTOCOLS["kind-only"], n_sets=4)
    held = read_heldout(mis, 32, generate=2)
    noisy = (held.following + 0.2 * torch.randn_like(held.following)).clamp(0, 1)  # not every image clean
    one, two = per_set(noisy, held.attributes), per_set(noisy, held.attributes, workers=2)
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)


@pytest.mark.slow
def test_a_heldout_mis_of_other_captions_is_made_afresh(tmp_path):
    protocol = PROTOCOLS["kind-only"]
    root = tmp_path / "heldout"
    heldout_mis(root, protocol, n_sets=2, seed=0)
    again = read_heldout(heldout_mis(root, protocol, n_sets=2, seed=2), 32, generate=1)  # other captions than seed 0
    fresh = read_heldout(heldout_mis(tmp_path / "fresh", protocol, n_sets=2, seed=2), 32, generate=1)
    assert torch.equal(again.context, fresh.context)
