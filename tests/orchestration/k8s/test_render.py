"""orchestration/k8s/render.py: every run's and step's Job as YAML, from the instance in $DAGSTER_HOME."""

from __future__ import annotations

import yaml

from orchestration.k8s import render
from tests.orchestration.k8s.conftest import IMAGE


def test_it_prints_a_job_per_run_and_step_the_heavy_ones_with_a_gpu(tmp_path, monkeypatch, capsys, instance_config, k8s_defs):
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("M2M_IMAGE", IMAGE)
    assert render.main([]) == 0
    jobs = list(yaml.safe_load_all(capsys.readouterr().out))
    runs = [job for job in jobs if job["metadata"]["labels"]["app.kubernetes.io/component"] == "run_worker"]
    steps = {job["metadata"]["labels"]["dagster/op"]: job for job in jobs if job not in runs}
    assert len(runs) == len(list(k8s_defs.resolve_all_job_defs()))
    assert all(job["kind"] == "Job" and job["apiVersion"] == "batch/v1" for job in jobs)
    gpu = {name for name, job in steps.items()
           if "nvidia.com/gpu" in job["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})}
    assert {"mis_shards", "m2m_self_pretrained", "evaluation"} <= gpu and "filtered_captions" not in gpu


def test_an_instance_without_the_k8s_launcher_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert render.main([]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip().splitlines() == [
        "$DAGSTER_HOME/dagster.yaml: run_launcher is DefaultRunLauncher, not dagster_k8s.K8sRunLauncher "
        "(copy deploy/k8s/dagster.yaml there)"
    ]
