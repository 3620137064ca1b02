"""MLflow tracking helpers: the store location, git commit, DVC inputs, curves, the pyfunc model."""

from __future__ import annotations

import math
import os
import subprocess

import pytest

from m2m import tracking


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """One local store for the module (creating an MLflow database takes seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield tmp_path_factory.mktemp("store")


@pytest.fixture()
def local_store(store_root):
    tracking.configure(store_root)
    return store_root


def test_tracking_uri_defaults_to_sqlite_under_the_project_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_configuring_one_project_after_another_switches_stores_and_leaves_the_env_alone(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = tmp_path / "a", tmp_path / "b"
    tracking.configure(first)
    assert tracking.configure(second) == tracking.tracking_uri(second)
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == f"sqlite:///{second.resolve()}/mlflow/mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_experiments_of_the_local_store_keep_artifacts_under_mlflow_artifacts(local_store):
    import mlflow

    experiment = tracking.experiment_id("m2m-training")
    assert tracking.experiment_id("m2m-training") == experiment
    location = mlflow.get_experiment(experiment).artifact_location
    assert location == (local_store / "mlflow" / "artifacts").as_uri()
    assert mlflow.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    assert (local_store / "mlflow" / "mlflow.db").is_file()


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_commit_is_none_before_the_first_commit_then_the_hash_and_dirty_flag(tmp_path):
    assert tracking.git_commit(tmp_path) is None
    git(tmp_path, "init", "-q")
    assert tracking.git_commit(tmp_path) is None
    (tmp_path / "a.txt").write_text("a")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert tracking.git_commit(tmp_path) == head + "-dirty"


def test_dvc_hashes_become_dataset_inputs_of_the_run(local_store):
    import mlflow

    experiment = tracking.experiment_id("inputs")
    hashes = {"assets/mis/shards": "0123456789abcdef0123456789abcdef.dir", "assets/mis/manifest.json": "f" * 32}
    with mlflow.start_run(experiment_id=experiment) as run:
        tracking.log_dvc_inputs(hashes, local_store, context="training")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    found = {entry.dataset.name: entry.dataset.digest for entry in inputs}
    assert found == hashes
    assert all(tag.value == "training" for entry in inputs for tag in entry.tags if tag.key == "mlflow.data.context")


def test_loss_curve_is_read_and_logged_per_step(local_store):
    import mlflow

    curve = local_store / "curve-loss.csv"
    curve.write_text("step,loss,lr\n1,0.9,1e-4\n2,0.5,1e-4\n3,nan,1e-4\n")
    assert tracking.read_loss_curve(curve)[:2] == [(1, 0.9), (2, 0.5)]
    assert math.isnan(tracking.read_loss_curve(curve)[2][1])
    with mlflow.start_run(experiment_id=tracking.experiment_id("curves")) as run:
        tracking.log_loss_curve(curve)
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history][:2] == [(1, 0.9), (2, 0.5)]


def test_malformed_loss_curves_name_the_file_and_line(tmp_path):
    missing = tmp_path / "a.csv"
    missing.write_text("iteration,value\n1,2\n")
    with pytest.raises(ValueError, match=r"a.csv: missing column\(s\) loss, step"):
        tracking.read_loss_curve(missing)
    broken = tmp_path / "b.csv"
    broken.write_text("step,loss\n1,0.5\n2,oops\n")
    with pytest.raises(ValueError, match="b.csv: line 3"):
        tracking.read_loss_curve(broken)


def test_flatten_numbers_keeps_finite_numbers_only():
    data = {"fid": {"mean": 3.5, "std": 0.5}, "notes": ["x"], "name": "a", "bad": float("nan"), "ok": True}
    assert tracking.flatten_numbers(data) == {"fid.mean": 3.5, "fid.std": 0.5}


def test_model_requirements_are_pinned_and_leave_out_the_extras():
    requirements = tracking.model_requirements()
    names = [r.split("==")[0] for r in requirements]
    assert "torch" in names and "diffusers" in names
    assert "dagster" not in names and "pytest" not in names
    assert all("==" in r and "+" not in r for r in requirements if r.split("==")[0] in ("torch", "diffusers"))


@pytest.mark.slow
def test_model_folder_logs_as_pyfunc_and_loads_back_to_generate(local_store, monkeypatch):
    import mlflow

    from m2m.build import build_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = local_store / "m2m-self-folder"
    build_pipeline("tiny", "self").save_pretrained(folder)
    with mlflow.start_run(experiment_id=tracking.experiment_id("models")):
        info = tracking.log_model_folder(folder)
    model = mlflow.pyfunc.load_model(info.model_uri)
    first = model.predict([{"images": [], "num_images": 1, "num_inference_steps": 1, "seed": 3}])
    assert len(first) == 1 and len(first[0]) == 1
    image = tracking.decode_png(first[0][0])
    assert image.size == (32, 32)
    again = model.predict([{"images": [], "num_images": 1, "num_inference_steps": 1, "seed": 3}])
    assert again == first
    following = model.predict([{"images": first[0], "num_images": 2, "num_inference_steps": 1}])
    assert len(following[0]) == 2
    assert model.metadata.signature.inputs.input_names()[:2] == ["images", "num_images"]
    with pytest.raises(Exception, match="num_images"):  # the signature says it is required
        model.predict([{"images": []}])
