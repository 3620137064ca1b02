"""Resources: where the heavy steps compute, the DVC project, and the MLflow store.

Each is a ``ConfigurableResource`` so a deployment swaps values (a GPU node, a team MLflow server)
without touching the assets.
"""

import os
import re

import dagster as dg
from pydantic import Field

from orchestration.dvc.cli import Dvc
from orchestration.runs.devices import Devices
from orchestration.project import project_root

DTYPES = {"float32": "no", "float16": "fp16", "bfloat16": "bf16"}  # -> accelerate's mixed precision


class ComputeResource(dg.ConfigurableResource):
    """The device kind and precision the commands of heavy steps run with.

    The values reach each command through the environment (``M2M_DEVICE``, ``M2M_DTYPE``, and
    accelerate's own ``ACCELERATE_MIXED_PRECISION`` / ``ACCELERATE_USE_CPU``). Which device of that kind
    a heavy step gets is its lease's (``orchestration/runs/devices.py``): ``devices`` describes them,
    the lease's environment goes on top of :meth:`env`. How many processes a training runs is the
    stage's own ``--num-processes`` (params.yaml), so DVC and Dagster run the same command.
    """

    device: str = Field(default="auto", description="auto (cuda when present, else cpu), cpu, cuda, cuda:N")
    dtype: str = Field(default="float32", description="float32, float16 or bfloat16")

    def validate(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"compute.device: expected auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"compute.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def devices(self, cpu_devices: int = 1) -> Devices | None:
        """The devices heavy steps lease from (``cpu_devices``: into how many the CPU is split); None for
        a fixed ``cuda:N`` or ``mps``, which every step shares."""
        device = self.resolved_device()
        if device in ("cuda", "cpu"):
            return Devices.of_machine(device, cpu_devices)
        return None

    def env(self) -> dict[str, str]:
        """The environment of a command: this process's, with the compute settings on top."""
        self.validate()
        device = self.resolved_device()
        env = {
            **os.environ,
            "M2M_DEVICE": device,
            "M2M_DTYPE": self.dtype,
            "ACCELERATE_MIXED_PRECISION": DTYPES[self.dtype],
        }
        if device == "cpu":
            env["ACCELERATE_USE_CPU"] = "true"
        if device.startswith("cuda:"):
            env["M2M_DEVICE"] = "cuda"
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        return env


class DvcResource(dg.ConfigurableResource):
    """The DVC project the assets materialize into, and the ``dvc`` executable that manages it."""

    project_root: str = Field(default="", description="folder of dvc.yaml; empty: $M2M_PROJECT_ROOT or this checkout")
    executable: str = Field(default="", description="dvc executable; empty: $M2M_DVC, .venv-dvc, PATH")

    def cli(self) -> Dvc:
        return Dvc(self.project_root or project_root(), self.executable or None)


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry, and the UI that shows them.

    The links the assets' pages give (runs, model versions) go to :meth:`ui`: ``ui_url`` when set, else the
    tracking server itself when the store is one (``http(s)://``: it serves the UI on the same port), else
    ``$M2M_MLFLOW_UI_URL``, else ``http://127.0.0.1:5000`` (``mlflow ui`` on a local store, its default port).
    Experiment and run links ask for the model-training view (``workflowType=machine_learning``): MLflow 3.17
    otherwise opens an experiment on its GenAI view, whatever the experiment's ``mlflow.experimentKind`` tag.
    """

    tracking_uri: str = Field(
        default="", description="empty: $MLFLOW_TRACKING_URI, else sqlite under the project's mlflow/"
    )
    ui_url: str = Field(
        default="", description="where the MLflow UI serves this store; empty: the tracking server, else "
        "$M2M_MLFLOW_UI_URL, else http://127.0.0.1:5000"
    )

    def configure(self, root: str) -> str:
        from m2m import tracking

        return tracking.configure(root, self.tracking_uri or None)

    def ui(self) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if self.ui_url:
            found = self.ui_url
        elif re.match(r"https?://", uri):
            found = uri
        else:
            found = os.environ.get(UI_ENV) or DEFAULT_UI
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", found):
            raise ValueError(f"mlflow.ui_url: expected http(s)://host[:port][/path], got {found!r}")
        return found.rstrip("/")

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.ui()}/#/experiments/{experiment_id}?{TRAINING_VIEW}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui()}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"

    def artifact_url(self, experiment_id: str, run_id: str, path: str) -> str:
        """The run page's artifact view opened on ``path`` (an image shows in full there)."""
        return f"{self.ui()}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{TRAINING_VIEW}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui()}/#/models/{name}/versions/{version}"


UI_ENV = "M2M_MLFLOW_UI_URL"
DEFAULT_UI = "http://127.0.0.1:5000"
TRAINING_VIEW = "workflowType=machine_learning"


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={"compute": ComputeResource(), "dvc": DvcResource(), "mlflow": MlflowResource()}
    )
