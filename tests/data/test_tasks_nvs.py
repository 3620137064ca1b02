"""Objaverse-style novel-view data: fixture, cameras, reader and its errors."""

import hashlib
import json

import numpy as np
import pytest
import torch

from m2m.data.tasks_nvs import (
    NVSDataset,
    camera_azimuth,
    draw_object,
    orbit_cameras,
    read_cameras,
    render_view,
    write_nvs_fixture,
)


@pytest.fixture()
def fixture_root(tmp_path):
    write_nvs_fixture(tmp_path / "nvs", 3, image_size=16, seed=0)
    return tmp_path / "nvs"


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()


def test_orbit_cameras_circle_the_object_and_look_at_it():
    cameras = orbit_cameras()
    assert [camera_azimuth(c) for c in cameras] == pytest.approx(np.arange(0, 360, 30))
    for c2w in cameras:
        rotation, centre = c2w[:3, :3], c2w[:3, 3]
        assert rotation.T @ rotation == pytest.approx(np.eye(3))
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        # the camera looks along its -z axis, straight at the origin
        assert -rotation[:, 2] == pytest.approx(-centre / np.linalg.norm(centre))
        assert centre[2] / np.linalg.norm(centre) == pytest.approx(12 / 37)


def test_the_view_follows_the_camera():
    """Seeing the object from 30 degrees further round equals seeing it turned by -30 degrees."""
    obj = draw_object(np.random.default_rng(4))
    turn = np.deg2rad(-30.0)
    rz = np.array([[np.cos(turn), -np.sin(turn), 0.0], [np.sin(turn), np.cos(turn), 0.0], [0.0, 0.0, 1.0]])
    turned = {**obj, "satellites": [[*(rz @ np.asarray(s[:3])), s[3]] for s in obj["satellites"]]}
    cameras = orbit_cameras()
    for k in range(12):
        later = render_view(obj, cameras[(k + 1) % 12], 32).astype(int)
        assert np.abs(later - render_view(turned, cameras[k], 32)).max() <= 1
        assert np.abs(later - render_view(obj, cameras[k], 32)).max() > 50


def test_fixture_layout_and_determinism(fixture_root, tmp_path):
    folders = sorted(p.name for p in fixture_root.iterdir())
    assert folders == ["object-00000", "object-00001", "object-00002"]
    names = sorted(p.name for p in (fixture_root / folders[0]).iterdir())
    assert names == [f"{k:03d}.png" for k in range(12)] + ["cameras.json", "object.json"]
    write_nvs_fixture(tmp_path / "again", 3, image_size=16, seed=0)
    assert _digest(tmp_path / "again") == _digest(fixture_root)
    write_nvs_fixture(tmp_path / "other", 3, image_size=16, seed=1)
    assert _digest(tmp_path / "other") != _digest(fixture_root)


def test_reader_items(fixture_root):
    dataset = NVSDataset(fixture_root, n_images=5, sample="first")
    item = dataset[1]
    assert len(dataset) == 3 and item["id"] == "object-00001"
    assert item["images"].shape == (5, 3, 16, 16) and item["images"].dtype == torch.float32
    assert -1.0 <= item["images"].min() and item["images"].max() <= 1.0
    expected = torch.from_numpy(orbit_cameras()[:5, :3, :4].reshape(5, 12)).float()
    assert torch.equal(item["cond"], expected)
    resized = NVSDataset(fixture_root, n_images=2, sample="first", image_size=24)[0]
    assert resized["images"].shape == (2, 3, 24, 24)


def test_random_windows_wrap_round_the_orbit(fixture_root):
    dataset = NVSDataset(fixture_root, n_images=12, sample="window")
    torch.manual_seed(1)
    azimuths = [camera_azimuth(c) for c in dataset[0]["cond"].numpy()]
    steps = np.diff(azimuths) % 360
    assert steps == pytest.approx(np.full(11, 30.0))


def test_random_subsets_pair_each_view_with_its_camera(fixture_root):
    views = NVSDataset(fixture_root, n_images=12, sample="first")[0]
    dataset = NVSDataset(fixture_root, n_images=4)  # training's default: any 4 views, in any order
    torch.manual_seed(0)
    for _ in range(5):
        item = dataset[0]
        chosen = [round(camera_azimuth(c) / 30) % 12 for c in item["cond"].numpy()]
        assert len(set(chosen)) == 4
        assert torch.equal(item["images"], views["images"][chosen])
        assert torch.equal(item["cond"], views["cond"][chosen])


def test_cameras_npy_3x4_reads_like_json(fixture_root):
    folder = fixture_root / "object-00000"
    from_json = read_cameras(folder)
    (folder / "cameras.json").unlink()
    np.save(folder / "cameras.npy", orbit_cameras()[:, :3, :])
    assert np.array_equal(read_cameras(folder), from_json)


@pytest.mark.parametrize(
    "break_it, error, message",
    [
        (lambda f: (f / "cameras.json").unlink(), FileNotFoundError, "no cameras.json or cameras.npy"),
        (lambda f: (f / "cameras.json").write_text("{oops"), ValueError, "cameras.json: not valid JSON"),
        (lambda f: (f / "cameras.json").write_text("[[1, 2]]"), ValueError, "camera 0 has shape \\(2,\\)"),
        (lambda f: (f / "cameras.json").write_text('[[["a"]]]'), ValueError, "camera 0 is not a matrix"),
        (lambda f: (f / "011.png").unlink(), ValueError, "11 views but 12 cameras"),
        (lambda f: (f / "003.png").unlink(), ValueError, "003.png is missing"),
        (lambda f: (f / "004.png").write_bytes(b"x"), None, None),
    ],
)
def test_bad_layouts_name_the_file(fixture_root, break_it, error, message):
    break_it(fixture_root / "object-00001")
    if error is None:  # a corrupt image is found when read, and named
        with pytest.raises(ValueError, match="004.png: not a readable image"):
            NVSDataset(fixture_root, n_images=12, sample="first")[1]
        return
    with pytest.raises(error, match=message):
        NVSDataset(fixture_root)


def test_bad_4x4_last_row(fixture_root):
    cameras = orbit_cameras()
    cameras[2, 3, 0] = 1.0
    (fixture_root / "object-00000" / "cameras.json").write_text(json.dumps(cameras.tolist()))
    with pytest.raises(ValueError, match="camera 2 is 4x4 but its last row"):
        NVSDataset(fixture_root)


def test_short_objects_are_skipped_and_counted(fixture_root):
    with pytest.warns(UserWarning, match="fewer than n_images=13"), pytest.raises(ValueError, match="no object"):
        NVSDataset(fixture_root, n_images=13)
    folder = fixture_root / "object-00002"
    for k in range(6, 12):
        (folder / f"{k:03d}.png").unlink()
    (folder / "cameras.json").write_text(json.dumps(orbit_cameras()[:6].tolist()))
    with pytest.warns(UserWarning, match="object-00002: 6 images"):
        dataset = NVSDataset(fixture_root, n_images=8)
    assert len(dataset) == 2 and dataset.skipped == ["object-00002"]
