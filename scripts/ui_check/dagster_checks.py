"""Checks of what Dagster's pages list: job runs, the promotion's tag, the asset graph, the sensor's ticks."""

from __future__ import annotations

import time

from ui_check.apis import Dagster
from ui_check.common import JOBS, REFUSED_TAG, SENSOR, CheckFailed, tags_of


def check_job_pages(dagster: Dagster) -> str:
    """Each job of the main command lists its runs on its page."""
    counts = {job: len(dagster.runs(job)) for job in JOBS}
    if not all(counts.values()):
        raise CheckFailed(f"a job page lists no runs: {counts}")
    return ", ".join(f"{job} {n} run(s)" for job, n in counts.items())


def check_sensor(dagster: Dagster, started: float, timeout: float = 180) -> str:
    """The sensor's first ticks under this ``dagster dev`` launch no promotion run: the first after the main
    command skips its evaluation as the main command's, later ones find no new evaluation."""
    deadline = time.monotonic() + timeout
    status, ticks = dagster.sensor_ticks(started)
    while not ticks and time.monotonic() < deadline:
        time.sleep(5)
        status, ticks = dagster.sensor_ticks(started)
    if not ticks:
        raise CheckFailed(f"sensor {SENSOR} ({status}) did not tick within {timeout:.0f} s")
    time.sleep(5)  # a run a tick requested is created right after it
    launched = dagster.runs("promote_champion", created_after=started)
    seen = "; ".join(f"{t['status']}: {t['skipReason'] or (t['error'] or {}).get('message', '')}" for t in ticks)
    if launched or any(t["runIds"] for t in ticks) or any(t["status"] == "FAILURE" for t in ticks):
        raise CheckFailed(f"{len(ticks)} tick(s) [{seen}], {len(launched)} new promote_champion run(s)")
    reasons = [t["skipReason"] or "" for t in ticks]
    if not all("main command" in reason or reason.startswith("No new materialization") for reason in reasons):
        raise CheckFailed(f"unexpected skip reason(s): {seen}")
    return f"{status}, {len(ticks)} tick(s), no new run [{seen}]"


def check_promotion_tag(dagster: Dagster) -> str:
    """The latest promotion run shows which promotions it refused (``none`` when it refused none)."""
    runs = dagster.runs("promote_champion")
    values = [tags_of(run).get(REFUSED_TAG) for run in runs]
    if not runs or values[0] is None:
        raise CheckFailed(f"the latest promote_champion run has no tag {REFUSED_TAG}")
    tagged = sum(value is not None for value in values)
    return f"latest run {runs[0]['runId'][:8]}: {REFUSED_TAG}={values[0]!r} ({tagged}/{len(runs)} runs tagged)"


def check_asset_graph(dagster: Dagster) -> str:
    """The graph shows every asset and asset check the code location defines, each asset materialized and
    each check passed on its latest materialization (the node's "Asset checks: N / N Passed")."""
    from orchestration.definitions import defs  # this checkout's, as `dagster dev` here loads them

    graph = defs().resolve_asset_graph()
    expected = {key.to_user_string() for key in graph.get_all_asset_keys()}
    expected_checks = {f"{key.asset_key.to_user_string()}.{key.name}" for key in graph.asset_check_keys}
    nodes = dagster.query(
        "{ assetNodes(loadMaterializations: true) { assetKey { path } assetMaterializations(limit: 1) { timestamp }"
        " assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } }"
        " } }"
    )["assetNodes"]
    shown = {"/".join(n["assetKey"]["path"]) for n in nodes}
    checks = {f"{'/'.join(n['assetKey']['path'])}.{c['name']}" for n in nodes
              for c in n["assetChecksOrError"].get("checks", [])}
    unmaterialized = sorted("/".join(n["assetKey"]["path"]) for n in nodes if not n["assetMaterializations"])
    not_passed = sorted(f"{'/'.join(n['assetKey']['path'])}.{c['name']} "
                        f"({(c['executionForLatestMaterialization'] or {}).get('status', 'never run')})"
                        for n in nodes for c in n["assetChecksOrError"].get("checks", [])
                        if (c["executionForLatestMaterialization"] or {}).get("status") != "SUCCEEDED")
    if shown != expected or checks != expected_checks or unmaterialized or not_passed:
        raise CheckFailed(f"missing assets {sorted(expected - shown)}, missing checks "
                          f"{sorted(expected_checks - checks)}, never materialized {unmaterialized}, "
                          f"checks not passed {not_passed}")
    return f"{len(shown)} assets (all materialized), {len(checks)} asset checks (all passed)"
