import pytest
import torch

from m2m.device import pick_device


def test_explicit_device_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("M2M_DEVICE", "cuda")
    assert pick_device("cpu") == "cpu"


def test_auto_follows_the_pipeline_compute_resource(monkeypatch):
    monkeypatch.setenv("M2M_DEVICE", "cpu")
    assert pick_device("auto") == "cpu"


def test_auto_without_environment_picks_what_torch_sees(monkeypatch):
    monkeypatch.delenv("M2M_DEVICE", raising=False)
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("M2M_DEVICE", "cuda")
    with pytest.raises(ValueError, match="no CUDA device"):
        pick_device("auto")
