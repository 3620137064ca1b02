"""Damaged files and senseless values: one line naming the file or flag, exit 2, nothing produced.

Each case is a fault an operator meets: a truncated image, a weights file deleted or cut short (in a
model folder or a checkpoint), an output path that is a file, sampling settings that give noise or
black images, a learning rate that diverges, shards that changed after the manifest, corrupt sets.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import warnings

import pytest

from m2m.cli import main
from m2m.data.loader import CorruptSampleWarning
from m2m.data.shards import build_manifest, sha256_file
from tests.cli.test_train_cli import TINY_RUN, mis  # noqa: F401  (the module's MIS fixture)

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"m2m {command}: error: ") and "Traceback" not in err, err
    return last


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m2m-self"
    assert main(["init", "--out", str(out)]) == 0
    return out


@pytest.fixture()
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "0.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


SAMPLE_BAD_VALUES = [
    (["--steps", "0"], "--steps: must be at least 1, got 0"),
    (["--steps", "-5"], "--steps: must be at least 1, got -5"),
    (["--num-images", "0"], "--num-images: must be at least 1, got 0"),
    (["--guidance-scale", "nan"], "--guidance-scale: must be a finite number, got nan"),
    (["--guidance-scale", "inf"], "--guidance-scale: must be a finite number, got inf"),
    (["--condition-guidance-scale=-inf"], "--condition-guidance-scale: must be a finite number"),
]


@pytest.mark.parametrize(("extra", "message"), SAMPLE_BAD_VALUES, ids=[" ".join(a) for a, _ in SAMPLE_BAD_VALUES])
def test_sample_refuses_values_that_give_noise_or_black_images(model, image, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(model), "--images", str(image), "--out", str(out), *extra]) == 2
    assert message in one_line_error(capsys, "sample")
    assert not out.exists()


def test_sample_out_that_is_a_file_is_refused(model, image, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep")
    assert main(["sample", "--model", str(model), "--images", str(image), "--out", str(out)]) == 2
    assert f"--out {out}: exists and is not a folder" in one_line_error(capsys, "sample")
    assert out.read_bytes() == b"keep"


def test_a_truncated_image_is_named(model, image, tmp_path, capsys):
    image.write_bytes(image.read_bytes()[:60])
    assert main(["sample", "--model", str(model), "--images", str(image), "--out", str(tmp_path / "o")]) == 2
    assert f"{image}: " in one_line_error(capsys, "sample")


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_weights_file_of_a_model_is_named(model, image, tmp_path, capsys, damage):
    broken = shutil.copytree(model, tmp_path / "broken")
    weights = next((broken / "unet").glob("*.safetensors"))
    if damage == "deleted":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["sample", "--model", str(broken), "--images", str(image), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, "sample")
    assert (weights.name in line or str(weights.parent) in line), line


def test_a_truncated_checkpoint_is_named(mis, tmp_path, capsys):
    args = ["train", "--data", str(mis), "--out", str(tmp_path / "m"), *TINY_RUN, "--checkpoint-every", "1"]
    assert main(args) == 0
    weights = tmp_path / "m.ckpt" / "checkpoint-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    assert main([*args, "--resume", "--steps", "3"]) == 2
    assert f"{weights}: unreadable safetensors" in one_line_error(capsys, "train")


def test_a_learning_rate_that_diverges_is_refused_before_training(mis, tmp_path, capsys):
    assert main(["train", "--data", str(mis), "--out", str(tmp_path / "m"), *TINY_RUN, "--lr", "1e30"]) == 2
    assert "--lr: must be in (0, 1], got 1e+30" in one_line_error(capsys, "train")
    assert not (tmp_path / "m").exists()


def test_more_images_than_a_set_has_is_one_line_without_warnings(mis, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptSampleWarning)
        assert main(["train", "--data", str(mis), "--out", str(tmp_path / "m"), *TINY_RUN, "--n-images", "100"]) == 2
    assert "--n-images: 100 images per set, but the sets of" in one_line_error(capsys, "train")


@pytest.fixture()
def mis_copy(mis, tmp_path):  # noqa: F811
    return shutil.copytree(mis, tmp_path / "mis")


def test_a_shard_changed_after_the_manifest_is_refused(mis_copy, tmp_path, capsys):
    shard = mis_copy / "shards" / "mis-000001.tar"
    with open(shard, "ab") as handle:
        handle.write(b"\0" * 512)
    assert main(["train", "--data", str(mis_copy), "--out", str(tmp_path / "m"), *TINY_RUN]) == 2
    assert f"{shard}: sha256" in one_line_error(capsys, "train")


def corrupt_every_image(shard) -> None:
    """Rewrite ``shard`` with every PNG cut short, and its sidecar's sha256 to match (a bad generator)."""
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            members.append((info, data[:40] if info.name.endswith(".png") else data))
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sidecar = shard.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": sha256_file(shard)}))


def test_skipped_sets_are_counted_and_fail_the_run_past_the_threshold(mis_copy, tmp_path, capsys):
    corrupt_every_image(mis_copy / "shards" / "mis-000000.tar")
    build_manifest(mis_copy / "shards", mis_copy / "manifest.json", test_percent=25)
    args = ["train", "--data", str(mis_copy), *TINY_RUN, "--batch-size", "4", "--steps", "4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        assert main([*args, "--out", str(tmp_path / "tolerant"), "--max-skipped", "0.9"]) == 0
        metrics = json.loads((tmp_path / "tolerant" / "train_metrics.json").read_text())
        assert metrics["skipped_samples"] > 0
        assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    assert "sets read were skipped as unreadable (more than --max-skipped 0.01)" in one_line_error(capsys, "train")
    assert not (tmp_path / "strict").exists()


def test_resume_refuses_a_checkpoint_made_on_other_shards(mis_copy, tmp_path, capsys):
    args = ["train", "--data", str(mis_copy), "--out", str(tmp_path / "m"), *TINY_RUN, "--checkpoint-every", "1"]
    assert main(args) == 0
    build_manifest(mis_copy / "shards", mis_copy / "manifest.json", test_percent=50)  # another split
    assert main([*args, "--resume", "--steps", "3"]) == 2
    assert "made with data_digest=" in one_line_error(capsys, "train")
    assert main([*args, "--resume", "auto", "--steps", "3"]) == 0  # auto: starts afresh
    metrics = json.loads((tmp_path / "m" / "train_metrics.json").read_text())
    assert metrics["resumed_from"] is None and metrics["steps"] == 3
