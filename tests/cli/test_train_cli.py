"""``m2m init`` and ``m2m train``: model folders in, model folders out; bad input is one line and exit 2."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from m2m.cli import main
from m2m.pipeline import M2MPipeline

TINY_RUN = ["--steps", "2", "--batch-size", "2", "--n-images", "3", "--sample-steps", "1"]


pytestmark = pytest.mark.usefixtures("one_thread", "fresh_accelerate_state")


@pytest.fixture(scope="module")
def mis(tmp_path_factory):
    """A 24-set MIS dataset made by `m2m generate-mis` (procedural, 6 images each) and `m2m build-manifest`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("mis")
    colours, shapes, weather = ("red", "blue", "green", "pink"), ("star", "circle", "square"), ("sun", "rain")
    captions = [f"a {c} {s} in the {t}" for c in colours for s in shapes for t in weather]
    ids = ["c" + hashlib.sha1(c.encode()).hexdigest()[:12] for c in captions]
    pq.write_table(pa.table({"id": ids, "caption": captions}), root / "filtered.parquet")
    for shard in ("0", "1"):
        args = ["--captions", str(root / "filtered.parquet"), "--out", str(root / "shards"), "--shard", shard]
        assert main(["generate-mis", *args, "--samples-per-shard", "12", "--images-per-caption", "6"]) == 0
    manifest = ["--out", str(root / "manifest.json"), "--test-percent", "25"]
    assert main(["build-manifest", "--shards", str(root / "shards"), *manifest]) == 0
    return root


def test_init_writes_a_loadable_untrained_model(tmp_path, capsys):
    out = tmp_path / "m2m-dino-nvs"
    assert main(["init", "--variant", "dino", "--condition", "camera", "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    pipe = M2MPipeline.from_pretrained(out)
    assert pipe.variant == "dino" and pipe.unet.config.condition == "camera" and pipe.image_encoder is not None
    assert main(["init", "--out", str(out)]) == 0  # a model folder is replaced whole
    assert M2MPipeline.from_pretrained(out).variant == "self"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m2m-dino-nvs"]


def test_init_sd21_from_weight_folders(tiny_sd_folder, tiny_dino_folder, tmp_path):
    out = tmp_path / "m2m-dino"
    folders = ["--sd-folder", str(tiny_sd_folder), "--dino-folder", str(tiny_dino_folder)]
    assert main(["init", "--preset", "sd21", "--variant", "dino", *folders, "--out", str(out)]) == 0
    pipe = M2MPipeline.from_pretrained(out)
    assert pipe.vae is not None and pipe.image_encoder is not None and pipe.config.guidance_scale == 7.5


def test_init_then_train_then_resume(mis, tmp_path, capsys):
    init, out = tmp_path / "init", tmp_path / "m2m-dino"
    assert main(["init", "--variant", "dino", "--out", str(init)]) == 0
    args = ["train", "--variant", "dino", "--init", str(init), "--data", str(mis), "--out", str(out), *TINY_RUN]
    assert main([*args, "--checkpoint-every", "1", "--ema"]) == 0
    assert "trained M2M-dino for 2 steps" in capsys.readouterr().out
    assert {"model_index.json", "train_metrics.json", "loss.csv", "samples.png"} <= {p.name for p in out.iterdir()}
    assert (tmp_path / "m2m-dino.ckpt" / "checkpoint-000002" / "ema.safetensors").is_file()

    assert main([*args, "--checkpoint-every", "1", "--ema", "--resume", "--steps", "3"]) == 0
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["resumed_from"] == 2 and metrics["steps"] == 3 and metrics["ema"] is True
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 3


def test_init_takes_a_unet_config_and_train_trains_it(mis, tmp_path):
    """A pilot's architecture (docs/model.md) is plain data: the folder has it, and training keeps it."""
    config, init, out = tmp_path / "wide.json", tmp_path / "init", tmp_path / "m2m-dino"
    config.write_text(json.dumps({"block_out_channels": [48, 96, 96], "norm_num_groups": 16}))
    assert main(["init", "--variant", "dino", "--unet-config", str(config), "--out", str(init)]) == 0
    args = ["train", "--variant", "dino", "--init", str(init), "--data", str(mis), "--out", str(out), *TINY_RUN]
    assert main(args) == 0
    unet = M2MPipeline.from_pretrained(out).unet.unet.config
    assert list(unet.block_out_channels) == [48, 96, 96] and unet.norm_num_groups == 16


@pytest.mark.parametrize(
    ("text", "preset", "message"),
    [
        ('{"block_out": [64]}', "tiny", "'block_out' is not a UNet2DConditionModel config entry"),
        ("[64, 128]", "tiny", "expected a JSON object of UNet config entries"),
        ('{"block_out_channels": [64, 128, 128}', "tiny", "not JSON"),
        ('{"block_out_channels": [64, 128, 128]}', "sd21", "a UNet config is for the tiny preset"),
    ],
)
def test_a_bad_unet_config_is_one_line_and_writes_nothing(tmp_path, capsys, text, preset, message):
    config, out = tmp_path / "unet.json", tmp_path / "init"
    config.write_text(text)
    assert main(["init", "--preset", preset, "--unet-config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    if preset == "tiny":
        assert str(config) in err
    assert not out.exists()


def test_fine_tunes_a_model_on_procedures(tmp_path):
    data, init, out = tmp_path / "procedure", tmp_path / "init", tmp_path / "m2m-dino-procedure"
    assert main(["make-task-data", "--kind", "procedure", "--out", str(data), "--count", "2"]) == 0
    assert main(["init", "--variant", "dino", "--out", str(init)]) == 0
    args = ["--init", str(init), "--task", "procedure", "--task-data", str(data), "--out", str(out)]
    assert main(["train", "--variant", "dino", *args, *TINY_RUN]) == 0
    pipe = M2MPipeline.from_pretrained(out)
    assert pipe.unet.config.condition == "procedure"
    assert json.loads((out / "train_metrics.json").read_text())["task"] == "procedure"


BAD_INPUT = [
    (["--steps", "0"], "--steps: must be at least 1, got 0"),
    (["--batch-size", "3", "--micro-batch-size", "2"], "--batch-size: must be a positive multiple of"),
    (["--p-uncond", "1.5"], "--p-uncond: must be a probability in [0, 1], got 1.5"),
    (["--n-images", "1"], "--n-images: must be at least 2"),
    (["--task", "nvs"], "--task-data: is required with --task nvs"),
    (["--data", "{tmp}/nowhere"], "nowhere: shard folder not found"),
    (["--task", "nvs", "--task-data", "{tmp}/nowhere"], "nowhere: task-data folder not found"),
    (["--init", "{tmp}"], "not an M2M pipeline folder (model_index.json missing)"),
    (["--init", "{self_model}", "--variant", "dino"], "an M2M-self model, but --variant is dino"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUT, ids=[" ".join(a[:2]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(mis, tmp_path, capsys, extra, message):
    self_model = tmp_path / "self-model"
    if "{self_model}" in extra:
        assert main(["init", "--out", str(self_model)]) == 0
    extra = [a.format(tmp=tmp_path / "empty", self_model=self_model) for a in extra]
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert main(["train", "--data", str(mis), "--out", str(out), *TINY_RUN, *extra]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars (loading --init) may come first
    assert last.startswith("m2m train: error: ") and message in last and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a GPU")
def test_fp16_without_a_gpu_is_refused(mis, tmp_path, capsys):
    args = ["--data", str(mis), "--out", str(tmp_path / "m"), "--mixed-precision", "fp16", *TINY_RUN]
    assert main(["train", *args]) == 2
    assert "--mixed-precision fp16: needs a GPU" in capsys.readouterr().err


def test_out_that_is_not_a_model_folder_is_kept(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["init", "--out", str(tmp_path)]) == 2
    assert "exists and is not an M2M model folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ([], (False, None)),
        (["--gradient-checkpointing", "--ema"], (True, True)),
        (["--gradient-checkpointing", "true", "--ema", "false"], (True, False)),
        (["--no-gradient-checkpointing", "--no-ema"], (False, False)),
    ],
)
def test_boolean_options_take_the_form_dvc_writes(words, expected):
    from m2m.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "m", *words])
    assert (args.gradient_checkpointing, args.ema) == expected


def test_a_bad_boolean_is_one_line(capsys):
    from m2m.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "m", "--ema", "maybe"])
    assert "--ema: expected true or false, got 'maybe'" in capsys.readouterr().err
