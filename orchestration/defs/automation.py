"""Declarative automation: what a team deployment re-materializes on its own.

``evaluation`` re-runs once any model it scores was materialized again (``AutomationCondition.eager()``: its
inputs updated, none missing or in progress). The sensor that evaluates the condition starts STOPPED: the main
command runs its own evaluation right after its trainings, and a second one started beside it would fight it
over the same outputs. A team that trains from the UI turns it on in Automation (docs/pipeline.md).
"""

import dagster as dg

EVALUATION = "evaluation"
EVALUATE_NEW_MODELS = "evaluate_new_models"
# Each asset's automation condition (assets.py attaches it); assets not named here are materialized on request.
CONDITIONS = {EVALUATION: dg.AutomationCondition.eager()}


@dg.definitions
def automation() -> dg.Definitions:
    return dg.Definitions(
        sensors=[
            dg.AutomationConditionSensorDefinition(
                EVALUATE_NEW_MODELS,
                target=dg.AssetSelection.assets(*CONDITIONS),
                default_status=dg.DefaultSensorStatus.STOPPED,
                run_tags={"m2m/launched_by": EVALUATE_NEW_MODELS},
                description="Evaluates the models again once any of them was materialized again (turn on where "
                "models are trained from the UI; the main command evaluates after its own trainings).",
            )
        ]
    )
