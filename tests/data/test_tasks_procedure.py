"""VGSI-style procedure data: fixture, progress, reader and its errors."""

import json

import numpy as np
import pytest
import torch

from m2m.data.tasks_procedure import (
    ProcedureDataset,
    detect_progress,
    draw_scene,
    render_step,
    split_scene,
    write_procedure_fixture,
)


@pytest.fixture()
def fixture_root(tmp_path):
    write_procedure_fixture(tmp_path / "proc", 3, n_steps=6, image_size=18, seed=0)
    return tmp_path / "proc"


def test_every_step_reads_back_its_progress():
    for seed in range(60):
        scene = draw_scene(np.random.default_rng(seed))
        for n_steps in (1, 4, 10):
            for step in range(1, n_steps + 1):
                filled, unfilled = split_scene(render_step(scene, step, n_steps, 32), scene["palette"])
                assert round(detect_progress(filled, unfilled) * n_steps) == step


def test_progress_grows_and_the_scene_stays():
    scene = draw_scene(np.random.default_rng(2))
    images = [render_step(scene, k, 6, 32) for k in range(1, 7)]
    filled = [split_scene(i, scene["palette"])[0].sum() for i in images]
    assert filled == sorted(filled) and filled[0] > 0 and len(set(filled)) == 6
    shapes = [np.logical_or(*split_scene(i, scene["palette"])) for i in images]
    assert all(np.array_equal(shapes[0], s) for s in shapes)
    assert detect_progress(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 0.0


def test_fixture_layout(fixture_root):
    folders = sorted(p.name for p in fixture_root.iterdir())
    assert folders == ["method-00000", "method-00001", "method-00002"]
    method = json.loads((fixture_root / folders[0] / "method.json").read_text())
    assert isinstance(method["goal"], str) and isinstance(method["method"], str)
    assert [s["index"] for s in method["steps"]] == [1, 2, 3, 4, 5, 6]
    assert all((fixture_root / folders[0] / s["image"]).is_file() for s in method["steps"])
    assert set(method["attributes"]) >= {"palette", "shape"}


def test_reader_items(fixture_root):
    item = ProcedureDataset(fixture_root, n_images=4, sample="first")[2]
    assert item["id"] == "method-00002"
    assert item["images"].shape == (4, 3, 18, 18)
    assert item["cond"].dtype == torch.long and item["cond"].tolist() == [1, 2, 3, 4]
    torch.manual_seed(0)
    dataset = ProcedureDataset(fixture_root, n_images=4, sample="window")
    windows = {tuple(dataset[0]["cond"].tolist()) for _ in range(50)}
    assert windows == {(1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6)}
    subsets = ProcedureDataset(fixture_root, n_images=4)  # training's default: any 4 steps, in order
    drawn = [subsets[0] for _ in range(100)]
    assert {tuple(item["cond"].tolist()) for item in drawn} >= {(1, 2, 4, 6), (1, 3, 5, 6)}
    assert all(item["cond"].tolist() == sorted(item["cond"].tolist()) for item in drawn)
    first_steps = ProcedureDataset(fixture_root, n_images=6, sample="first")[0]
    for item in drawn[:5]:  # each image is the step its condition names
        assert torch.equal(item["images"], first_steps["images"][item["cond"] - 1])


def _edit(path, change):
    method = json.loads(path.read_text())
    change(method)
    path.write_text(json.dumps(method))


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda m: m.pop("goal"), ValueError, "field 'goal' must be a string"),
        (lambda m: m.update(steps=[]), ValueError, "'steps' must be a non-empty list"),
        (lambda m: m["steps"][2].update(index=5), ValueError, "steps\\[2\\].index must be 3"),
        (lambda m: m["steps"][1].pop("text"), ValueError, "steps\\[1\\]: fields 'text' and 'image'"),
        (lambda m: m["steps"][0].update(image="gone.png"), FileNotFoundError, "steps\\[0\\].image: .*gone.png"),
    ],
)
def test_bad_methods_name_the_field(fixture_root, change, error, message):
    _edit(fixture_root / "method-00001" / "method.json", change)
    with pytest.raises(error, match=message):
        ProcedureDataset(fixture_root)


def test_missing_or_broken_method_json(fixture_root):
    (fixture_root / "method-00000" / "method.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="method-00000/method.json: not valid JSON"):
        ProcedureDataset(fixture_root)
    (fixture_root / "method-00000" / "method.json").unlink()
    with pytest.raises(FileNotFoundError, match="method-00000/method.json: method.json not found"):
        ProcedureDataset(fixture_root)


def test_short_methods_are_skipped(fixture_root):
    _edit(fixture_root / "method-00001" / "method.json", lambda m: m.update(steps=m["steps"][:3]))
    with pytest.warns(UserWarning, match="method-00001: 3 images"):
        dataset = ProcedureDataset(fixture_root, n_images=5)
    assert len(dataset) == 2 and dataset.skipped == ["method-00001"]


def test_too_many_steps_for_the_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_steps <= image_size // 3"):
        write_procedure_fixture(tmp_path, 1, n_steps=6, image_size=16)
