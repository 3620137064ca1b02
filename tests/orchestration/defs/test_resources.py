"""The compute resource: its settings reach the commands; bad settings are one clear error."""

from __future__ import annotations

import pytest

from orchestration.defs.resources import ComputeResource, DvcResource, MlflowResource


def test_cpu_settings_reach_the_command_environment():
    env = ComputeResource(device="cpu", dtype="bfloat16").env()
    assert env["M2M_DEVICE"] == "cpu" and env["M2M_DTYPE"] == "bfloat16"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and env["ACCELERATE_USE_CPU"] == "true"


def test_auto_device_is_cuda_only_when_torch_sees_a_gpu():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ComputeResource().env()["M2M_DEVICE"] == expected
    second_gpu = ComputeResource(device="cuda:1").env()
    assert "ACCELERATE_USE_CPU" not in second_gpu
    assert second_gpu["M2M_DEVICE"] == "cuda" and second_gpu["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"device": "tpu"}, "compute.device: expected auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
        ({"dtype": "int8"}, "compute.dtype: expected one of float32, float16, bfloat16, got 'int8'"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError) as err:
        ComputeResource(**settings).env()
    assert str(err.value) == message


def test_dvc_resource_defaults_to_the_project_root(monkeypatch, tmp_path):
    monkeypatch.setenv("M2M_PROJECT_ROOT", str(tmp_path))
    assert DvcResource().cli().root == tmp_path.resolve()
    assert DvcResource(project_root="/srv/m2m").cli().root.as_posix() == "/srv/m2m"


def test_mlflow_links_point_at_the_ui_in_its_model_training_view(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("M2M_MLFLOW_UI_URL", raising=False)
    ui = MlflowResource(ui_url="http://127.0.0.1:5000/")
    assert ui.run_url("1", "abc") == "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    assert ui.experiment_url("1") == "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
    assert ui.model_url("m2m-self", "3") == "http://127.0.0.1:5000/#/models/m2m-self/versions/3"
    assert MlflowResource().ui() == "http://127.0.0.1:5000"  # `mlflow ui` on a local store, its default port


def test_mlflow_links_follow_the_tracking_server_or_the_port_given(monkeypatch):
    monkeypatch.delenv("M2M_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5123")
    assert MlflowResource().ui() == "http://127.0.0.1:5123"  # the server serves its UI
    assert MlflowResource(tracking_uri="https://mlflow.team.example/").ui() == "https://mlflow.team.example"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("M2M_MLFLOW_UI_URL", "http://127.0.0.1:5999")
    assert MlflowResource().run_url("2", "r").startswith("http://127.0.0.1:5999/#/experiments/2/runs/r")
    assert MlflowResource(ui_url="http://127.0.0.1:6001").ui() == "http://127.0.0.1:6001"  # set: it wins
    with pytest.raises(ValueError, match="mlflow.ui_url: expected http"):
        MlflowResource(ui_url="127.0.0.1:5000; rm -rf /").ui()
