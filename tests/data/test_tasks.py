"""What the task readers share: image loading, atomic PNGs, item folders, how an item's images are drawn."""

import numpy as np
import pytest
import torch
from PIL import Image

from m2m.data.tasks import TaskDataset, item_folders, load_image, save_png


def test_load_image_scales_to_minus_one_one_and_resizes(tmp_path):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 128)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tensor = load_image(tmp_path / "a.png")
    assert tensor.shape == (3, 4, 6) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1.0], abs=1e-6)
    assert tensor[:, 1, 1].tolist() == [-1.0, -1.0, -1.0]
    assert load_image(tmp_path / "a.png", image_size=8).shape == (3, 8, 8)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        load_image(tmp_path / "bad.png")


def test_save_png_leaves_no_temporary_file(tmp_path):
    save_png(np.full((3, 3, 3), 7, dtype=np.uint8), tmp_path / "x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert np.asarray(Image.open(tmp_path / "x.png")).max() == 7


def test_item_folders_sorted_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="task-data folder not found"):
        item_folders(tmp_path / "nope")
    with pytest.raises(ValueError, match="no item folders"):
        item_folders(tmp_path)
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert [p.name for p in item_folders(tmp_path)] == ["a", "b"]


def test_window_start_first_random_and_reproducible():
    first = TaskDataset(3, "first", None)
    assert first._start(12, wrap=True) == 0
    random = TaskDataset(3, "window", None)
    torch.manual_seed(0)
    starts = [random._start(5, wrap=False) for _ in range(200)]
    assert set(starts) == {0, 1, 2}
    torch.manual_seed(0)
    assert [random._start(5, wrap=False) for _ in range(200)] == starts
    assert set(random._start(5, wrap=True) for _ in range(200)) == {0, 1, 2, 3, 4}


def test_windows_are_consecutive_and_wrap_only_when_unordered():
    window = TaskDataset(3, "window", None)
    torch.manual_seed(0)
    wrapped = {tuple(window._choose(4, ordered=False)) for _ in range(200)}
    assert wrapped == {(0, 1, 2), (1, 2, 3), (2, 3, 0), (3, 0, 1)}
    assert {tuple(window._choose(4, ordered=True)) for _ in range(200)} == {(0, 1, 2), (1, 2, 3)}
    assert TaskDataset(3, "first", None)._choose(4, ordered=False) == [0, 1, 2]


def test_subsets_are_distinct_images_shuffled_unless_ordered():
    subset = TaskDataset(3, "subset", None)
    torch.manual_seed(0)
    shuffled = [tuple(subset._choose(6, ordered=False)) for _ in range(2000)]
    assert all(len(set(c)) == 3 and set(c) <= set(range(6)) for c in shuffled)
    assert any(list(c) != sorted(c) for c in shuffled)  # any order, e.g. a later view first
    assert len(set(shuffled)) == 6 * 5 * 4  # every ordered triple of 6 images occurs
    ordered = [tuple(subset._choose(6, ordered=True)) for _ in range(300)]
    assert all(list(c) == sorted(c) for c in ordered)
    assert len(set(ordered)) == 20  # every 3 of 6, gaps included
    torch.manual_seed(0)
    assert [tuple(subset._choose(6, ordered=False)) for _ in range(2000)] == shuffled


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="n_images must be at least 1"):
        TaskDataset(0, "first", None)
    with pytest.raises(ValueError, match="sample must be one of"):
        TaskDataset(2, "all", None)
