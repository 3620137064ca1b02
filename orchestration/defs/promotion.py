"""The registry jobs: promote each model's challenger to champion when it is better; roll back.

The promotion is an asset check of `evaluation` (run by the `promote_champion` job): a refused promotion
shows as a warning on the run and on the asset, with each model's reason, not as a plain success."""

import dagster as dg
from pydantic import Field

from m2m import registry
from orchestration.defs.resources import DvcResource, MlflowResource


REFUSED_TAG = "m2m/promotion_refused"  # the models whose promotion a run refused, shown with the run
PROMOTION_CHECK = "challengers_promoted"  # the check on `evaluation` that promotes, and warns on a refusal


class PromotionConfig(dg.Config):
    models: list[str] = Field(default=list(registry.DEFAULT_RULES), description="registered models to consider")
    metrics: list[str] = Field(
        default=[], description="rules NAME:min|max for every model; empty: each model's default rules"
    )


class RollbackConfig(dg.Config):
    model: str = Field(description="registered model, e.g. m2m-self")
    to_version: int = Field(default=0, description="version to make champion; 0: the previous champion")


def decisions_table(decisions: list[registry.Decision]) -> dg.MetadataValue:
    rows = ["| model | outcome | champion | reason |", "|---|---|---|---|"]
    for d in decisions:
        outcome = "refused" if d.refused else "changed" if d.changed else "unchanged"
        rows.append(f"| {d.model} | {outcome} | v{d.champion or '-'} | {d.reason} |")
    return dg.MetadataValue.md("\n".join(rows))


@dg.asset_check(
    asset="evaluation",
    name=PROMOTION_CHECK,
    description="Moves `champion` to each model's `challenger` when it beats the champion's metrics. Passes "
    "when no promotion was refused; a refusal (a challenger that is not better, a rolled-back version, an "
    "unknown model) is a warning, with the reason per model.",
)
def challengers_promoted(
    context: dg.AssetCheckExecutionContext, config: PromotionConfig, dvc: DvcResource, mlflow: MlflowResource
) -> dg.AssetCheckResult:
    mlflow.configure(str(dvc.cli().root))
    try:
        rules = [registry.Rule.parse(text) for text in config.metrics] or None
    except ValueError as err:
        raise dg.Failure(description=f"promote_champion config metrics: {err}", allow_retries=False) from None
    decisions = [registry.promote(model, rules) for model in config.models]
    for decision in decisions:
        (context.log.warning if decision.refused else context.log.info)(str(decision))
    refused = [d.model for d in decisions if d.refused]
    # a refusal is an outcome, not an error: the check warns, and the run's tag says which were refused
    context.instance.add_run_tags(context.run.run_id, {REFUSED_TAG: ", ".join(refused) or "none"})
    return dg.AssetCheckResult(
        passed=not refused,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"refused: {', '.join(refused)}" if refused else "no promotion refused",
        metadata={
            "decisions": decisions_table(decisions), "refused": dg.MetadataValue.text(", ".join(refused) or "none")
        },
    )


@dg.op(description="Point `champion` back at an earlier version (by default the previous champion).")
def rollback_model(
    context: dg.OpExecutionContext, config: RollbackConfig, dvc: DvcResource, mlflow: MlflowResource
) -> dg.Output[str]:
    mlflow.configure(str(dvc.cli().root))
    decision = registry.rollback(config.model, config.to_version or None)
    context.log.info(str(decision))
    if decision.refused:
        raise dg.Failure(description=str(decision), allow_retries=False)
    return dg.Output(str(decision), metadata={"decision": decisions_table([decision])})


promote_champion = dg.define_asset_job(
    "promote_champion",
    selection=dg.AssetSelection.checks(challengers_promoted),
    description="Gated promotion: `champion` moves only to a challenger that beats it; a refusal is a warning "
    "of the check `challengers_promoted`, with the reason.",
)


@dg.job(description="Roll `champion` back to an earlier model version.")
def rollback_champion():
    rollback_model()
