"""The ``gpu`` pool: how many heavy steps run at once.

Its limit is the number of devices the machine has (its GPUs; on a CPU machine, 1), unless the
instance's own ``concurrency.pools.default_limit`` (``$DAGSTER_HOME/dagster.yaml``) says otherwise: that
setting wins, so a team sets the limit where Dagster keeps it. The main command writes the limit into
the instance before it submits runs (the UI's Concurrency page shows it); a heavy step on a CPU machine
splits the cores into that many devices (``devices.py``).
"""

from __future__ import annotations

import dagster as dg

POOL = "gpu"


def configured_default(instance: dg.DagsterInstance) -> int | None:
    """``concurrency.pools.default_limit`` of the instance's dagster.yaml, if it sets one."""
    limit = (instance.get_concurrency_config().pool_config.default_pool_limit)
    return int(limit) if limit is not None else None


def limit_for(instance: dg.DagsterInstance, device_count: int) -> int:
    """The pool's limit: the instance's setting, else one heavy step per device."""
    configured = configured_default(instance)
    return configured if configured is not None else max(1, device_count)


def set_limit(instance: dg.DagsterInstance, device_count: int) -> int:
    """Write the pool's limit into the instance; returns it."""
    limit = limit_for(instance, device_count)
    instance.event_log_storage.set_concurrency_slots(POOL, limit)
    return limit


def current_limit(instance: dg.DagsterInstance) -> int:
    """The limit the instance holds for the pool now (1 when none was ever set)."""
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return max(1, info.slot_count or configured_default(instance) or 1)
