"""Submit the planned runs as their dependencies succeed, and print what each one does as it happens.

Runs are submitted to the webserver like the UI's Materialize button (``server.DagsterServer.launch_run``) and
read back from the instance's event log (``DagsterInstance.get_records_for_run``): the steps' own log
lines (the commands' progress), materializations, checks and failures, each line prefixed with the
run's name so that runs side by side stay readable. A run whose worker died is failed by run
monitoring and started again by run retries (``.dagster/dagster.yaml``); the retry is followed in its
place. A failed run's dependents are not submitted; independent runs go on to their end.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import dagster as dg

from orchestration.runs.plan import RunSpec
from orchestration.runs.tags import MAIN_COMMAND_TAG, MAIN_COMMAND_VALUE

# Dagster's own run tags (strings of its public run-tag vocabulary).
PARENT_RUN_TAG, WILL_RETRY_TAG, PARTITION_TAG = "dagster/parent_run_id", "dagster/will_retry", "dagster/partition"
# The run log on the console: what the steps say (INFO), not every engine event (DEBUG).
RUN_CONFIG = {"execution": {"config": {"in_process": {}}}, "loggers": {"console": {"config": {"log_level": "INFO"}}}}
POLL_S = 0.5
# How long a failed run's will-retry tag and retry may take to appear.
RETRY_WAIT_S = 120.0
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def say(line: str, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


@dataclass
class Followed:
    """A run being followed: its name, id, event-log cursor, and when it was submitted."""

    name: str
    run_id: str
    cursor: str | None = None
    start: float = field(default_factory=time.monotonic)
    retry_deadline: float | None = None


def describe(name: str, entry) -> list[tuple[str, bool]]:
    """What one event of run ``name`` shows on the console: (line, is_error) pairs."""
    event = entry.dagster_event
    if event is None:
        if entry.level >= logging.INFO and entry.user_message:
            return [(f"[{name}] {entry.user_message}", entry.level >= logging.ERROR)]
        return []
    if event.is_step_materialization:
        materialization = event.step_materialization_data.materialization
        ran = materialization.metadata.get("ran")
        state = "" if ran is None else " (ran)" if ran.value else " (up to date)"
        partition = f" [{materialization.partition}]" if materialization.partition else ""
        return [(f"[{name}] materialized {materialization.asset_key.to_user_string()}{partition}{state}", False)]
    if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
        check = event.asset_check_evaluation_data
        warn = check.severity == dg.AssetCheckSeverity.WARN
        outcome = "passed" if check.passed else "warning" if warn else "FAILED"
        detail = "" if check.passed or not check.description else f" ({check.description})"
        return [(f"[{name}] check {check.asset_key.to_user_string()}.{check.check_name}: {outcome}{detail}", False)]
    if event.is_step_failure:
        data = event.step_failure_data
        user = data.user_failure_data
        message = (user.description if user and user.description else data.error.message if data.error else "").strip()
        line = message.splitlines()[-1] if message else "failed"
        return [(f"[{name}] FAILED {event.step_key}: {line}", True)]
    if event.event_type == dg.DagsterEventType.RUN_FAILURE:
        return [(f"[{name}] run failed: {' '.join((event.message or '').split())}", True)]
    if event.event_type == dg.DagsterEventType.STEP_START:
        return [(f"[{name}] {event.step_key} started", False)]
    return []


class Follower:
    """Submits planned runs and prints their events until every run has ended."""

    def __init__(self, server, instance: dg.DagsterInstance):
        self.server, self.instance = server, instance
        self.active: dict[str, Followed] = {}
        self.run_ids: list[str] = []  # every run followed, retries included

    def submit(self, spec: RunSpec) -> Followed:
        tags = {MAIN_COMMAND_TAG: MAIN_COMMAND_VALUE}
        if spec.partition is not None:
            tags[PARTITION_TAG] = spec.partition
        run_id = self.server.launch_run(
            spec.job, RUN_CONFIG, tags, list(spec.assets) if spec.assets else None, list(spec.checks),
        )
        say(f"[{spec.key}] submitted run {run_id}")
        return self.follow(spec.key, run_id)

    def follow(self, name: str, run_id: str, start: float | None = None) -> Followed:
        """Follow run ``run_id`` under ``name`` (in place of the run followed so far under it, if any)."""
        followed = Followed(name, run_id, start=time.monotonic() if start is None else start)
        self.active[name] = followed
        self.run_ids.append(run_id)
        return followed

    def print_new_events(self, followed: Followed) -> None:
        while True:
            connection = self.instance.get_records_for_run(followed.run_id, cursor=followed.cursor, limit=500)
            for record in connection.records:
                for line, error in describe(followed.name, record.event_log_entry):
                    say(line, error)
            followed.cursor = connection.cursor
            if not connection.has_more:
                return

    def retry_of(self, run_id: str) -> str | None:
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_TAG: run_id}), limit=1)
        return runs[0].run_id if runs else None

    def poll(self) -> dict[str, dg.DagsterRunStatus]:
        """Print what happened since the last poll; the runs that ended, by name (a run that Dagster
        retries is replaced by its retry and has not ended)."""
        ended = {}
        for name, followed in list(self.active.items()):
            self.print_new_events(followed)
            run = self.instance.get_run_by_id(followed.run_id)
            if run is None or run.status not in ENDED:
                continue
            will_retry = run.tags.get(WILL_RETRY_TAG)
            if run.status == dg.DagsterRunStatus.FAILURE and will_retry != "false" and self.instance.run_retries_enabled:
                # Dagster tags a failed run with whether it will retry it just after marking it failed
                retry = self.retry_of(run.run_id) if will_retry == "true" else None
                if retry is None:
                    followed.retry_deadline = followed.retry_deadline or time.monotonic() + RETRY_WAIT_S
                    if time.monotonic() < followed.retry_deadline:
                        continue
                else:
                    say(f"[{name}] run {run.run_id} failed; Dagster retries it as run {retry}")
                    self.follow(name, retry, start=followed.start)
                    continue
            elapsed = time.monotonic() - followed.start
            if run.status == dg.DagsterRunStatus.SUCCESS:
                say(f"[{name}] done in {elapsed:.0f} s (run {run.run_id})")
            else:
                say(f"[{name}] {run.status.value.lower()} after {elapsed:.0f} s (run {run.run_id})", error=True)
            ended[name] = run.status
            del self.active[name]
        return ended

    def run(self, specs: list[RunSpec]) -> dict[str, dg.DagsterRunStatus | None]:
        """Submit ``specs`` as their ``after`` runs succeed; wait for all. Each run's final status, None
        for a run not submitted because a run it needs did not succeed."""
        outcome: dict[str, dg.DagsterRunStatus | None] = {}
        pending = list(specs)
        while pending or self.active:
            for spec in list(pending):
                needs = [outcome.get(key, "waiting") for key in spec.after]
                if all(status == dg.DagsterRunStatus.SUCCESS for status in needs):
                    pending.remove(spec)
                    self.submit(spec)
                elif any(status not in ("waiting", dg.DagsterRunStatus.SUCCESS) for status in needs):
                    pending.remove(spec)
                    outcome[spec.key] = None
                    say(f"[{spec.key}] not started: a run it needs did not succeed", error=True)
            outcome.update(self.poll())
            if self.active:
                time.sleep(POLL_S)
        return outcome

    def wait_for(self, run_ids: dict[str, str]) -> dict[str, dg.DagsterRunStatus | None]:
        """Follow runs this command did not submit (by name; left in progress by an earlier one) to their end."""
        for name, run_id in run_ids.items():
            self.follow(name, run_id)
            say(f"[{name}] following run {run_id}, already in progress")
        return self.run([])
