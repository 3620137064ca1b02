"""Both presets through dvc.yaml: the train commands carry the preset's batch, precision, checkpointing and
EMA settings, the shard commands its precomputation, and every stage that loads weights depends on them."""

from __future__ import annotations

import shutil

import pytest

from m2m.cli import build_parser
from orchestration.dvc.stages import load_pipeline
from tests.orchestration.projects import REPO

TRAIN_STAGES = ("m2m_self_pretrained", "m2m_dino_pretrained", "m2m_nvs_finetuned", "m2m_procedure_finetuned")


def stages(tmp_path, params_file: str):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / params_file, tmp_path / "params.yaml")
    return load_pipeline(tmp_path)


def parsed(cmd: str):
    words = cmd.split()
    assert words[0] == "m2m"
    return build_parser().parse_args(words[1:])


def test_sd21_trains_in_bf16_micro_batches_with_checkpointing(tmp_path):
    groups = stages(tmp_path, "params-sd21.yaml")
    for name in TRAIN_STAGES:
        args = parsed(groups[name].first.cmds[0])
        assert args.mixed_precision == "bf16", name
        assert args.gradient_checkpointing is True, name
        assert args.ema is False, name
        assert args.micro_batch_size == 8 and args.batch_size % args.micro_batch_size == 0, name
    assert parsed(groups["m2m_self_pretrained"].first.cmds[0]).batch_size == 256


def test_tiny_keeps_its_training_defaults(tmp_path):
    groups = stages(tmp_path, "params.yaml")
    for name in TRAIN_STAGES:
        args = parsed(groups[name].first.cmds[0])
        # None: the process's whole share / the compute resource's dtype, as without the options
        assert args.micro_batch_size is None and args.mixed_precision == "auto", name
        assert args.gradient_checkpointing is False and args.ema is True, name


@pytest.mark.parametrize(("params_file", "precompute"), [("params-sd21.yaml", True), ("params.yaml", False)])
def test_shards_precompute_as_the_preset_says(tmp_path, params_file, precompute):
    args = parsed(stages(tmp_path, params_file)["mis_shards"].first.cmds[0])
    assert args.precompute is precompute


def test_weights_folders_are_dependencies_of_the_stages_that_read_them(tmp_path):
    groups = stages(tmp_path, "params-sd21.yaml")
    sd, dino = "weights/stable-diffusion-2-1-base", "weights/dinov2-giant"
    assert {sd, dino} <= set(groups["mis_shards"].first.deps)
    assert sd in groups["m2m_self_pretrained"].first.deps
    assert {sd, dino} <= set(groups["m2m_dino_pretrained"].first.deps)
    evaluation = groups["evaluation"].first.deps
    assert {"weights/clip-vit-large-patch14", "weights/inception"} <= set(evaluation)
    args = parsed(groups["m2m_dino_pretrained"].first.cmds[0])
    assert (str(args.sd_folder), str(args.dino_folder)) == (sd, dino)


def test_tiny_weights_folder_is_committed_and_says_why(tmp_path):
    groups = stages(tmp_path, "params.yaml")
    deps = {dep for group in groups.values() for stage in group.stages for dep in stage.deps}
    assert "weights/tiny" in deps
    assert "random" in (REPO / "weights" / "tiny" / "README.md").read_text()
    dino = "weights/tiny/dinov2"  # the tiny E_v: M2M-DINO's training depends on it and is given it
    assert dino in groups["m2m_dino_pretrained"].first.deps
    assert str(parsed(groups["m2m_dino_pretrained"].first.cmds[0]).dino_folder) == dino
    assert (REPO / dino / "model.safetensors").is_file() and (REPO / dino / "README.md").is_file()
