"""The code location of a Kubernetes deployment: the project's definitions, each step a Kubernetes Job.

The assets, checks, jobs and resources are the ones ``orchestration.definitions`` loads; only the
executor differs: dagster-k8s's ``k8s_job_executor``, configured from ``deploy/k8s/executor.yaml``, so
every step of a run gets a pod of its own and a heavy step's ``dagster-k8s/config`` op tag (its GPU)
applies to that pod alone. The run pods themselves come from the instance's ``K8sRunLauncher``
(``deploy/k8s/dagster.yaml``). A cluster's code server loads it with
``dagster api grpc -m orchestration.k8s.definitions``.
"""

from pathlib import Path

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from orchestration import definitions
from orchestration.project import REPO

EXECUTOR_CONFIG = REPO / "deploy" / "k8s" / "executor.yaml"


def executor_config(path: Path = EXECUTOR_CONFIG) -> dict:
    """The ``k8s_job_executor`` configuration kept in the repository."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of k8s_job_executor settings, got {type(config).__name__}")
    return config


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        definitions.defs(), dg.Definitions(executor=k8s_job_executor.configured(executor_config()))
    )
