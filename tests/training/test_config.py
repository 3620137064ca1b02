from pathlib import Path

import pytest

from m2m.training.config import TrainConfig


def test_tiny_defaults_fill_in():
    cfg = TrainConfig(data=Path("mis")).resolved()
    assert (cfg.lr, cfg.batch_size, cfg.micro_batch_size) == (1e-3, 8, 8)


def test_mixed_precision_follows_the_pipeline_compute_dtype(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert TrainConfig(data=Path("mis")).resolved().mixed_precision == "bf16"
    assert TrainConfig(data=Path("mis"), mixed_precision="no").resolved().mixed_precision == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert TrainConfig(data=Path("mis")).resolved().mixed_precision == "no"


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", -1.0), ("n_images", 1), ("p_uncond", 1.5), ("mixed_precision", "fp8"), ("task_sample", "first"),
     ("timestep_sampling", "normal"), ("adamw", "apex"), ("sdpa_backend", "xformers")],
)
def test_bad_settings_name_their_option(field, value):
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
        TrainConfig(data=Path("mis"), **{field: value}).resolved()
