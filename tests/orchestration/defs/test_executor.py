"""The executor: the run's own processes by default, Celery workers when a broker is configured."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.defs.executor import BROKER_ENV, celery_config


def test_without_a_broker_steps_run_in_the_runs_own_processes(monkeypatch):
    monkeypatch.delenv(BROKER_ENV, raising=False)
    job = defs().resolve_job_def("train_and_evaluate")
    assert job.executor_def.name == "multi_or_in_process_executor"


def test_with_a_broker_every_job_runs_its_steps_on_celery_workers(monkeypatch):
    monkeypatch.setenv(BROKER_ENV, "redis://broker.example.org:6379/0")
    monkeypatch.delenv("M2M_CELERY_BACKEND", raising=False)
    definitions = defs()
    for job in ("prepare_captions", "generate_mis_shards", "train_and_evaluate"):
        assert definitions.resolve_job_def(job).executor_def.name == "celery", job
    config = celery_config()
    assert config["broker"] == {"env": BROKER_ENV} and config["backend"] == {"env": BROKER_ENV}
    assert config["config_source"]["task_acks_late"] is True  # a busy GPU worker holds no second step
    monkeypatch.setenv("M2M_CELERY_BACKEND", "redis://broker.example.org:6379/1")
    assert celery_config()["backend"] == {"env": "M2M_CELERY_BACKEND"}


@pytest.mark.parametrize("broker", ["broker.example.org:6379", "redis://", "redis://host; rm -rf /"])
def test_a_broker_that_is_no_url_is_one_clear_error(monkeypatch, broker):
    monkeypatch.setenv(BROKER_ENV, broker)
    with pytest.raises(dg.DagsterInvariantViolationError, match=rf"^{BROKER_ENV}: expected a broker URL"):
        celery_config()
