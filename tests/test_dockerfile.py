"""Dockerfile and .dockerignore, read as Docker reads them (no engine here to build the image): the
image is the README's set-up on a CPU base, CUDA by build arguments, weights and data left out."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in joined.splitlines()) if line]


def args(steps: list[tuple[str, str]]) -> dict[str, str]:
    """Each ARG's default (shell-unquoted)."""
    found = {}
    for kind, rest in steps:
        if kind == "ARG":
            name, _, default = rest.partition("=")
            found[name.strip()] = shlex.split(default)[0] if default else ""
    return found


def env(steps: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for kind, rest in steps:
        if kind == "ENV":
            found.update(item.split("=", 1) for item in shlex.split(rest))
    return found


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Go's filepath.Match reads it (``*`` and ``?`` stay within one folder),
    plus ``**`` for any number of folders."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a folder above it decides; ``!`` re-includes."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_image_is_the_readme_setup_on_a_cpu_base_with_cuda_by_build_args(steps):
    defaults = args(steps)
    first_from = next(i for i, (kind, _) in enumerate(steps) if kind == "FROM")
    assert [rest for kind, rest in steps if kind == "FROM"] == ["${BASE_IMAGE}"]
    assert "BASE_IMAGE" in args(steps[:first_from])  # an ARG before FROM is what FROM may use
    assert defaults["BASE_IMAGE"].startswith("python:") and "cuda" not in defaults["BASE_IMAGE"]
    assert defaults["M2M_TORCH_SPEC"].startswith("torch==") and defaults["M2M_TORCH_SPEC"].endswith("/whl/cpu")
    (setup,) = [rest for kind, rest in steps if kind == "RUN" and "scripts/setup.sh" in rest]
    assert 'M2M_TORCH_SPEC="$M2M_TORCH_SPEC"' in setup and 'M2M_EXTRAS="$M2M_EXTRAS"' in setup
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert "${M2M_TORCH_SPEC:-" in script and "M2M_EXTRAS" in script  # what the build args feed
    copies = [i for i, (kind, _) in enumerate(steps) if kind in ("COPY", "ADD")]
    assert copies and max(copies) < steps.index(("RUN", setup))  # set up once the project is in


def test_no_weights_or_data_go_into_the_image(steps, patterns):
    for kind, rest in steps:
        if kind in ("COPY", "ADD"):
            sources = [word for word in shlex.split(rest) if not word.startswith("--")][:-1]
            assert all(not re.match(r"(\./)?(weights|assets|mlflow|\.dagster)\b", source) for source in sources), rest
    for path in ("weights/stable-diffusion-2-1-base/unet/diffusion_pytorch_model.safetensors",
                 "assets/mis/shards/shard-000000.tar", "mlflow/mlflow.db", ".dagster/history/runs.db",
                 ".venv/bin/python", ".venv-dvc/bin/dvc", ".dvc/cache/files/md5/ab/cdef", ".git/HEAD",
                 "m2m/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "scripts/setup.sh", "m2m/__init__.py", "m2m/resources",
                 "orchestration/k8s/definitions.py", "deploy/k8s/executor.yaml", "models/tiny-m2m-dino/model_index.json",
                 ".dvc/config"):
        assert not ignored(path, patterns), path


def test_pods_run_the_images_dagster_offline_with_a_pod_local_instance_folder(steps):
    variables = env(steps)
    assert variables["PATH"].startswith("/opt/m2m/.venv/bin:")
    assert ("WORKDIR", "/opt/m2m") in steps
    assert variables["HF_HUB_OFFLINE"] == variables["TRANSFORMERS_OFFLINE"] == "1"
    launcher = yaml.safe_load((REPO / "deploy" / "k8s" / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert variables["DAGSTER_HOME"] == launcher["dagster_home"]
    assert any(kind == "RUN" and f"mkdir -p {launcher['dagster_home']}" in rest for kind, rest in steps)
    assert "ENTRYPOINT" not in {kind for kind, _ in steps}  # dagster-k8s passes each pod's command as args
