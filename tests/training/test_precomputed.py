"""Training on shards that carry their VAE latents and DINOv2 features (generate-mis --precompute): the
sd21 preset reads them instead of encoding every set; without them it encodes and says so once."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest
import torch

from m2m.models.context import CONTEXT_ENCODERS, context_encoder
from m2m.training import loop, objective
from m2m.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")

FALLBACK = "the shards carry no precomputed latents"


def write_mis(root, precompute=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from m2m.data.procedural import ProceduralGenerator
    from m2m.data.shards import build_manifest, write_shard

    captions = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("star", "circle")]
    ids = ["c" + hashlib.sha1(c.encode()).hexdigest()[:12] for c in captions]
    pq.write_table(pa.table({"id": ids, "caption": captions}), root / "filtered.parquet")
    write_shard(
        root / "filtered.parquet", root / "shards", 0, ProceduralGenerator(32), samples_per_shard=6,
        images_per_caption=4, precompute=precompute,
    )
    build_manifest(root / "shards", root / "manifest.json", test_percent=0)
    return root


@pytest.fixture(scope="module")
def encoded_mis(tmp_path_factory, tiny_sd_folder, tiny_dino_folder):
    """Procedural sets at the weight-shaped SD's 32 px, with latents and DINOv2 features at 224 px."""
    from m2m.data.sd_generator import LatentPrecomputer

    precompute = LatentPrecomputer(tiny_sd_folder, tiny_dino_folder, dino_size=224, device="cpu")
    return write_mis(tmp_path_factory.mktemp("encoded"), precompute)


@pytest.fixture(scope="module")
def plain_mis(tmp_path_factory):
    return write_mis(tmp_path_factory.mktemp("plain"))


@pytest.fixture
def encoder_calls(monkeypatch):
    """How often training steps run the VAE encoder, and the run runs DINOv2 (``samples.png`` included)."""
    calls = {"vae": 0, "dino": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    dino = context_encoder("dino")
    monkeypatch.setattr(objective, "encode_images", counted("vae", objective.encode_images))
    monkeypatch.setitem(CONTEXT_ENCODERS, "dino", dataclasses.replace(dino, features=counted("dino", dino.features)))
    return calls


def train_sd21(data, out, folders):
    sd, dino = folders
    config = TrainConfig(
        out=out, preset="sd21", variant="dino", data=data, sd_folder=sd, dino_folder=dino, steps=2, batch_size=2,
        n_images=3, checkpoint_every=0, sample_steps=1, sample_sets=1, sample_context=2, sample_generate=1,
    )
    return loop.train(config)


def test_training_reads_stored_latents_and_features(encoded_mis, tmp_path, tiny_sd_folder, tiny_dino_folder,
                                                     encoder_calls, caplog):
    caplog.set_level(logging.INFO)
    train_sd21(encoded_mis, tmp_path / "model", (tiny_sd_folder, tiny_dino_folder))
    assert encoder_calls == {"vae": 0, "dino": 2}  # DINOv2 for samples.png's 2 preceding images alone
    assert FALLBACK not in caplog.text


def test_training_encodes_and_says_so_once_without_them(plain_mis, tmp_path, tiny_sd_folder, tiny_dino_folder,
                                                       encoder_calls, caplog):
    caplog.set_level(logging.INFO)
    train_sd21(plain_mis, tmp_path / "model", (tiny_sd_folder, tiny_dino_folder))
    assert encoder_calls["vae"] == 2 and encoder_calls["dino"] == 2 + 2  # 2 steps, then samples.png
    assert caplog.text.count(FALLBACK) == 1


def test_stored_encodings_give_the_context_encoding_gives(encoded_mis, tiny_sd_folder, tiny_dino_folder):
    from m2m.data.loader import mis_loader
    from m2m.build import build_pipeline

    pipe = build_pipeline("sd21", "dino", sd_folder=tiny_sd_folder, dino_folder=tiny_dino_folder)
    batch = next(iter(mis_loader(encoded_mis, batch_size=2, n_images=3, shuffle=0, precomputed=True)))
    z0, context = objective.clean_context(pipe, batch["images"])
    stored_z0, stored_context = objective.clean_context(pipe, batch["images"], batch["latents"], batch["dino"])
    assert stored_z0.dtype == z0.dtype == torch.float32
    torch.testing.assert_close(stored_z0, z0, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(stored_context, context, atol=2e-3, rtol=2e-3)
