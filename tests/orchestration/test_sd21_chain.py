"""The sd21 preset end to end on weight-shaped folders: params-sd21.yaml with only counts and sizes scaled
down, the weights written by m2m/weight_folders.py, the whole chain through Dagster with training in
2 DDP processes (gloo on the CPU, `m2m train --num-processes 2` from params.yaml); DVC clean after, a
second run a no-op. docs/pipeline.md walks through it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from orchestration.dvc.cli import Dvc
from tests.orchestration.projects import make_project, run_main_command

pytestmark = pytest.mark.slow

# Counts and sizes only (and two training processes); everything else is params-sd21.yaml's. Two exceptions, both inputs the CPU test
# cannot have: the captions are the sample shipped with the package (no CC12M download), and the
# metrics run on the `tiny` feature nets (the `standard` backend's Inception-v3 needs torch-fidelity and
# its 100 MB weights file; the CLIP half would run on the weight-shaped clip folder).
PROCESSES = 2
SD21_TEST_PARAMS = {
    "captions": {"input": "m2m/resources/cc12m_sample.tsv"},
    "mis": {"shards": ["000000", "000001"], "samples_per_shard": 2, "image_size": 32, "sd_steps": 2},
    "manifest": {"test_percent": 50},  # of 4 sets: 2 to train on, 2 to evaluate on
    "tasks": {"count": 3, "image_size": 32},
    "pretrain": {"steps": 2, "batch_size": 4, "micro_batch_size": 1, "sample_steps": 2, "num_processes": PROCESSES},
    "finetune": {"steps": 1, "batch_size": 4, "micro_batch_size": 1, "sample_steps": 2, "num_processes": PROCESSES},
    "evaluate": {"num_sets": 2, "preceding": 2, "generate": 2, "steps": 2, "metrics_backend": "tiny"},
    "weights": {"inception": "weights/tiny"},
}
MODELS = ("m2m-self", "m2m-dino", "m2m-dino-nvs", "m2m-dino-procedure")


@pytest.fixture(scope="module")
def sd21_chain(tmp_path_factory, weights_folder):
    root = make_project(tmp_path_factory.mktemp("sd21") / "project", SD21_TEST_PARAMS, "params-sd21.yaml")
    for folder in weights_folder.iterdir():
        shutil.copytree(folder, root / "weights" / folder.name)
    with pytest.MonkeyPatch.context() as patch:
        # Two cores shared by two training processes (or one and the test): one thread each. Two
        # contending threads made SD generation 4-13x slower here.
        patch.setenv("OMP_NUM_THREADS", "1")
        return run_main_command(root)


def test_params_differ_from_the_preset_only_in_counts_and_sizes(sd21_chain):
    params = yaml.safe_load((sd21_chain.root / "params.yaml").read_text())
    assert params["preset"] == "sd21" and params["mis"]["backend"] == "sd" and params["mis"]["precompute"] is True
    assert params["mis"]["images_per_caption"] == 25
    assert params["pretrain"]["mixed_precision"] == "bf16" and params["pretrain"]["gradient_checkpointing"] is True
    assert params["weights"]["sd"] == "weights/stable-diffusion-2-1-base"


def test_the_sd21_chain_runs_through_dagster(sd21_chain):
    assert sd21_chain.exit_code == 0, sd21_chain.output
    for model in MODELS:
        assert (sd21_chain.root / "assets" / "models" / model / "model_index.json").is_file(), model
    for model in ("m2m-self", "m2m-dino"):
        assert (sd21_chain.root / "assets" / "eval" / model / "metrics.json").is_file()


def test_shards_are_sd_euler_guidance_7_5_with_25_images_and_stored_encodings(sd21_chain):
    for sidecar in sorted((sd21_chain.root / "assets" / "mis" / "shards").glob("mis-*.json")):
        settings = json.loads(sidecar.read_text())["settings"]
        assert settings["scheduler"] == "EulerDiscreteScheduler" and settings["guidance_scale"] == 7.5
        assert settings["images_per_caption"] == 25 and settings["image_size"] == 32 and settings["steps"] == 2
        precompute = settings["precompute"]
        assert (precompute["vae"], precompute["dino"]) == ("stable-diffusion-2-1-base", "dinov2-giant")


def test_training_ran_in_two_processes_with_the_presets_settings(sd21_chain):
    for model in MODELS:
        metrics = json.loads((sd21_chain.root / "assets" / "models" / model / "train_metrics.json").read_text())
        assert metrics["num_processes"] == PROCESSES, model
        assert metrics["micro_batch_size"] == 1 and metrics["gradient_accumulation"] == 2, model
        assert metrics["mixed_precision"] == "bf16" and metrics["gradient_checkpointing"] is True, model
        assert metrics["ema"] is False and metrics["preset"] == "sd21", model
        # each rank checkpoints its own data position and random states (resume per process)
        checkpoint = max((sd21_chain.root / "assets" / "models" / f"{model}.ckpt").glob("checkpoint-*"))
        per_process = {"data_0.json", "data_1.json", "random_states_0.pkl", "random_states_1.pkl"}
        assert per_process <= {p.name for p in checkpoint.iterdir()}, model
    stored = {m: json.loads((sd21_chain.root / f"assets/models/{m}/train_metrics.json").read_text())["stored_encodings"]
              for m in ("m2m-self", "m2m-dino")}
    assert stored == {"m2m-self": ["latents"], "m2m-dino": ["latents", "dino"]}


def test_models_are_registered_and_promoted(sd21_chain):
    from m2m import registry, tracking

    tracking.configure(sd21_chain.root)
    for model in MODELS:
        champion = registry.alias_version(model, registry.CHAMPION)
        assert champion is not None and str(champion.version) == "1", model


def test_dvc_is_clean_and_a_second_run_changes_nothing(sd21_chain):
    dvc = Dvc(sd21_chain.root)
    assert dvc.run("status", "--json").strip() == "{}"
    lock = yaml.safe_load((sd21_chain.root / "dvc.lock").read_text())["stages"]
    deps = {dep["path"] for dep in lock["m2m_dino_pretrained"]["deps"]}
    assert {"weights/stable-diffusion-2-1-base", "weights/dinov2-giant"} <= deps
    before = (sd21_chain.root / "dvc.lock").read_bytes()
    again = run_main_command(sd21_chain.root)
    assert again.exit_code == 0, again.output
    assert "(ran)" not in again.output and "=== 0 runs," in again.output
    assert (sd21_chain.root / "dvc.lock").read_bytes() == before
