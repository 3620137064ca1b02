"""The training loop (m2m/training/loop.py): a few steps of the tiny preset on tiny MIS and task data."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from m2m.training import checkpoint, loop, noise
from m2m.training.config import TrainConfig

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


@pytest.fixture(scope="module")
def mis(tmp_path_factory):
    """An MIS dataset of 24 procedural sets of 6 images (32x32) in two shards, with manifest and split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from m2m.data.procedural import ProceduralGenerator
    from m2m.data.shards import build_manifest, write_shard

    root = tmp_path_factory.mktemp("mis")
    colours, shapes, textures = ("red", "blue", "green", "yellow"), ("star", "circle", "square"), ("striped", "dotted")
    captions = [f"a {c} {s} on a {t} background" for c in colours for s in shapes for t in textures]
    ids = ["c" + hashlib.sha1(c.encode()).hexdigest()[:12] for c in captions]
    pq.write_table(pa.table({"id": ids, "caption": captions}), root / "filtered.parquet")
    for shard in range(2):
        write_shard(
            root / "filtered.parquet", root / "shards", shard, ProceduralGenerator(32),
            samples_per_shard=12, images_per_caption=6,
        )
    build_manifest(root / "shards", root / "manifest.json", test_percent=25)
    return root


@pytest.fixture(scope="module")
def procedure_data(tmp_path_factory):
    from m2m.data.tasks_procedure import write_procedure_fixture

    root = tmp_path_factory.mktemp("procedure")
    write_procedure_fixture(root, n_methods=3, n_steps=6, image_size=32)
    return root


def config(out, **overrides) -> TrainConfig:
    settings = dict(
        out=out, batch_size=2, n_images=3, checkpoint_every=0, log_every=1, sample_steps=1, sample_sets=2,
        sample_context=2, sample_generate=2,
    )
    return TrainConfig(**{**settings, **overrides})


def weights(folder) -> dict:
    return load_file(folder / UNET_WEIGHTS)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def test_writes_the_model_folder(mis, tmp_path):
    from m2m.pipeline import M2MPipeline

    out = tmp_path / "m2m-self"
    metrics = loop.train(config(out, data=mis, steps=4))
    written = {p.name for p in out.iterdir()}
    assert written >= {"model_index.json", "unet", "scheduler", "train_metrics.json", "loss.csv", "samples.png"}
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["steps"] == 4 and saved["variant"] == "self" and saved["params"]["unet"] > 0
    assert saved["images_per_s"] > 0 and saved["wall_time_s"] > 0
    assert saved["flops_per_image"] > 0 and saved["peak_flops"] > 0  # MFU, as the log lines print it
    assert saved["mfu"] == pytest.approx(saved["flops_per_image"] * saved["images_per_s"] / saved["peak_flops"])
    n_train = json.loads((mis / "manifest.json").read_text())["split"]["train"]
    assert saved["epochs"] == pytest.approx(4 / math.ceil(n_train / 2))
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert saved["final_loss"] == pytest.approx(losses[-1], rel=1e-5)
    assert all(math.isfinite(x) and x > 0 for x in losses)  # learning itself: tests/training/test_objective.py
    with Image.open(out / "samples.png") as grid:  # 2 rows of 2 preceding | 2 generated 32x32 images, 2x scale
        assert grid.height > 2 * 64 and grid.width > 4 * 64
    pipe = M2MPipeline.from_pretrained(out)
    assert pipe.variant == "self" and pipe.image_size == 32
    assert not (tmp_path / ".m2m-self.tmp").exists()


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(mis, tmp_path):
    shared = dict(data=mis, variant="dino", micro_batch_size=1, ema=True)  # gradient accumulation 2, EMA
    loop.train(config(tmp_path / "straight", steps=4, **shared))
    loop.train(config(tmp_path / "interrupted", steps=2, checkpoint_every=2, **shared))
    assert (tmp_path / "interrupted.ckpt" / "checkpoint-000002" / "model.safetensors").is_file()
    metrics = loop.train(config(tmp_path / "interrupted", steps=4, checkpoint_every=2, resume=True, **shared))
    assert metrics["resumed_from"] == 2 and metrics["steps"] == 4
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "interrupted"))
    assert (tmp_path / "straight" / "loss.csv").read_text() == (tmp_path / "interrupted" / "loss.csv").read_text()


def test_a_cosine_schedule_warms_up_decays_and_fixes_its_length(mis, tmp_path, caplog):
    shared = dict(data=mis, lr_schedule="cosine", lr_warmup_steps=2, checkpoint_every=2)
    with caplog.at_level(logging.INFO, logger="m2m.training.loop"):
        loop.train(config(tmp_path / "cosine", steps=6, **shared))
    lrs = [float(m.group(1)) for r in caplog.records if (m := re.search(r"step \d+/6 .* lr (\S+)$", r.getMessage()))]
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3], rel=1e-2)  # the rate each step used: warm-up 0/2, 1/2, then --lr
    assert lrs[2:] == pytest.approx([1e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)], rel=1e-2)  # to 0 at 6
    with pytest.raises(ValueError, match="steps=6, this run has 8"):
        loop.train(config(tmp_path / "cosine", steps=8, resume=True, **shared))
    with pytest.raises(ValueError, match="--lr-schedule"):
        loop.train(config(tmp_path / "no-steps", lr_schedule="cosine"))


def test_logs_settings_and_the_loss_into_the_mlflow_run_it_is_given(mis, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("m2m-training", (tmp_path / "artifacts").as_uri())).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "m2m-training")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    metrics = loop.train(config(tmp_path / "m2m-self", data=mis, steps=3, log_every=2, checkpoint_every=2))
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.001" and run.data.params["steps"] == "3"
    assert run.data.params["mixed_precision"] == "no"
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3] and loss[-1].value == pytest.approx(metrics["final_loss"])
    assert [m.step for m in client.get_metric_history(run_id, "lr")] == [2, 3]
    assert {"lr", "images_per_s"} <= set(run.data.metrics)
    # the sample grid before the first step (where MLflow's image chart opens), at each checkpoint and at the
    # end, as MLflow images of key "samples"
    images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(re.search(r"samples\+step\+(\d+)\+", path).group(1)) for path in images
                  if path.endswith(".png")) == [0, 2, 3]
    assert any(key.startswith("system/cpu") for key in run.data.metrics)  # the System metrics tab
    assert {e.name for e in client.search_experiments()} == {"Default", "m2m-training"}  # no stray experiment


def test_a_resumed_training_logs_the_whole_loss_curve_into_its_new_run(mis, tmp_path, monkeypatch):
    """A training stopped after its checkpoint and resumed under a new MLflow run (a retried step) shows every
    step's loss there: the steps before the checkpoint come from the checkpoint."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("m2m-training", (tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    shared = dict(data=mis, checkpoint_every=2, log_every=10)
    first, second = (client.create_run(experiment).info.run_id for _ in range(2))
    monkeypatch.setenv("MLFLOW_RUN_ID", first)
    loop.train(config(tmp_path / "m", steps=2, **shared))
    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    metrics = loop.train(config(tmp_path / "m", steps=3, resume=True, **shared))
    loss = client.get_metric_history(second, "loss")
    assert [m.step for m in loss] == [1, 2, 3] and loss[-1].value == pytest.approx(metrics["final_loss"])
    assert [m.value for m in loss[:2]] == [m.value for m in client.get_metric_history(first, "loss")]


@pytest.mark.slow
def test_sample_grids_along_training_leave_the_training_as_it_was(mis, tmp_path, monkeypatch):
    """A grid made at a checkpoint (EMA weights swapped in, sampling's random draws) changes nothing of the run."""
    from mlflow.tracking import MlflowClient

    shared = dict(data=mis, steps=3, checkpoint_every=1, ema=True, ema_decay=0.5)
    loop.train(config(tmp_path / "quiet", **shared))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("m2m-training", (tmp_path / "artifacts").as_uri())).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    loop.train(config(tmp_path / "logged", **shared))
    grids = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert len(grids) == 4  # steps 0, 1, 2 and 3
    assert_same_weights(weights(tmp_path / "quiet"), weights(tmp_path / "logged"))


def test_the_loop_trains_with_its_dropout_settings(mis, procedure_data, tmp_path):
    """--p-uncond and --p-drop-condition reach eq. 5: the weights after one step depend on them."""
    from m2m.build import build_pipeline

    def trained(name, **settings):
        loop.train(config(tmp_path / name, data=mis, steps=1, ema=False, **settings))
        return weights(tmp_path / name)

    kept, dropped = trained("kept", p_uncond=0.0), trained("dropped", p_uncond=1.0)
    assert any(not torch.equal(kept[k], dropped[k]) for k in kept)
    init = tmp_path / "pretrained"
    build_pipeline("tiny", "dino", seed=0).save_pretrained(init)
    task = dict(init=init, variant="dino", task="procedure", task_data=procedure_data, p_uncond=0.0)
    with_condition, without = trained("cond", p_drop_condition=0.0, **task), trained("nocond", p_drop_condition=1.0, **task)
    assert any(not torch.equal(with_condition[k], without[k]) for k in with_condition)


def test_task_fine_tuning_resumes_exactly(procedure_data, tmp_path):
    from m2m.build import build_pipeline

    init = tmp_path / "pretrained"
    build_pipeline("tiny", "dino", seed=0).save_pretrained(init)
    shared = dict(init=init, variant="dino", task="procedure", task_data=procedure_data, num_workers=1)
    loop.train(config(tmp_path / "straight", steps=4, **shared))
    loop.train(config(tmp_path / "interrupted", steps=2, checkpoint_every=1, **shared))
    loop.train(config(tmp_path / "interrupted", steps=4, checkpoint_every=1, resume=True, **shared))
    tuned = weights(tmp_path / "straight")
    assert_same_weights(tuned, weights(tmp_path / "interrupted"))
    assert any("condition_embedder" in k for k in tuned)
    config_json = json.loads((tmp_path / "straight" / "unet" / "config.json").read_text())
    assert config_json["condition"] == "procedure"


def test_a_run_resumed_in_another_precision_says_which_steps_ran_in_which(mis, tmp_path):
    from accelerate.state import AcceleratorState

    shared = dict(data=mis, checkpoint_every=1, ema=False)
    loop.train(config(tmp_path / "m", steps=1, mixed_precision="no", **shared))
    AcceleratorState._reset_state(reset_partial_state=True)  # each `m2m train` is a process of its own
    loop.train(config(tmp_path / "m", steps=2, resume=True, mixed_precision="bf16", **shared))
    metrics = loop.train(config(tmp_path / "m", steps=3, resume=True, mixed_precision="bf16", **shared))
    stretches = [[0, "no"], [1, "bf16"]]
    assert metrics["precision_from_step"] == stretches and metrics["mixed_precision"] == "bf16"
    last = checkpoint.list_checkpoints(tmp_path / "m.ckpt")[-1]
    assert checkpoint.read_trainer_state(last)["precision"] == stretches


def test_resume_refuses_other_settings(mis, tmp_path):
    loop.train(config(tmp_path / "m", data=mis, steps=1, checkpoint_every=1))
    with pytest.raises(ValueError, match=r"000001/trainer_state.json: made with lr=0.001, this run has 0.01"):
        loop.train(config(tmp_path / "m", data=mis, steps=2, checkpoint_every=1, resume=True, lr=1e-2))


def test_a_fresh_run_replaces_the_checkpoints_of_an_earlier_run(mis, tmp_path):
    loop.train(config(tmp_path / "m", data=mis, steps=2, checkpoint_every=1))
    loop.train(config(tmp_path / "m", data=mis, steps=1, checkpoint_every=1, seed=1))
    folders = checkpoint.list_checkpoints(tmp_path / "m.ckpt")
    assert [f.name for f in folders] == ["checkpoint-000001"]
    assert checkpoint.read_trainer_state(folders[0])["settings"]["seed"] == 1


def test_resume_without_a_checkpoint_starts_fresh(mis, tmp_path):
    metrics = loop.train(config(tmp_path / "m", data=mis, steps=1, resume=True))
    assert metrics["resumed_from"] is None and metrics["steps"] == 1


def test_a_crash_leaves_the_previous_model_intact(mis, tmp_path, monkeypatch):
    out = tmp_path / "m"
    loop.train(config(out, data=mis, steps=1))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(loop, "m2m_loss", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train(config(out, data=mis, steps=2, seed=1))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_gradient_checkpointing_gives_the_same_losses(mis, tmp_path):
    plain = loop.train(config(tmp_path / "a", data=mis, steps=2))
    recomputed = loop.train(config(tmp_path / "b", data=mis, steps=2, gradient_checkpointing=True))
    assert recomputed["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-4)


def test_bf16_mixed_precision_trains(mis, tmp_path):
    # one set of two images: a bf16 step is slow on a CPU without bf16 units
    metrics = loop.train(config(tmp_path / "m", data=mis, steps=1, batch_size=1, n_images=2, mixed_precision="bf16"))
    assert math.isfinite(metrics["final_loss"])
    assert all(t.dtype == torch.float32 for t in weights(tmp_path / "m").values())  # fp32 master weights


def test_refuses_to_replace_a_folder_that_is_not_a_model(mis, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not an M2M model folder"):
        loop.train(config(tmp_path, data=mis, steps=1))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_the_speed_settings_reach_the_optimizer_the_weights_and_every_attention_call(mis, tmp_path, monkeypatch):
    """--adamw, --channels-last and --sdpa-backend change how a step runs (m2m/speed.py): a fused AdamW, the
    UNet's weights in NHWC, and every attention kernel of a step on the math backend alone."""
    run = loop.start_run(config(tmp_path / "m", data=mis, steps=1, adamw="fused", channels_last=True,
                                sdpa_backend="math"))
    assert run.optimizer.optimizer.defaults["fused"] is True
    assert run.pipe.unet.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    flash_on, kernel = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        flash_on.append(torch.backends.cuda.flash_sdp_enabled())
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    loop.micro_step(run, next(iter(run.data)), noise.noise_generator(0, 0, 0, run.accelerator.device))
    assert flash_on and not any(flash_on)
