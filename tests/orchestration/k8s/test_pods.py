"""orchestration/k8s/pods.py: the pods every run and every step of the project get on Kubernetes,
rendered from the project's own definitions and deploy/k8s/ with dagster-k8s's functions."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.k8s import pods
from orchestration.runs.pool import POOL
from tests.orchestration.k8s.conftest import IMAGE

GPU = "nvidia.com/gpu"


def heavy_assets(definitions: dg.Definitions) -> set[str]:
    graph = definitions.resolve_asset_graph()
    return {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).pools == {POOL}}


def container(manifest: dict) -> dict:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def steps(launcher, k8s_defs, executor_config) -> dict[str, dict]:
    """Every step of every job, as the k8s_job_executor would submit it."""
    return {node.name: pods.as_manifest(pods.step_job(launcher, executor_config, job, node.name))
            for job in k8s_defs.resolve_all_job_defs() for node in job.graph.nodes}


def test_every_heavy_step_asks_for_one_gpu_and_nothing_else_limits_it(steps, k8s_defs):
    heavy = heavy_assets(k8s_defs)
    assert {"mis_shards", "m2m_self_pretrained", "m2m_dino_pretrained", "m2m_nvs_finetuned",
            "m2m_procedure_finetuned", "evaluation"} <= heavy
    assert heavy <= set(steps)  # every heavy asset is a step of some job
    for name in heavy:
        resources = container(steps[name])["resources"]
        # the GPU alone: a limit leaking in from the launcher (memory, cpu) would cap a training
        assert resources["limits"] == {GPU: "1"}, name
        assert resources["requests"] == {"cpu": "1", "memory": "4Gi"}, name


def test_light_steps_and_run_pods_ask_for_no_gpu(steps, k8s_defs, launcher):
    heavy = heavy_assets(k8s_defs)
    light = set(steps) - heavy
    assert {"filtered_captions", "mis_dataset", "nvs_data", "mis_dataset_shards_match_manifest"} <= light
    for name in light:
        assert GPU not in container(steps[name])["resources"].get("limits", {}), name
    for job in k8s_defs.resolve_all_job_defs():
        resources = container(pods.as_manifest(pods.run_job(launcher, job)))["resources"]
        assert GPU not in resources.get("limits", {}), job.name
        assert resources["requests"] == {"cpu": "500m", "memory": "1Gi"}, job.name


def test_every_pod_runs_the_image_on_the_project_volume_offline_against_the_team_mlflow(steps, k8s_defs, launcher):
    runs = {job.name: pods.as_manifest(pods.run_job(launcher, job)) for job in k8s_defs.resolve_all_job_defs()}
    for name, manifest in {**steps, **runs}.items():
        spec = manifest["spec"]["template"]["spec"]
        box = container(manifest)
        assert box["image"] == IMAGE, name
        env = {var["name"]: var.get("value") for var in box["env"]}
        root = env["M2M_PROJECT_ROOT"]
        assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1", name
        assert env["MLFLOW_TRACKING_URI"].startswith("http://"), name
        assert env["DAGSTER_HOME"] and not env["DAGSTER_HOME"].startswith(root), name  # device leases: per pod
        mounts = {mount["mountPath"]: mount for mount in box["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        project, weights = mounts[root], mounts[f"{root}/weights"]
        assert volumes[project["name"]]["persistentVolumeClaim"]["claimName"], name
        assert not project.get("readOnly"), name
        assert weights["readOnly"] and volumes[weights["name"]]["persistentVolumeClaim"]["readOnly"], name
        assert spec["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0, name


def test_per_step_config_gives_one_training_eight_gpus_and_leaves_the_others(launcher, k8s_defs, executor_config):
    """docs/scale-out.md: a training on 8 GPUs (params.yaml num_processes) is one step's override."""
    job = k8s_defs.resolve_job_def("train_and_evaluate")
    eight = {"container_config": {"resources": {"limits": {GPU: "8"}}}}
    config = {**executor_config, "per_step_k8s_config": {"m2m_self_pretrained": eight}}
    limits = {step: container(pods.as_manifest(pods.step_job(launcher, config, job, step)))["resources"]["limits"]
              for step in ("m2m_self_pretrained", "m2m_dino_pretrained")}
    assert limits == {"m2m_self_pretrained": {GPU: "8"}, "m2m_dino_pretrained": {GPU: "1"}}
    manifest = pods.as_manifest(pods.step_job(launcher, config, job, "m2m_self_pretrained"))
    assert manifest["metadata"]["labels"]["dagster/op"] == "m2m_self_pretrained"
