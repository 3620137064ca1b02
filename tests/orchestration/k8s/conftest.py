"""The deployment of deploy/k8s/ as a Dagster instance would load it, without a cluster."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.k8s import pods
from orchestration.k8s.definitions import defs
from orchestration.project import REPO

INSTANCE_CONFIG = REPO / "deploy" / "k8s" / "dagster.yaml"
IMAGE = "registry.example.org/m2m:0123abc"


def kubeconfig(path: Path) -> Path:
    """A kubeconfig naming a cluster nobody listens for: the launcher loads one, nothing calls it."""
    cluster = {"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}
    context = {"name": "none", "context": {"cluster": "none", "user": "none"}}
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "none",
                                    "clusters": [cluster], "users": [{"name": "none", "user": {}}],
                                    "contexts": [context]}))
    return path


@pytest.fixture(scope="module")
def instance_config(tmp_path_factory) -> dict:
    """deploy/k8s/dagster.yaml, its launcher pointed at a kubeconfig instead of the in-cluster one."""
    config = yaml.safe_load(INSTANCE_CONFIG.read_text())
    config["run_launcher"]["config"].update(
        load_incluster_config=False, kubeconfig_file=str(kubeconfig(tmp_path_factory.mktemp("kube") / "config"))
    )
    return config


@pytest.fixture(scope="module")
def launcher(instance_config):
    """The instance's K8sRunLauncher, as Dagster builds it from the deployment's dagster.yaml (with the
    image the deployment names in $M2M_IMAGE)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("M2M_IMAGE", IMAGE)
        with dg.instance_for_test(overrides=instance_config) as instance:
            yield instance.run_launcher


@pytest.fixture(scope="module")
def k8s_defs() -> dg.Definitions:
    return defs()


@pytest.fixture(scope="module")
def executor_config(k8s_defs) -> dict:
    """deploy/k8s/executor.yaml as Dagster processes it."""
    return pods.executor_config(k8s_defs)
