"""Bad input reaches the Dagster run log as one clear line, and nothing already produced changes."""

from __future__ import annotations

import hashlib
import shutil
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from tests.orchestration.projects import (
    failure_messages,
    materialization_failures,
    materialize,
    materialize_here,
    project_env,
    set_param,
)


def snapshot(root) -> dict[str, str]:
    """md5 of every file under assets/ and of dvc.lock."""
    files = [p for p in (root / "assets").rglob("*") if p.is_file()] + [root / "dvc.lock"]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files if p.exists()}


@pytest.fixture()
def copy_of_chain(chain, tmp_path):
    """The materialized chain project, copied so a test may break it."""
    assert chain.exit_code == 0, chain.output
    return shutil.copytree(chain.root, tmp_path / "project", symlinks=True)


def test_an_asset_before_its_upstream_names_what_to_materialize_first(project):
    result = materialize(project, "mis_dataset")
    assert not result.success
    assert failure_messages(result) == [
        "mis_dataset: input assets/mis/shards/mis-000000.tar does not exist yet: "
        "materialize mis_shards (partition 000000) first"
    ]
    assert not (project / "assets").exists() and not (project / "dvc.lock").exists()


@pytest.mark.slow
def test_shard_partitions_materialized_at_the_same_time_both_commit(project, monkeypatch):
    for key, value in project_env(project).items():
        monkeypatch.setenv(key, value)
    assert materialize_here(project, "filtered_captions").success
    items = ["000000", "000001"]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        failures = list(pool.map(materialization_failures, [project] * 2, ["mis_shards"] * 2, items))
    assert failures == [[], []]
    from orchestration.dvc.cli import Dvc

    dvc = Dvc(project)
    assert dvc.status("mis_shards@000000") == {} and dvc.status("mis_shards@000001") == {}
    assert set(dvc.hashes("mis_shards@000001", "outs")) == {
        "assets/mis/shards/mis-000001.tar", "assets/mis/shards/mis-000001.json"
    }


def test_a_missing_captions_file_is_named(project):
    set_param(project, "captions.input", "data/cc12m.tsv")
    raw = materialize(project, "raw_captions")
    missing = project / "data/cc12m.tsv"
    assert failure_messages(raw) == [f"raw_captions: {missing} (params.yaml captions.input) not found"]
    filtered = materialize(project, "filtered_captions")
    assert failure_messages(filtered) == [
        "filtered_captions: input data/cc12m.tsv does not exist (dvc.yaml deps of filtered_captions)"
    ]


@pytest.mark.slow
def test_a_broken_param_value_is_refused_by_its_key_and_changes_nothing(copy_of_chain):
    before = snapshot(copy_of_chain)
    set_param(copy_of_chain, "pretrain.steps", -3)
    result = materialize(copy_of_chain, "m2m_self_pretrained")
    assert not result.success
    (message,) = failure_messages(result)
    assert message.startswith("m2m_self_pretrained: ") and "params.yaml: pretrain.steps: expected an integer" in message
    assert "\n" not in message
    assert snapshot(copy_of_chain) == before


@pytest.mark.slow  # reads the materialized chain, minutes to make
@pytest.mark.parametrize("key", ["preset", "weights.sd"])
def test_shell_code_in_params_never_runs(copy_of_chain, key):
    before = snapshot(copy_of_chain)
    set_param(copy_of_chain, key, "tiny; touch PWNED #")
    result = materialize(copy_of_chain, "m2m_self_pretrained")
    (message,) = failure_messages(result)
    assert f"params.yaml: {key}:" in message
    assert not (copy_of_chain / "PWNED").exists()
    assert snapshot(copy_of_chain) == before


@pytest.mark.slow  # reads the materialized chain, minutes to make
def test_a_command_that_fails_fails_its_asset_and_nothing_is_committed(copy_of_chain):
    before = snapshot(copy_of_chain)
    dvc_yaml = copy_of_chain / "dvc.yaml"
    # A stage command that exits non-zero after its output changed: the run fails, dvc.lock keeps the old entry.
    text = dvc_yaml.read_text().replace("--seed ${pretrain.seed} --sample-steps", "--seed ${pretrain.seed} --no-such-flag 1 --sample-steps", 1)
    dvc_yaml.write_text(text)
    result = materialize(copy_of_chain, "m2m_self_pretrained")
    assert not result.success
    (message,) = failure_messages(result)
    assert "unrecognized arguments: --no-such-flag" in message
    assert snapshot(copy_of_chain) == before


@pytest.mark.slow
def test_sd21_without_weights_names_the_missing_folder(copy_of_chain):
    before = snapshot(copy_of_chain)
    set_param(copy_of_chain, "preset", "sd21")
    set_param(copy_of_chain, "weights.sd", "weights/stable-diffusion-2-1-base")
    result = materialize(copy_of_chain, "m2m_self_pretrained")
    assert failure_messages(result) == [
        "m2m_self_pretrained: input weights/stable-diffusion-2-1-base does not exist "
        "(dvc.yaml deps of m2m_self_pretrained)"
    ]
    assert snapshot(copy_of_chain) == before


@pytest.mark.slow
def test_sd21_with_the_tiny_weights_folder_says_what_to_download(copy_of_chain):
    set_param(copy_of_chain, "preset", "sd21")
    result = materialize(copy_of_chain, "m2m_self_pretrained")
    (message,) = failure_messages(result)
    assert "weights/tiny" in message and "download stabilityai/stable-diffusion-2-1-base" in message


def test_a_training_on_several_machines_leases_this_machines_share_of_devices(monkeypatch):
    from orchestration.dvc.stages import Stage
    from orchestration.materialize.stage import processes

    command = "m2m train --out m --num-processes 16"
    stage = Stage("pretrain_dino", "m2m_dino_pretrained", None, (command,), (), (), {}, "")
    monkeypatch.delenv("M2M_NUM_MACHINES", raising=False)
    assert processes(stage) == 16
    monkeypatch.setenv("M2M_NUM_MACHINES", "2")
    monkeypatch.setenv("M2M_MAIN_PROCESS_IP", "10.0.0.1")
    monkeypatch.setenv("M2M_MAIN_PROCESS_PORT", "29500")
    assert processes(stage) == 8  # --num-processes counts all machines' processes
    monkeypatch.delenv("M2M_MAIN_PROCESS_IP")
    with pytest.raises(ValueError, match="--main-process-ip .*is required on several machines"):
        processes(stage)  # before any device is leased
