"""orchestration/k8s/definitions.py: the cluster's code location is the project's, every step a Job."""

from __future__ import annotations

import pytest
import yaml

from orchestration.definitions import defs as local_defs
from orchestration.k8s import definitions


def test_the_code_location_is_the_projects_with_every_job_on_the_k8s_executor(k8s_defs, executor_config):
    local = local_defs()
    assert {job.name for job in k8s_defs.resolve_all_job_defs()} == {job.name for job in local.resolve_all_job_defs()}
    assert set(k8s_defs.resolve_asset_graph().get_all_asset_keys()) == set(local.resolve_asset_graph().get_all_asset_keys())
    assert set(k8s_defs.resources) == set(local.resources)
    executors = {job.name: job.executor_def for job in k8s_defs.resolve_all_job_defs()}
    assert {executor.name for executor in executors.values()} == {"k8s"}
    assert len({id(executor) for executor in executors.values()}) == 1  # one executor, one config
    kept = definitions.executor_config()
    assert executor_config["max_concurrent"] == kept["max_concurrent"]
    assert executor_config["step_k8s_config"]["container_config"] == kept["step_k8s_config"]["container_config"]


def test_a_malformed_executor_file_is_a_one_line_error_naming_it(tmp_path):
    path = tmp_path / "executor.yaml"
    path.write_text(yaml.safe_dump(["max_concurrent", 4]))
    with pytest.raises(ValueError, match=r"executor.yaml: expected a mapping"):
        definitions.executor_config(path)
