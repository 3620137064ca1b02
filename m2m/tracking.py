"""MLflow tracking for M2M: where runs live and what a run records.

The store defaults to a SQLite database and an artifact folder under the project's ``mlflow/``
(``MLFLOW_TRACKING_URI`` points it at a team server instead). A run records the git commit, the DVC
hashes of the data it read as MLflow dataset inputs, its parameters, curves and images; a trained
model folder (``M2MPipeline.save_pretrained``) is logged as a pyfunc model that loads back through
``mlflow.pyfunc.load_model`` and generates images.

mlflow is imported inside the functions that need it: the rest of the library never needs it.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import re
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path

STORE_DIR = "mlflow"
MODEL_NAME = "model"


def tracking_uri(project_root: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(project_root).resolve() / STORE_DIR / 'mlflow.db'}"


def local_store(uri: str) -> Path | None:
    """The database file of a SQLite store; None for a server."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def local_artifact_root(uri: str) -> Path | None:
    """For a SQLite store, the ``artifacts/`` folder beside its database; None for a server."""
    store = local_store(uri)
    return None if store is None else store.parent / "artifacts"


def configure(project_root: str | Path, uri: str | None = None) -> str:
    """Point mlflow (tracking and registry) at ``uri``, by default the project's store; returns it."""
    import mlflow

    uri = uri or tracking_uri(project_root)
    artifacts = local_artifact_root(uri)
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
    # mlflow also exports these to the environment; keep the environment as the user set it, so
    # that MLFLOW_TRACKING_URI still means "the user's server" for the next project.
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return uri


# MLflow's UI opens an experiment on its training-runs view (not the GenAI traces view) with this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created on first use; with a SQLite store its artifacts go to
    the ``artifacts/`` folder beside the database (a server chooses its own artifact store)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND[0]) is None:
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id
    artifacts = local_artifact_root(mlflow.get_tracking_uri())
    location = artifacts.as_uri() if artifacts is not None else None
    return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def git_commit(project_root: str | Path) -> str | None:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it; None outside git or
    before the first commit."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "--verify", "--quiet", "HEAD")
    except FileNotFoundError:
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def log_dvc_inputs(hashes: dict[str, str], project_root: str | Path, context: str) -> None:
    """Log each DVC-tracked input ``{path: md5}`` of the active run as an MLflow dataset input whose
    digest is the DVC hash (``.dir`` hashes name a folder)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    root = Path(project_root).resolve()
    for path, md5 in sorted(hashes.items()):
        with warnings.catch_warnings():
            # mlflow registers its local-file source twice and warns about the ambiguity.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source((root / path).as_uri())
        dataset = MetaDataset(source=source, name=path, digest=md5)
        mlflow.log_input(dataset, context=context, tags={"dvc.md5": md5})


def read_loss_curve(path: str | Path) -> list[tuple[int, float]]:
    """``(step, loss)`` rows of a ``loss.csv`` (columns ``step`` and ``loss``)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"step", "loss"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["step"]), float(row["loss"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: line {line}: step/loss are not numbers: {row}") from None
    return rows


def log_loss_curve(path: str | Path, key: str = "loss") -> None:
    """Log every ``loss.csv`` row as metric ``key`` at its step (NaN/inf rows are logged as they are)."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, loss, now, step) for step, loss in read_loss_curve(path)]
    client, run_id = mlflow.tracking.MlflowClient(), mlflow.active_run().info.run_id
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def flatten_numbers(data, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested dict as ``{"a.b": value}`` (lists and text are skipped)."""
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix.rstrip(".")] = float(data)
    return out


def model_requirements() -> list[str]:
    """The library's own dependencies, pinned to the installed versions (no inference at log time)."""
    requirements = []
    for spec in metadata.requires("m2m") or []:
        if ";" in spec:  # extras (pipeline, dev) are not needed to load a model
            continue
        name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0]
        try:
            version = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            requirements.append(spec)
            continue
        requirements.append(f"{name}=={version}")
    return requirements


def log_model_folder(folder: str | Path):
    """Log an ``M2MPipeline`` folder to the active run as a pyfunc model served by this module;
    returns mlflow's ``ModelInfo``."""
    import mlflow

    package = Path(__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        loader_module=__name__,
        data_path=str(folder),
        code_paths=[str(package)],
        pip_requirements=model_requirements(),
        signature=pyfunc_signature(),
    )


def pyfunc_signature():
    """What ``M2MPyfuncModel.predict`` takes and returns, shown on the model's page in MLflow."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([
        ColSpec(Array(DataType.string), "images", required=False),  # the K preceding images, base64 PNG
        ColSpec(DataType.long, "num_images"),  # M
        ColSpec(DataType.long, "num_inference_steps", required=False),
        ColSpec(DataType.double, "guidance_scale", required=False),
        ColSpec(DataType.long, "window", required=False),
        ColSpec(DataType.long, "seed", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(Array(DataType.string))]))


# -- the pyfunc flavor: an M2M model loaded back through mlflow ------------------------------------


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def _optional_float(value) -> float | None:
    """``None`` for a missing cell (``None`` or a DataFrame's NaN), else the value as a float."""
    return None if value is None or value != value else float(value)


class M2MPyfuncModel:
    """``predict`` takes rows (a DataFrame or a list of dicts) of ``images`` (the K preceding
    images as base64 PNGs, possibly none) and ``num_images`` (M), optionally ``num_inference_steps``,
    ``guidance_scale``, ``window`` and ``seed``; it returns, per row, the M generated images as
    base64 PNGs."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def predict(self, model_input, params=None):
        import torch

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        results = []
        for i, row in enumerate(rows):
            preceding = [decode_png(text) for text in (row.get("images") or [])]
            if "num_images" not in row:
                raise ValueError(f"row {i}: `num_images` is missing")
            generator = torch.Generator().manual_seed(int(row.get("seed", 0)))
            output = self.pipeline(
                images=[preceding] if preceding else None,
                num_images=int(row["num_images"]),
                window=int(row.get("window", 4)),
                num_inference_steps=int(row.get("num_inference_steps", 50)),
                guidance_scale=_optional_float(row.get("guidance_scale")),  # absent: the model's own s
                generator=generator,
                progress=False,
            )
            results.append([encode_png(image) for image in output.images[0]])
        return results


def _load_pyfunc(data_path: str) -> M2MPyfuncModel:
    """mlflow's entry point for ``loader_module``: the logged folder back as a pyfunc model (on CPU)."""
    from m2m.pipeline import load_on

    return M2MPyfuncModel(load_on(data_path, "cpu", local_files_only=True))
