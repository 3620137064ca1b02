"""Asset jobs in chain order: the inputs of the shards, the shards (one run per partition), the rest.

A run cannot mix the shard partitions with unpartitioned assets, so the chain is three jobs; a
backfill of ``generate_mis_shards`` over all partitions generates the shards in parallel runs (as
many at once as the ``gpu`` pool allows).
"""

import dagster as dg

from orchestration.defs.freshness import freshness_selection
from orchestration.defs.promotion import challengers_promoted
from orchestration.project import project_root
from orchestration.dvc.stages import load_pipeline

PREPARE_JOB = "prepare_captions"
SHARDS_JOB = "generate_mis_shards"
TRAIN_JOB = "train_and_evaluate"


@dg.definitions
def jobs() -> dg.Definitions:
    groups = load_pipeline(project_root(), strict=False)
    partitioned = dg.AssetSelection.assets(*[name for name, group in groups.items() if group.partitioned])
    upstream = partitioned.upstream()
    freshness = freshness_selection(groups)  # its own job: mid-chain, the stages not yet run are stale by design
    return dg.Definitions(
        jobs=[
            dg.define_asset_job(
                PREPARE_JOB,
                selection=upstream - partitioned - freshness,
                description="The raw and filtered captions the shards are drawn from.",
            ),
            dg.define_asset_job(
                SHARDS_JOB,
                selection=partitioned - freshness,
                description="One MIS shard per partition; backfill all partitions to generate them in parallel.",
            ),
            dg.define_asset_job(
                TRAIN_JOB,
                # the promotion check runs in its own job (`promote_champion`; the main command's --no-promote skips it)
                selection=dg.AssetSelection.all() - upstream - dg.AssetSelection.checks(challengers_promoted) - freshness,
                description="Manifest, task data, pre-training, fine-tuning and evaluation, with their checks.",
            ),
        ]
    )
