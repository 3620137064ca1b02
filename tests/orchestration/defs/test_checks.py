"""The checks' rules on real files: shard integrity, finite losses, metric ranges."""

from __future__ import annotations

import hashlib
import json

from orchestration.defs.checks import loss_problems, metric_problems, shard_problems


def write_dataset(folder, tampered: bool = False):
    shards = folder / "shards"
    shards.mkdir(parents=True)
    tar = shards / "mis-000000.tar"
    tar.write_bytes(b"sets" * 100)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    (shards / "mis-000000.json").write_text(json.dumps({"count": 2, "sha256": digest}))
    entries = [{"name": "mis-000000.tar", "count": 2, "sha256": digest},
               {"name": "mis-000001.tar", "count": 2, "sha256": "0" * 64}]
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"shards_dir": "shards", "shards": entries[: 2 if tampered else 1]}))
    if tampered:
        tar.write_bytes(b"sets" * 99)
    return manifest


def test_shards_matching_the_manifest_pass(tmp_path):
    assert shard_problems(write_dataset(tmp_path)) == (1, [])


def test_changed_or_missing_shards_are_named(tmp_path):
    count, problems = shard_problems(write_dataset(tmp_path, tampered=True))
    assert count == 2
    assert any("mis-000000.tar: sha256" in p and "but the manifest says" in p for p in problems)
    assert any(p.endswith("mis-000001.tar: missing") for p in problems)


def test_losses_must_be_finite_and_present(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("step,loss\n1,0.5\n2,0.25\n")
    assert loss_problems(good) == (2, [])
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n2,nan\n3,inf\n")
    rows, problems = loss_problems(bad)
    assert rows == 3 and len(problems) == 2 and "line 3 (step 2): loss 'nan'" in problems[0]
    empty = tmp_path / "empty.csv"
    empty.write_text("step,loss\n")
    assert loss_problems(empty)[1] == [f"{empty}: no rows"]
    assert loss_problems(tmp_path / "absent.csv")[1] == [f"{tmp_path / 'absent.csv'}: missing"]


def test_metrics_must_be_in_their_range(tmp_path):
    path = tmp_path / "metrics.json"
    good = {"fid": {"mean": 12.0, "std": 1.0}, "inception_score": {"mean": 1.0, "std": 0.0},
            "clip_image_image": {"mean": 80.0, "std": 2.0}, "consistency": {"mean": 0.5, "std": 0.1}}
    path.write_text(json.dumps({"summary": good}))
    assert metric_problems(path) == []
    bad = {**good, "fid": {"mean": -1.0, "std": 0.0}, "consistency": {"mean": 1.5, "std": -0.1},
           "other": {"mean": float("nan"), "std": 0.0}}
    path.write_text(json.dumps({"summary": bad}))
    problems = metric_problems(path)
    assert len(problems) == 4
    assert any("fid mean -1.0 outside [0, inf]" in p for p in problems)
    assert any("consistency std -0.1" in p for p in problems)
    assert any("other mean nan" in p for p in problems)
