import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the CPUs are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide state; each training run in a test starts from none."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def weights_folder(tmp_path_factory):
    """A ``weights/`` folder as the sd21 preset expects it, every model weight-shaped (m2m/weight_folders.py)."""
    from m2m.weight_folders import write_weights

    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def tiny_sd_folder(weights_folder):
    """A random StableDiffusionPipeline in SD-2.1-base's layout, saved with SD-2.1-base's PNDM scheduler
    config (the MIS generator swaps in Euler)."""
    from m2m.weight_folders import SD_NAME

    return weights_folder / SD_NAME


@pytest.fixture(scope="session")
def tiny_dino_folder(weights_folder):
    """A random DINOv2 (hidden 32, 2 layers, patch 14) in facebook/dinov2-giant's layout."""
    from m2m.weight_folders import DINO_NAME

    return weights_folder / DINO_NAME
