import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker, and every command it
# starts, gets its share of the cores: tiny models gain nothing from more threads, and oversubscribed
# cores made them several times slower.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

# Test modules that share a session fixture, run on one worker so that it is built once: the whole
# chain materialized by the main command (tests/orchestration/conftest.py).
SAME_WORKER = {
    "tests/orchestration/materialize/test_stage.py": "chain",
    "tests/orchestration/test_pipeline.py": "chain",
    "tests/orchestration/runs/test_recovery.py": "chain",
}


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope``: a test module is one unit of work (its module fixtures are built once),
    modules in ``SAME_WORKER`` one unit together."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module, module)

    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first (with ``--no-loadscope-reorder`` the workers take them first), so
    the longest work is never left for the end."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


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


@pytest.fixture
def kernel_dtypes(monkeypatch):
    """The query dtype of every ``F.scaled_dot_product_attention`` call, in call order (ours and diffusers')."""
    import torch

    seen, kernel = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(q.dtype)
        return kernel(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


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
