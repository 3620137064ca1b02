"""scripts/worker.sh: what it serves, and bad arguments or settings as one line before anything starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def worker(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("M2M_", "DAGSTER_HOME"))}
    return subprocess.run(["bash", str(REPO / "scripts" / "worker.sh"), *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=60)


@pytest.mark.parametrize("args", [(), ("gpu",), ("gpu", "one"), ("gpu", "0;reboot"), ("light", "2"), ("cpu",)])
def test_a_wrong_kind_or_gpu_index_is_the_usage_line(args):
    result = worker(*args, M2M_CELERY_BROKER="redis://127.0.0.1:1/0", DAGSTER_HOME="/nonexistent")
    assert result.returncode == 2
    assert result.stderr.strip() == "usage: scripts/worker.sh gpu N | light   (N: the GPU's index on this machine)"


@pytest.mark.parametrize(("env", "message"), [
    ({"DAGSTER_HOME": "/srv/dagster"}, "M2M_CELERY_BROKER: set M2M_CELERY_BROKER to the broker URL"),
    ({"M2M_CELERY_BROKER": "redis://127.0.0.1:1/0"}, "DAGSTER_HOME: set DAGSTER_HOME to the folder of the shared instance"),
    ({"M2M_CELERY_BROKER": "redis://127.0.0.1:1/0", "DAGSTER_HOME": "/srv/dagster", "M2M_WORKER_NAME": "gpu 0"},
     "M2M_WORKER_NAME: letters, digits, '.', '_' and '-' only, got 'gpu 0'"),
])
def test_a_missing_or_bad_setting_is_one_line_naming_it(env, message):
    result = worker("gpu", "0", **env)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_bad_light_concurrency_is_one_line():
    result = worker("light", M2M_CELERY_BROKER="redis://127.0.0.1:1/0", DAGSTER_HOME="/srv/dagster",
                    M2M_LIGHT_CONCURRENCY="0")
    assert result.returncode == 2 and "M2M_LIGHT_CONCURRENCY: expected a positive number, got '0'" in result.stderr
