"""The run launcher of the project's instance: Dagster's own, plus the health check it leaves out.

``DefaultRunLauncher`` starts each run in a process of its own (the run worker) on this machine, but
cannot tell Dagster's run monitoring whether that process is still alive, so a run whose worker was
killed (``kill -9``, out of memory, the machine's reboot) stays STARTED for ever and keeps its ``gpu``
pool slot. ``LocalRunLauncher`` answers that one question: the worker's process id is in the run's
own event log ("Started process for run (pid: N)"), and a process that no longer exists, is a zombie,
or started after that event (its id reused) is gone. Everything else is Dagster's: run monitoring
marks such a run failed with the reason, run retries start it again (training resumes from its
checkpoint), and the pool slots of ended runs are freed (``.dagster/dagster.yaml``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # run monitoring's interface, exported only here

STARTED_PROCESS = "Started process for run"


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, Linux); None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int, started_at: float, slack_s: float = 5.0) -> bool:
    """True while the run worker ``pid`` that reported itself at ``started_at`` still runs."""
    began = process_started_at(pid)
    return began is not None and began <= started_at + slack_s


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The newest run worker of the run: its process id and when it said it started."""
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    for event in reversed(events):
        if (event.dagster_event.message or "").startswith(STARTED_PROCESS):
            pid = event.dagster_event.engine_event_data.metadata.get("pid")
            if pid is not None and str(pid.value).isdigit():
                return int(pid.value), event.timestamp
    return None


class LocalRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers Dagster's run monitoring can check."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run.run_id)
        if worker is None:  # not launched by a launcher (an in-process run): its caller's to watch
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker of this launcher")
        pid, started_at = worker
        if worker_alive(pid, started_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"its run worker (pid {pid}) is gone: killed or crashed", run_worker_id=str(pid)
        )
