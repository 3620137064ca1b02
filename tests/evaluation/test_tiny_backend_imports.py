"""The ``tiny`` metrics backend runs without torch-fidelity, torchvision or torchmetrics: with them absent,
and beside a torch-fidelity that is installed but fails to import (a torchvision built for another torch)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

TINY_METRICS = textwrap.dedent(
    """
    import sys
    import torch
    from m2m.evaluation import metrics
    from m2m.evaluation.features import load_feature_networks

    networks = load_feature_networks("tiny")
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    values = [
        metrics.frechet_inception_distance(images, images.flip(0), networks),
        metrics.inception_score(images, networks),
        metrics.clip_text_image(images, ["a red star"] * 6, networks),
        metrics.clip_image_image(images, images[:, None], networks),
    ]
    assert all(value == value for value in values), values
    heavy = ("torch_fidelity", "torchvision", "torchmetrics")
    loaded = sorted(m for m, module in sys.modules.items() if m.split(".")[0] in heavy and module is not None)
    print("imported:", loaded)
    """
)


def run_tiny_metrics(tmp_path, prelude: str = "", extra_path: str | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "tiny_metrics.py"
    script.write_text(prelude + TINY_METRICS, encoding="utf-8")
    path = [p for p in (extra_path, os.environ.get("PYTHONPATH")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, os.getcwd()])}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)


def test_tiny_metrics_without_torch_fidelity_or_torchvision(tmp_path):
    blocked = "import sys\nfor name in ('torch_fidelity', 'torchvision', 'torchmetrics'):\n    sys.modules[name] = None\n"
    done = run_tiny_metrics(tmp_path, prelude=blocked)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported: []" in done.stdout


def test_tiny_metrics_beside_a_broken_torch_fidelity(tmp_path):
    site = tmp_path / "site"
    (site / "torch_fidelity").mkdir(parents=True)
    (site / "torch_fidelity" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n', encoding="utf-8"
    )
    dist = site / "torch_fidelity-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch-fidelity\nVersion: 0.3.0\n", encoding="utf-8")
    done = run_tiny_metrics(tmp_path, extra_path=str(site))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported: []" in done.stdout
