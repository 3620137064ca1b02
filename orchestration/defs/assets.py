"""The asset chain, built from dvc.yaml: one asset per stage, one partition per ``foreach`` item.

raw_captions -> filtered_captions -> mis_shards (by shard) -> mis_dataset
-> m2m_self_pretrained, m2m_dino_pretrained -> m2m_nvs_finetuned, m2m_procedure_finetuned
(with nvs_data, procedure_data) -> evaluation; the promotion job then moves ``champion``.
"""

import hashlib
from pathlib import Path

import dagster as dg

from orchestration.defs.automation import CONDITIONS
from orchestration.defs.executor import GPU_QUEUE
from orchestration.defs.resources import ComputeResource, DvcResource, MlflowResource
from orchestration.materialize.stage import materialize_stage
from orchestration.project import project_root
from orchestration.dvc.stages import StageGroup, load_pipeline, read_yaml, select, upstream_assets

RAW_CAPTIONS = "raw_captions"
RAW_CAPTIONS_PARAM = "captions.input"
# On Kubernetes (dagster-k8s run launcher or k8s_job_executor) a step of the `gpu` pool asks for a
# GPU; other executors ignore the tag. docs/scale-out.md.
GPU_POD = {"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}}}
# Under the Celery executor a step of the `gpu` pool goes to the queue the GPU workers serve
# (orchestration/defs/executor.py); other executors ignore the tag.
GPU_STEP_TAGS = {**GPU_POD, "dagster-celery/queue": GPU_QUEUE}


@dg.asset(
    name=RAW_CAPTIONS,
    group_name="data",
    kinds={"tsv"},
    owners=["team:data"],
    description="CC12M-format captions (url<TAB>caption): the file params.yaml names in captions.input, "
    "by default the sample shipped with the package. Its md5 is the data version.",
)
def raw_captions(context: dg.AssetExecutionContext, dvc: DvcResource) -> dg.MaterializeResult:
    root = dvc.cli().root
    try:
        path = select(read_yaml(root / "params.yaml"), RAW_CAPTIONS_PARAM, "params.yaml")
    except ValueError as err:
        raise dg.Failure(description=f"{RAW_CAPTIONS}: {err}", allow_retries=False) from None
    source = root / str(path)
    if not source.is_file():
        raise dg.Failure(description=f"{RAW_CAPTIONS}: {source} (params.yaml {RAW_CAPTIONS_PARAM}) not found")
    data = source.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    lines = data.decode("utf-8", "replace").splitlines()
    preview = "\n".join(f"- {line.split(chr(9), 1)[-1][:120]}" for line in lines[:5])
    context.log.info(f"{source}: {len(lines)} rows, md5 {md5}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "rows": dg.MetadataValue.int(len(lines)),
            "md5": dg.MetadataValue.text(md5),
            "first captions": dg.MetadataValue.md(preview),
        },
        data_version=dg.DataVersion(md5),
    )


def stage_asset(group: StageGroup, upstream: list[str]) -> dg.AssetsDefinition:
    """The asset that materializes one dvc.yaml stage (partitioned by item for ``foreach``)."""
    stage, meta = group.first, group.first.meta
    name = group.asset

    @dg.asset(
        name=name,
        description=stage.desc or None,
        group_name=meta.get("group", "default"),
        kinds=set(meta.get("kinds", [])) | {"dvc"},
        owners=meta.get("owners"),
        pool=meta.get("pool"),
        op_tags=GPU_STEP_TAGS if meta.get("pool") == "gpu" else None,
        deps=upstream,
        partitions_def=dg.StaticPartitionsDefinition(group.items) if group.partitioned else None,
        code_version=group.code_version(),
        automation_condition=CONDITIONS.get(name),
        metadata={
            "dvc stage": stage.name.split("@")[0],
            "outputs": ", ".join(stage.outs),
            "command": stage.cmds[0] + (f" (+{len(stage.cmds) - 1} more)" if len(stage.cmds) > 1 else ""),
        },
    )
    def _stage(
        context: dg.AssetExecutionContext, dvc: DvcResource, compute: ComputeResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        return materialize_stage(context, name, dvc, compute, mlflow)

    return _stage


def build_stage_assets(root: str | Path) -> list[dg.AssetsDefinition]:
    """One asset per dvc.yaml stage of the project at ``root``; the stage reading the raw captions
    depends on ``raw_captions``."""
    root = Path(root)
    groups = load_pipeline(root, strict=False)
    raw_path = str(select(read_yaml(root / "params.yaml"), RAW_CAPTIONS_PARAM, "params.yaml"))
    assets = []
    for name, group in groups.items():
        upstream = upstream_assets(groups, name)
        if any(raw_path in stage.deps for stage in group.stages):
            upstream = [RAW_CAPTIONS, *upstream]
        assets.append(stage_asset(group, upstream))
    return assets


@dg.definitions
def chain() -> dg.Definitions:
    return dg.Definitions(assets=[raw_captions, *build_stage_assets(project_root())])
