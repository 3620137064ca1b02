"""Resources: where the heavy steps compute, the DVC project, and the MLflow store.

Each is a ``ConfigurableResource`` so a deployment swaps values (a GPU node, a team MLflow server)
without touching the assets.
"""

import os
import re
import shlex

import dagster as dg
from pydantic import Field

from orchestration.dvc_cli import Dvc
from orchestration.project import project_root

DTYPES = {"float32": "no", "float16": "fp16", "bfloat16": "bf16"}  # -> accelerate's mixed precision


class ComputeResource(dg.ConfigurableResource):
    """The device, precision and process count the commands of heavy steps run with.

    The values reach each command through the environment (``M2M_DEVICE``, ``M2M_DTYPE``, and
    accelerate's own ``ACCELERATE_MIXED_PRECISION`` / ``ACCELERATE_USE_CPU``; ``cuda:N`` selects the
    GPU with ``CUDA_VISIBLE_DEVICES``); with ``num_processes > 1`` training commands run under
    ``accelerate launch`` (DDP over that many GPUs).
    """

    device: str = Field(default="auto", description="auto (cuda when present, else cpu), cpu, cuda, cuda:N")
    dtype: str = Field(default="float32", description="float32, float16 or bfloat16")
    num_processes: int = Field(default=1, description="training processes (GPUs) for accelerate launch")

    def validate(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"compute.device: expected auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"compute.dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.num_processes < 1:
            raise ValueError(f"compute.num_processes: expected >= 1, got {self.num_processes}")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

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

    def launch(self, cmd: str) -> str:
        """``cmd`` as it should start: ``m2m train ...`` under ``accelerate launch`` with several processes.

        ``--multi_gpu`` is what makes Accelerate start several processes at all: without it a CPU run
        is one process whatever ``--num_processes`` says; with it and ``ACCELERATE_USE_CPU`` the
        processes train on the CPU over gloo. ``accelerate launch`` hands its own ``--mixed_precision``
        to the processes, so the compute dtype is passed on explicitly. ``--main_process_port 0`` has
        Accelerate take a free port, so two trainings on one host never fight over its default 29500.
        The result is a plain command line (``shlex.split`` gives back the words).
        """
        words = shlex.split(cmd)
        if self.num_processes > 1 and words[:2] == ["m2m", "train"]:
            launcher = [
                "accelerate", "launch", "--multi_gpu", "--num_processes", str(self.num_processes),
                "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", DTYPES[self.dtype],
                "--dynamo_backend", "no", "-m", "m2m",
            ]
            return shlex.join(launcher + words[1:])
        return cmd


class DvcResource(dg.ConfigurableResource):
    """The DVC project the assets materialize into, and the ``dvc`` executable that manages it."""

    project_root: str = Field(default="", description="folder of dvc.yaml; empty: $M2M_PROJECT_ROOT or this checkout")
    executable: str = Field(default="", description="dvc executable; empty: $M2M_DVC, .venv-dvc, PATH")

    def cli(self) -> Dvc:
        return Dvc(self.project_root or project_root(), self.executable or None)


class MlflowResource(dg.ConfigurableResource):
    """The MLflow tracking store and model registry, and the UI that shows them."""

    tracking_uri: str = Field(
        default="", description="empty: $MLFLOW_TRACKING_URI, else sqlite under the project's mlflow/"
    )
    ui_url: str = Field(default="http://127.0.0.1:5000", description="where `mlflow ui` serves this store")

    def configure(self, root: str) -> str:
        from m2m import tracking

        return tracking.configure(root, self.tracking_uri or None)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={"compute": ComputeResource(), "dvc": DvcResource(), "mlflow": MlflowResource()}
    )
