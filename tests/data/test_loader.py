"""The MIS loader: N-image subsets, split, determinism, exact resume, workers, corrupt data."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch

from m2m.data.loader import CorruptSampleWarning, choose_images, mis_loader, read_mis_sets
from m2m.data.shards import build_manifest, image_seeds, write_shard

IMAGES = 6


@pytest.fixture(scope="module")
def mis(tmp_path_factory, captions_parquet, colour_generator_class):
    """An MIS dataset folder: 3 shards of 10 sets of 6 flat-colour 8x8 images, manifest, 30% test split."""
    root = tmp_path_factory.mktemp("mis")
    for k in range(3):
        generator = colour_generator_class()
        write_shard(captions_parquet, root / "shards", k, generator, samples_per_shard=10, images_per_caption=IMAGES)
    build_manifest(root / "shards", root / "manifest.json", test_percent=30)
    return root


def ids_of(batches):
    return [i for b in batches for i in b["id"]]


def image_index(image: torch.Tensor, key: str) -> int:
    """Which of the set's seeds drew this flat-colour image (green channel = seed % 256)."""
    green = round((image[1, 0, 0].item() + 1) * 127.5)
    return [s % 256 for s in image_seeds(0, key, IMAGES)].index(green)


def test_batches_hold_n_images_of_each_set_in_order(mis):
    loader = mis_loader(mis, batch_size=4, n_images=3, shuffle=0)
    batches = list(loader)
    assert [len(b["id"]) for b in batches] == [4] * 7 + [2]
    first = batches[0]
    assert first["images"].shape == (4, 3, 3, 8, 8) and first["images"].dtype == torch.float32
    assert first["images"].min() >= -1 and first["images"].max() <= 1
    shards = json.loads((mis / "shards" / "mis-000000.json").read_text())
    assert ids_of(batches)[:10] == shards["keys"]  # shuffle=0: shard order
    for images, key in zip(first["images"], first["id"]):
        assert [image_index(x, key) for x in images] == choose_images(IMAGES, 3, 0, 0, key)
    assert all(isinstance(c, str) and c for c in first["caption"])
    resized = next(iter(mis_loader(mis, batch_size=2, n_images=2, image_size=4, shuffle=0)))
    assert resized["images"].shape == (2, 2, 3, 4, 4)
    key = resized["id"][0]
    assert [image_index(x, key) for x in resized["images"][0]] == choose_images(IMAGES, 2, 0, 0, key)


def test_split_follows_split_json(mis):
    split = json.loads((mis / "split.json").read_text())
    train = ids_of(mis_loader(mis / "manifest.json", split="train", shuffle=0))
    test = ids_of(mis_loader(mis, split="test", shuffle=0, n_images=2))
    assert sorted(train) == sorted(split["train"]) and sorted(test) == sorted(split["test"]) and test
    with pytest.raises(ValueError, match="needs a split file"):
        mis_loader(mis / "shards", split="test")
    with pytest.raises(ValueError, match="split: must be one of train, test"):
        mis_loader(mis, split="val")


def test_order_is_seeded_and_changes_per_epoch(mis):
    a, b = mis_loader(mis, batch_size=3, shuffle=8), mis_loader(mis, batch_size=3, shuffle=8)
    epoch0 = list(a)
    assert ids_of(epoch0) == ids_of(list(b))
    epoch1 = list(a)
    assert sorted(ids_of(epoch1)) == sorted(ids_of(epoch0)) and ids_of(epoch1) != ids_of(epoch0)
    assert ids_of(epoch0) != ids_of(list(mis_loader(mis, batch_size=3, shuffle=8, seed=1)))
    assert a.state_dict()["epoch"] == 2
    # the N-image subset of a set is redrawn every epoch
    subsets = [
        {k: [image_index(x, k) for x in s] for b in epoch for k, s in zip(b["id"], b["images"])}
        for epoch in (epoch0, epoch1)
    ]
    assert sum(subsets[0][k] != subsets[1][k] for k in subsets[0]) > 10


def test_resume_yields_exactly_the_remaining_batches(mis):
    reference = list(mis_loader(mis, batch_size=4, shuffle=16, split="train"))
    loader = mis_loader(mis, batch_size=4, shuffle=16, split="train")
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "samples": 12, "corrupt": 0, "read_errors": 0, "seed": 0}
    resumed = mis_loader(mis, batch_size=4, shuffle=16, split="train")
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert ids_of(head + rest) == ids_of(reference)
    for got, want in zip(head + rest, reference):
        assert torch.equal(got["images"], want["images"])
    assert resumed.state_dict()["epoch"] == 1
    with pytest.raises(ValueError, match="seed 0 differs"):
        mis_loader(mis, seed=3).load_state_dict(state)


def test_workers_and_ranks_see_the_same_stream(mis):
    single = list(mis_loader(mis, batch_size=3, shuffle=8))
    workers = list(mis_loader(mis, batch_size=3, shuffle=8, num_workers=2))
    assert [b["id"] for b in workers] == [b["id"] for b in single]
    rank0 = list(mis_loader(mis, batch_size=3, shuffle=8, rank=0, world_size=2))
    rank1 = list(mis_loader(mis, batch_size=3, shuffle=8, rank=1, world_size=2))
    interleaved = [b for pair in zip(rank0, rank1) for b in pair] + rank0[len(rank1) :]
    assert [b["id"] for b in interleaved] == [b["id"] for b in single]


def rewrite(tar, change):
    """Replace members of a tar (name -> new bytes)."""
    out = io.BytesIO()
    with tarfile.open(tar) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            data = change.get(member.name, src.extractfile(member).read())
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    tar.write_bytes(out.getvalue())


def test_corrupt_png_and_truncated_tar_are_skipped_counted_and_named(tmp_path, mis):
    shards = tmp_path / "shards"
    shutil.copytree(mis / "shards", shards)
    keys = [json.loads((shards / f"mis-00000{k}.json").read_text())["keys"] for k in range(3)]
    rewrite(shards / "mis-000000.tar", {f"{keys[0][2]}.001.png": b"\x89PNG\r\n\x1a\n not an image"})
    data = (shards / "mis-000001.tar").read_bytes()
    (shards / "mis-000001.tar").write_bytes(data[: len(data) // 2 + 700])  # cut inside a sample
    loader = mis_loader(shards, batch_size=4, n_images=IMAGES, shuffle=0)
    with pytest.warns(CorruptSampleWarning) as caught:
        seen = ids_of(list(loader))
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"mis-000000.tar: {keys[0][2]}: image does not decode") for m in messages)
    assert any(m.startswith("mis-000001.tar: ") and "rest of the shard skipped" in m for m in messages)
    cut = [m for m in messages if m.startswith("mis-000001.tar: c") and "incomplete sample" in m]
    assert len(cut) == 1
    partial = cut[0].split(": ")[1]
    assert keys[0][2] not in seen and partial not in seen
    assert [k for k in keys[1] if k in seen] == keys[1][: keys[1].index(partial)]
    assert [k for k in keys[0] + keys[2] if k in seen] == [k for k in keys[0] + keys[2] if k != keys[0][2]]
    state = loader.state_dict()
    assert state["corrupt"] == 2 and state["read_errors"] == 1


def test_read_mis_sets_gives_whole_sets_for_evaluation(mis):
    split = json.loads((mis / "split.json").read_text())
    sets = read_mis_sets(mis / "manifest.json", split="test", limit=2)
    assert [s["id"] for s in sets] == [i for i in split["test"]][:2]
    first = sets[0]
    assert len(first["images"]) == IMAGES and first["images"][0].size == (8, 8)
    assert first["attributes"] == {"length": len(first["caption"])}
    greens = [np.asarray(im)[0, 0, 1] for im in first["images"]]
    assert greens == [s % 256 for s in image_seeds(0, first["id"], IMAGES)]
    assert len(read_mis_sets(mis, split=None)) == 30


def test_precomputed_latents_follow_chosen_images(tmp_path, captions_parquet, tiny_sd_folder, mis, colour_generator):
    from safetensors.torch import load

    from m2m.data.sd_generator import LatentPrecomputer

    precompute = LatentPrecomputer(tiny_sd_folder, device="cpu")
    args = dict(samples_per_shard=4, images_per_caption=IMAGES, precompute=precompute)
    write_shard(captions_parquet, tmp_path, 0, colour_generator, **args)
    batches = list(mis_loader(tmp_path, batch_size=2, n_images=3, shuffle=0, precomputed=True))
    assert [b["latents"].shape for b in batches] == [(2, 3, 4, 4, 4)] * 2
    with tarfile.open(tmp_path / "mis-000000.tar") as tar:
        key = batches[0]["id"][1]
        stored = load(tar.extractfile(f"{key}.latents.safetensors").read())["latents"]
    assert batches[0]["latents"][1].equal(stored[choose_images(IMAGES, 3, 0, 0, key)])
    # shards written without --precompute cannot feed a precomputed loader: every sample is skipped
    loader = mis_loader(mis / "shards", batch_size=4, precomputed=True, shuffle=0)
    with pytest.warns(CorruptSampleWarning, match="no latents.safetensors"):
        assert list(loader) == []
    assert loader.state_dict()["corrupt"] == 30
