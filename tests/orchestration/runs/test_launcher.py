"""The run launcher's health check: a run worker that lives is RUNNING; one killed, a zombie, or a pid
reused by another process is FAILED with the reason, which is what lets Dagster's run monitoring fail
the run and run retries start it again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import dagster as dg

# The engine event a run worker writes when it starts; dagster does not export its data class.
from dagster._core.events import EngineEventData

from orchestration.runs.launcher import LocalRunLauncher, worker_alive

WORKER = "import time; time.sleep(60)"


def instance_with_worker(tmp_path, pid: int, at: float | None = None):
    """An instance holding one run whose worker reported itself as process ``pid``."""
    instance = dg.DagsterInstance.local_temp(str(tmp_path), overrides={
        "run_launcher": {"module": "orchestration.runs.launcher", "class": "LocalRunLauncher"}})

    @dg.op
    def noop():
        pass

    @dg.job
    def job():
        noop()

    run = instance.create_run_for_job(job)
    instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                 EngineEventData(metadata={"pid": dg.MetadataValue.text(str(pid))}))
    return instance, run


def test_a_live_worker_is_running_and_a_killed_one_failed_with_the_reason(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", WORKER])
    try:
        instance, run = instance_with_worker(tmp_path, worker.pid)
        launcher = instance.run_launcher
        assert isinstance(launcher, LocalRunLauncher) and launcher.supports_check_run_worker_health
        assert launcher.check_run_worker_health(run).status.value == "RUNNING"
        worker.send_signal(signal.SIGKILL)
        time.sleep(0.2)  # not reaped yet: a zombie is gone too
        result = launcher.check_run_worker_health(run)
        assert result.status.value == "FAILED" and f"run worker (pid {worker.pid}) is gone" in result.msg
        worker.wait()
        assert launcher.check_run_worker_health(run).status.value == "FAILED"
    finally:
        worker.kill()
        worker.wait()


def test_a_pid_reused_by_a_later_process_is_not_the_worker(tmp_path):
    worker = subprocess.Popen([sys.executable, "-c", WORKER])
    try:
        assert worker_alive(worker.pid, time.time())
        assert not worker_alive(worker.pid, time.time() - 3600)  # it started long after the worker reported
    finally:
        worker.kill()
        worker.wait()
