"""Data freshness: whether each stage asset is still what its inputs make, as DVC sees it.

A team's data changes without anyone materializing anything: a new caption file is dropped in, params.yaml is
edited, a teammate's commit changes a stage's code. The asset check ``up_to_date`` of every stage asset asks DVC
(``dvc status`` of the asset's stages, through :class:`DvcResource`) whether the deps, params, command or outputs
it recorded in dvc.lock still hold, and warns with what changed. The checks run in their own job,
``check_freshness`` (from the UI: *Launchpad* of that job, or *Execute* on an asset's Checks tab), and hourly
under the schedule ``freshness_hourly``, which starts STOPPED like the other automation (a team that leaves
``dagster dev`` running turns it on). They are left out of the chain's own jobs: mid-chain, the stages not yet
run are stale by design.
"""

import dagster as dg

from orchestration.defs.resources import DvcResource
from orchestration.materialize.stage import describe_changes
from orchestration.dvc.stages import StageGroup, load_pipeline
from orchestration.project import project_root

CHECK = "up_to_date"
JOB = "check_freshness"
SCHEDULE = "freshness_hourly"
MAX_LISTED = 20  # stale stages named in a check's metadata


def stale_stages(dvc, group: StageGroup) -> dict[str, str]:
    """Each stage of ``group`` that DVC sees changed, with what changed."""
    found = {}
    for stage in group.stages:
        status = dvc.status(stage.name)  # DVC's own stage resolution
        if status:
            found[stage.name] = describe_changes(status)
    return found


def up_to_date_check(name: str, group: StageGroup) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=name,
        name=CHECK,
        description="DVC sees nothing changed since this asset was made: the deps (data and code), params, "
        "command and outputs of its dvc.yaml stage(s) are those dvc.lock records (`dvc status`).",
    )
    def _check(dvc: DvcResource) -> dg.AssetCheckResult:
        stale = stale_stages(dvc.cli(), group)
        metadata = {"stages": dg.MetadataValue.int(len(group.stages)), "stale": dg.MetadataValue.int(len(stale))}
        if stale:
            lines = [f"- `{stage}`: {what}" for stage, what in list(stale.items())[:MAX_LISTED]]
            if len(stale) > MAX_LISTED:
                lines.append(f"- … and {len(stale) - MAX_LISTED} more")
            metadata["changed"] = dg.MetadataValue.md("\n".join(lines) + f"\n\nMaterialize `{name}` to bring it up to date.")
        return dg.AssetCheckResult(passed=not stale, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)

    return _check


def build_freshness_checks(groups: dict[str, StageGroup]) -> list[dg.AssetChecksDefinition]:
    """One ``up_to_date`` check per stage asset."""
    return [up_to_date_check(name, group) for name, group in groups.items()]


def freshness_selection(groups: dict[str, StageGroup]) -> dg.AssetSelection:
    """The ``up_to_date`` checks, for jobs to run (``check_freshness``) or leave out (the chain's)."""
    return dg.AssetSelection.checks(*[dg.AssetCheckKey(dg.AssetKey(name), CHECK) for name in groups])


@dg.definitions
def freshness() -> dg.Definitions:
    groups = load_pipeline(project_root(), strict=False)
    job = dg.define_asset_job(
        JOB,
        selection=freshness_selection(groups),
        description="Asks DVC whether each stage asset is still what its inputs make (the `up_to_date` checks).",
    )
    return dg.Definitions(
        asset_checks=build_freshness_checks(groups),
        jobs=[job],
        schedules=[
            dg.ScheduleDefinition(
                name=SCHEDULE,
                job=job,
                cron_schedule="0 * * * *",
                default_status=dg.DefaultScheduleStatus.STOPPED,
                description="Every hour, the `up_to_date` checks: a warning on each asset whose data, params or "
                "code changed since it was made.",
            )
        ],
    )
