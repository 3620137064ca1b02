"""Data the training tests share."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture(scope="session")
def mis(tmp_path_factory):
    """An MIS dataset of 24 procedural sets of 6 images (32x32) in two shards, with manifest and split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from m2m.data.procedural import ProceduralGenerator
    from m2m.data.shards import build_manifest, write_shard

    root = tmp_path_factory.mktemp("mis")
    colours, shapes, textures = ("red", "blue", "green", "yellow"), ("star", "circle", "square"), ("striped", "dotted")
    captions = [f"a {c} {s} on a {t} background" for c in colours for s in shapes for t in textures]
    ids = ["c" + hashlib.sha1(c.encode()).hexdigest()[:12] for c in captions]
    pq.write_table(pa.table({"id": ids, "caption": captions}), root / "filtered.parquet")
    for shard in range(2):
        write_shard(
            root / "filtered.parquet", root / "shards", shard, ProceduralGenerator(32),
            samples_per_shard=12, images_per_caption=6,
        )
    build_manifest(root / "shards", root / "manifest.json", test_percent=25)
    return root
