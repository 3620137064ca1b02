"""The Table 1 loop, its report files and ``m2m evaluate`` on a tiny random M2M pipeline."""

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from m2m.cli import main
from m2m.data.captions import caption_id
from m2m.data.procedural import ProceduralGenerator
from m2m.data.shards import build_manifest, write_shard
from m2m.evaluation import evaluate as ev
from m2m.evaluation.features import load_feature_networks
from m2m.evaluation.image_sets import EvalSet
from m2m.build import build_pipeline

CAPTIONS = ["red circles on stripes", "ocean boxes polka", "forest stars gradient"]
SETTINGS = dict(preceding=2, generate=3, steps=2, guidance_scale=2.0, seed=0, batch_size=2)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("tiny", "self", seed=0)


@pytest.fixture(scope="module")
def networks():
    return load_feature_networks("tiny")


def procedural_sets(with_meta: bool = True) -> list[EvalSet]:
    generator = ProceduralGenerator(32)
    images = generator.generate(CAPTIONS, [[0, 1, 2]] * len(CAPTIONS))
    return [
        EvalSet(f"s{i}", row, caption if with_meta else None, generator.attributes(caption) if with_meta else None)
        for i, (caption, row) in enumerate(zip(CAPTIONS, images))
    ]


def test_evaluate_writes_table1_report(pipe, networks, tmp_path):
    sets = procedural_sets()
    report = ev.evaluate(pipe, tmp_path / "m2m-self", sets, {"path": "mis"}, networks, tmp_path, **SETTINGS)
    for name in ("metrics.json", "metrics.md", "per_position.csv", "per_position.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".tmp-*"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = saved["per_position"]
    assert [row["position"] for row in rows] == [1, 2, 3]
    for key in ("fid", "inception_score", "clip_text_image", "clip_image_image", "consistency"):
        values = [row[key] for row in rows]
        assert saved["summary"][key]["mean"] == pytest.approx(np.mean(values))
        assert saved["summary"][key]["std"] == pytest.approx(np.std(values))
    assert all(0 <= row["consistency"] <= 1 and row["fid"] >= 0 and row["inception_score"] >= 1 for row in rows)
    assert saved["feature_networks"]["label"] == "tiny feature net (not comparable to the paper)"
    assert saved["model"]["method"] == "M2M-Self (m2m-self)"
    assert saved["notes"] == []
    markdown = (tmp_path / "metrics.md").read_text()
    assert "tiny feature net (not comparable to the paper)" in markdown
    assert "| M2M-Self (m2m-self) | " in markdown and "Image-Image CLIP ↑" in markdown
    with open(tmp_path / "per_position.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[0]["fid"]) == pytest.approx(rows[0]["fid"])


def test_sets_without_captions_or_attributes_skip_those_metrics_with_notes(pipe, networks, tmp_path):
    sets = procedural_sets(with_meta=False)
    report = ev.evaluate(pipe, tmp_path / "m", sets, {"path": "x"}, networks, tmp_path, **SETTINGS)
    assert "clip_text_image" not in report["summary"] and "consistency" not in report["summary"]
    assert report["notes"] == [
        "text-image CLIP skipped: the sets have no captions",
        "consistency skipped: the sets carry no procedural attributes",
    ]
    assert "## Notes" in (tmp_path / "metrics.md").read_text()


def test_generation_is_seeded_per_set_whatever_the_batching(pipe):
    context = ev.preceding_images(procedural_sets(), 2)
    assert context.shape == (3, 2, 3, 32, 32) and context.min() >= -1 and context.max() <= 1
    first = ev.generate_continuations(pipe, context, 2, 2, 2, 2.0, seed=3, batch_size=2)
    assert first.shape == (3, 2, 3, 32, 32) and first.min() >= 0 and first.max() <= 1
    longer = ev.generate_continuations(pipe, context, 3, 2, 2, 2.0, seed=3, batch_size=3)
    assert torch.allclose(longer[:, :2], first, atol=1e-5)
    other = ev.generate_continuations(pipe, context, 2, 2, 2, 2.0, seed=4, batch_size=2)
    assert not torch.allclose(other, first, atol=1e-2)


def test_summarise_is_mean_and_population_std_over_positions():
    rows = [{"position": 1, "fid": 1.0, "inception_score": 2.0}, {"position": 2, "fid": 3.0, "inception_score": 2.0}]
    assert ev.summarise(rows) == {"fid": {"mean": 2.0, "std": 1.0}, "inception_score": {"mean": 2.0, "std": 0.0}}


def test_grid_is_preceding_then_generated_per_set():
    preceding = torch.zeros(3, 2, 3, 16, 16)
    generated = torch.full((3, 4, 3, 16, 16), 0.5)
    grid = ev.grid_image(preceding, generated)
    cell, pad, gap = 64 + 2, 2, 8  # 16 px images shown at 4x, 2 px padding, a wider gap after the context
    assert grid.size == (6 * cell + pad + gap, 3 * cell + pad)
    assert grid.getpixel((pad + cell + 5, pad + 5)) == (0, 0, 0)  # second preceding image, first set
    assert grid.getpixel((pad + 2 * cell + 2, pad + 5)) == (255, 255, 255)  # the gap
    assert grid.getpixel((pad + 2 * cell + gap + 5, pad + 2 * cell + 5)) == (128, 128, 128)  # generated, third set


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ev.write_atomic(path, broken)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_evaluate_needs_two_sets(pipe, networks, tmp_path):
    with pytest.raises(ValueError, match="1 usable set.*FID needs at least 2"):
        ev.evaluate(pipe, "m", procedural_sets()[:1], {"path": "x"}, networks, tmp_path, **SETTINGS)


@pytest.fixture
def model_dir(pipe, tmp_path):
    folder = tmp_path / "model"
    pipe.save_pretrained(folder)
    return folder


def test_cli_evaluates_a_folder_of_image_sets(model_dir, tmp_path, capsys):
    root = tmp_path / "photos"
    for s, row in zip(procedural_sets(), ProceduralGenerator(48).generate(CAPTIONS, [[5, 6, 7]] * 3)):
        (root / s.id).mkdir(parents=True)
        for i, image in enumerate(row):
            image.save(root / s.id / f"{i}.jpg")
    (root / "empty").mkdir()
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_dir), "--image-sets", str(root), "--out", str(out)]
    argv += ["--preceding", "2", "--generate", "2", "--steps", "2", "--num-sets", "3"]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["counts"]["used"] == 3 and report["data"]["counts"]["skipped_empty"] == 1
    assert report["data"]["counts"]["resized_images"] == 6  # 48x48 photos fitted to the model's 32x32
    assert len(report["per_position"]) == 2
    assert Image.open(out / "grid.png").size == (4 * 66 + 2 + 8, 3 * 66 + 2)  # 32 px shown at 2x
    assert "fid:" in capsys.readouterr().out


def test_cli_evaluates_the_mis_test_split_with_consistency(model_dir, tmp_path):
    mis = tmp_path / "mis"
    captions = [f"{caption} {i}" for i in range(3) for caption in CAPTIONS]
    rows = [{"id": caption_id(c), "caption": c, "n_tokens": 0} for c in captions]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "captions.parquet")
    write_shard(tmp_path / "captions.parquet", mis / "shards", 0, ProceduralGenerator(32), images_per_caption=4)
    manifest = build_manifest(mis / "shards", mis / "manifest.json", test_percent=50)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_dir), "--mis", str(mis), "--out", str(out), "--num-sets", "3"]
    assert main(argv + ["--preceding", "2", "--generate", "2", "--steps", "2"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["data"]["source"] == "mis" and report["data"]["split"] == "test"
    assert report["data"]["sets_used"] == min(3, manifest["split"]["test"])
    assert {"fid", "inception_score", "clip_text_image", "clip_image_image", "consistency"} <= set(report["summary"])


def test_cli_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--image-sets", str(tmp_path), "--out", "x"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["evaluate", "--model", str(model_dir), "--image-sets", str(tmp_path / "no"), "--out", "x"]) == 2
    assert "image-sets folder not found" in capsys.readouterr().err
    argv = ["evaluate", "--model", str(model_dir), "--image-sets", str(tmp_path), "--out", "x", "--generate", "0"]
    assert main(argv) == 2
    assert "--generate must be >= 1" in capsys.readouterr().err
