"""Where a run's steps execute: in the run's own processes (Dagster's default), or — with
``M2M_CELERY_BROKER`` set — on Celery workers, possibly on other machines (docs/scale-out.md).

Under Celery a heavy step (the ``gpu`` pool) goes to the ``gpu`` queue, which one worker per GPU serves
with ``CUDA_VISIBLE_DEVICES`` set to its GPU and a concurrency of 1 (``scripts/worker.sh gpu N``); every
other step goes to Celery's ``dagster`` queue (``scripts/worker.sh light``). Workers load the same code
location from the same project folder, and read the run from the shared instance (PostgreSQL across
machines). The executor's settings are ``deploy/celery.yaml``, which the workers read too, so both
ends agree on the broker and on how tasks are acknowledged.
"""

import os
import re
from pathlib import Path

import dagster as dg
import yaml

BROKER_ENV = "M2M_CELERY_BROKER"
BACKEND_ENV = "M2M_CELERY_BACKEND"  # where workers leave step results; the broker when unset
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "celery.yaml"
GPU_QUEUE = "gpu"
LIGHT_QUEUE = "dagster"  # dagster-celery's default queue
BROKER_URL = re.compile(r"(redis|rediss|amqp|pyamqp|sqs)://\S+")


def celery_config() -> dict:
    """The executor's config from ``deploy/celery.yaml`` (broker and backend read from the environment
    at run time, so no credential is written anywhere)."""
    broker = os.environ.get(BROKER_ENV, "")
    if not BROKER_URL.fullmatch(broker):
        raise dg.DagsterInvariantViolationError(
            f"{BROKER_ENV}: expected a broker URL such as redis://host:6379/0, got {broker!r}")
    config = yaml.safe_load(CONFIG.read_text())["execution"]["config"]
    if not os.environ.get(BACKEND_ENV):
        config["backend"] = {"env": BROKER_ENV}
    return config


@dg.definitions
def executor() -> dg.Definitions:
    if not os.environ.get(BROKER_ENV):
        return dg.Definitions()
    from dagster_celery import celery_executor

    return dg.Definitions(executor=celery_executor.configured(celery_config(), name="celery"))
