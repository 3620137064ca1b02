"""The Kubernetes Jobs a run and each of its steps become, built with dagster-k8s's own functions.

``run_job`` is what ``K8sRunLauncher`` submits for a run, ``step_job`` what the ``k8s_job_executor``
submits for one step: the same container contexts merged in the same order (the launcher's, then the
executor's, then the step's ``dagster-k8s/config`` op tag, then ``per_step_k8s_config``), turned into
a ``V1Job`` by ``construct_dagster_k8s_job``. Nothing talks to a cluster; the command a pod runs
(``dagster api execute_run`` / ``execute_step``, which needs a stored run) is left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
import kubernetes.client
from dagster_k8s import K8sRunLauncher, construct_dagster_k8s_job
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_k8s_job_name, get_user_defined_k8s_config

from orchestration.defs.jobs import TRAIN_JOB

# The executor's settings that describe a pod, under the names K8sContainerContext gives them.
EXECUTOR_CONTEXT_FIELDS = (
    "image_pull_policy", "image_pull_secrets", "service_account_name", "env_config_maps", "env_secrets",
    "env_vars", "volume_mounts", "volumes", "labels", "resources", "scheduler_name", "security_context",
)


def executor_context(config: Mapping) -> K8sContainerContext:
    """The container context of a processed ``k8s_job_executor`` config (as ``k8s_job_executor`` builds it)."""
    return K8sContainerContext(
        **{field: config.get(field) for field in EXECUTOR_CONTEXT_FIELDS},
        namespace=config.get("job_namespace"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})),
    )


def executor_config(definitions: dg.Definitions, job: str = TRAIN_JOB) -> dict:
    """The ``k8s_job_executor`` config of ``definitions`` as Dagster processes it (the file and the
    defaults). Every job shares the executor; ``job`` is one that needs no run config of its own."""
    return dg.validate_run_config(definitions.resolve_job_def(job), {})["execution"]["k8s"]


def run_job(launcher: K8sRunLauncher, job: dg.JobDefinition, run_id: str = "0" * 8) -> kubernetes.client.V1Job:
    """The Job of a run of ``job``: its pod is the run worker, configured by the launcher and the
    job's run tags."""
    run = dg.DagsterRun(job_name=job.name, run_id=run_id, tags=dict(job.tags))
    context = launcher.get_container_context_for_run(run)
    name = f"dagster-run-{run_id}"
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=None, run_launcher=launcher),
        args=None,
        job_name=name,
        pod_name=name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job.name, "dagster/run-id": run_id},
    )


def step_job(
    launcher: K8sRunLauncher, executor_config: Mapping, job: dg.JobDefinition, step: str, run_id: str = "0" * 8
) -> kubernetes.client.V1Job:
    """The Job of step ``step`` (an op of ``job``) under the ``k8s_job_executor`` configured by
    ``executor_config`` (processed, as :func:`executor_config` gives it)."""
    run = dg.DagsterRun(job_name=job.name, run_id=run_id, tags=dict(job.tags))
    op_tags = job.graph.node_named(step).tags
    per_step = UserDefinedDagsterK8sConfig.from_dict(executor_config.get("per_step_k8s_config", {}).get(step, {}))
    context = (
        K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
        .merge(executor_context(executor_config))
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
        .merge(K8sContainerContext(run_k8s_config=per_step))
    )
    name = f"dagster-step-{get_k8s_job_name(run_id, step)}"
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(executor_config.get("job_image"), launcher),
        args=None,
        job_name=name,
        pod_name=name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": job.name, "dagster/op": step, "dagster/run-id": run_id},
    )


def as_manifest(job: kubernetes.client.V1Job) -> dict:
    """The Job as ``kubectl`` reads it (camelCase keys, no empty fields)."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)
