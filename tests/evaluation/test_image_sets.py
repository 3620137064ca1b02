"""Reading a folder of real image sets: usable sets, skips and counts, clear errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from m2m.data.captions import caption_id
from m2m.data.procedural import ProceduralGenerator
from m2m.data.shards import build_manifest, in_test_split, write_shard
from m2m.evaluation.image_sets import fit_image, read_image_sets, read_mis_eval_sets


def save(path, size=(32, 32), colour=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


@pytest.fixture
def sets_dir(tmp_path):
    root = tmp_path / "sets"
    for i in (1, 2, 10, 3):  # natural order: 1, 2, 3, 10
        save(root / "apples" / f"img{i}.png", colour=(i * 20, 0, 0))
    (root / "apples" / "caption.txt").write_text("  four red apples \n")
    save(root / "mixed" / "a.jpg", size=(64, 48))
    save(root / "mixed" / "b.webp", size=(32, 32), fmt="WEBP")
    save(root / "mixed" / "c.png", size=(20, 40), colour=(0, 0, 0))
    Image.new("RGBA", (32, 32), (0, 255, 0, 128)).save(root / "mixed" / "d.png")
    (root / "mixed" / "corrupt.png").write_bytes(b"\x89PNG not really")
    (root / "mixed" / "notes.txt").write_text("not an image")
    save(root / "short" / "only.png")
    save(root / "short" / "two.png")
    (root / "empty").mkdir()
    (root / "README.md").write_text("stray file at the top")
    return root


def test_reads_usable_sets_and_counts_every_skip(sets_dir):
    sets, counts = read_image_sets(sets_dir, num_images=4, image_size=32)
    assert [s.id for s in sets] == ["apples", "mixed"]
    assert all(len(s.images) == 4 for s in sets)
    assert all(image.size == (32, 32) and image.mode == "RGB" for s in sets for image in s.images)
    assert counts.found == 4 and counts.used == 2
    assert counts.skipped_empty == 1 and counts.skipped_too_few == 1
    assert counts.unreadable_images == 1
    assert counts.non_image_files == 2  # notes.txt and the top-level README.md
    assert counts.resized_images == 2  # 64x48 and 20x40
    assert counts.skipped == ["empty: no images", "short: 2 readable images, 4 needed"]


def test_images_in_natural_order_and_caption_read(sets_dir):
    sets, counts = read_image_sets(sets_dir, num_images=4, image_size=32)
    apples = sets[0]
    assert [image.getpixel((0, 0))[0] for image in apples.images] == [20, 40, 60, 200]
    assert apples.caption == "four red apples"
    assert sets[1].caption is None
    assert counts.with_caption == 1


def test_limit_stops_after_enough_sets(sets_dir):
    sets, counts = read_image_sets(sets_dir, num_images=4, image_size=32, limit=1)
    assert [s.id for s in sets] == ["apples"]
    assert counts.not_read_past_limit == 3


def test_fit_image_centre_crops_before_resizing():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 255, 0), (20, 0, 40, 20))  # the centre third is green
    fitted = fit_image(image, 8)
    assert fitted.size == (8, 8)
    assert fitted.getpixel((4, 4)) == (0, 255, 0)
    assert fitted.getpixel((0, 4))[0] < 64  # no red from the cropped-away sides


def test_nothing_usable_is_one_clear_error(sets_dir):
    with pytest.raises(ValueError, match=r"no usable image set \(4 folders: 1 without images, 3 with fewer than 9"):
        read_image_sets(sets_dir, num_images=9, image_size=32)


def test_missing_folder_file_and_no_subfolders(tmp_path):
    with pytest.raises(FileNotFoundError, match="image-sets folder not found"):
        read_image_sets(tmp_path / "nope", 4, 32)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="one sub-folder per image set"):
        read_image_sets(tmp_path / "file.png", 4, 32)
    with pytest.raises(ValueError, match="no set folders"):
        read_image_sets(tmp_path, 4, 32)


@pytest.fixture(scope="module")
def procedural_mis(tmp_path_factory):
    """A procedural MIS (24x24 images, 5 per set) written by the library, half of it in the test split."""
    root = tmp_path_factory.mktemp("mis")
    captions = [f"{word} circles on stripes number {i}" for i, word in enumerate(["ocean", "forest", "night"] * 4)]
    rows = [{"id": caption_id(c), "caption": c, "n_tokens": 0} for c in captions]
    pq.write_table(pa.Table.from_pylist(rows), root / "captions.parquet")
    write_shard(root / "captions.parquet", root / "shards", 0, ProceduralGenerator(24), images_per_caption=5)
    build_manifest(root / "shards", root / "manifest.json", test_percent=50)
    return root, {row["id"]: row["caption"] for row in rows}


def test_mis_test_sets_carry_caption_attributes_and_fitted_images(procedural_mis):
    root, captions = procedural_mis
    sets, counts = read_mis_eval_sets(root, "test", num_images=4, image_size=32)
    test_ids = [key for key in captions if in_test_split(key, 50)]
    assert sorted(s.id for s in sets) == sorted(test_ids) and counts.used == len(test_ids) > 1
    for s in sets:
        assert s.caption == captions[s.id]
        assert s.attributes == ProceduralGenerator().attributes(s.caption)
        assert [image.size for image in s.images] == [(32, 32)] * 4
    assert counts.resized_images == 4 * len(sets)  # 24x24 shards fitted to the model's 32x32
    limited, counts = read_mis_eval_sets(root / "manifest.json", "test", num_images=4, image_size=24, limit=1)
    assert len(limited) == 1 and counts.resized_images == 0


def test_mis_sets_shorter_than_needed_are_an_error(procedural_mis):
    root, _ = procedural_mis
    with pytest.raises(ValueError, match=r"no usable test set \(\d+ read, \d+ too short\)"):
        read_mis_eval_sets(root, "test", num_images=6, image_size=24)
