"""The code location loads fast, without the heavy stack, and shows the design card."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg

from orchestration.definitions import defs

HEAVY = ("torch", "mlflow", "diffusers", "transformers", "pyarrow")


def test_loading_definitions_imports_none_of_the_heavy_stack():
    code = (
        "import json, sys, time; t = time.time()\n"
        "from orchestration.definitions import defs; defs().resolve_asset_graph()\n"
        f"print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], time.time() - t]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, seconds = json.loads(out.splitlines()[-1])
    assert heavy == []
    assert seconds < 15


def test_every_asset_has_a_description_group_owner_and_the_heavy_ones_the_gpu_pool():
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    specs = {spec.key.to_user_string(): spec for spec in definitions.resolve_all_asset_specs()}
    assert set(specs) == {
        "raw_captions", "filtered_captions", "mis_shards", "mis_dataset", "nvs_data", "procedure_data",
        "m2m_self_pretrained", "m2m_dino_pretrained", "m2m_nvs_finetuned", "m2m_procedure_finetuned", "evaluation",
    }
    for name, spec in specs.items():
        assert spec.description and spec.group_name in {"data", "training", "evaluation"}, name
        assert spec.owners and spec.kinds, name
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    heavy = {name for name, pool in pools.items() if pool == {"gpu"}}
    assert heavy == {"mis_shards", "m2m_self_pretrained", "m2m_dino_pretrained", "m2m_nvs_finetuned",
                     "m2m_procedure_finetuned", "evaluation"}
    assert isinstance(specs["mis_shards"].partitions_def, dg.StaticPartitionsDefinition)
    for name in specs:
        tags = definitions.resolve_assets_def(name).op.tags
        gpu = json.loads(tags["dagster-k8s/config"]) if "dagster-k8s/config" in tags else None
        if name in heavy:
            assert gpu["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}, name
            assert tags["dagster-celery/queue"] == "gpu", name
        else:
            assert gpu is None and "dagster-celery/queue" not in tags, name


def test_jobs_sensor_checks_and_resources_are_defined():
    definitions = defs()
    jobs = {job.name for job in definitions.resolve_all_job_defs()}
    assert {"prepare_captions", "generate_mis_shards", "train_and_evaluate", "promote_champion",
            "rollback_champion"} <= jobs
    assert definitions.resolve_sensor_def("promote_after_evaluation").job_name == "promote_champion"
    train = definitions.resolve_job_def("train_and_evaluate")
    checks = {key.name for key in train.asset_layer.asset_graph.asset_check_keys}
    assert "loss_is_finite" in checks and "challengers_promoted" not in checks  # promotion is its own job
    checks = {(key.asset_key.to_user_string(), key.name) for key in definitions.resolve_asset_graph().asset_check_keys}
    assert ("mis_dataset", "shards_match_manifest") in checks and ("evaluation", "metrics_in_range") in checks
    assert {"compute", "dvc", "mlflow"} <= set(definitions.resources)
    shards = definitions.resolve_job_def("generate_mis_shards")
    assert shards.partitions_def is not None
    rest = definitions.resolve_job_def("train_and_evaluate")
    assert rest.partitions_def is None
