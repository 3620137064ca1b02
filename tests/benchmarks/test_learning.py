"""benchmarks/bench_learning.py: models trained outside the benchmark are described by the command that made them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_learning import build_mis, build_training_mis  # noqa: E402
from learning.common import train_command  # noqa: E402


def parsed(command: str):
    from m2m.cli import build_parser

    words = shlex.split(command)
    assert words[:2] == ["m2m", "train"]
    return build_parser().parse_args(words[1:])


def test_the_train_command_of_a_long_run_parses_back_to_its_recipe():
    metrics = {
        "variant": "dino", "data": "assets/bench/learning/mis", "steps": 12000, "batch_size": 4, "n_images": 5,
        "lr": 0.001, "lr_schedule": "cosine", "lr_warmup_steps": 500, "snr_gamma": 5.0, "ema": True,
        "ema_decay": 0.999, "seed": 0,
    }
    args = parsed(train_command(metrics, out=Path("assets/bench/long2/m2m-dino")))
    assert (args.variant, args.steps, args.batch_size, args.n_images, args.lr) == ("dino", 12000, 4, 5, 0.001)
    assert (args.lr_schedule, args.lr_warmup_steps, args.snr_gamma, args.ema_decay) == ("cosine", 500, 5.0, 0.999)
    assert args.data == Path("assets/bench/learning/mis") and args.out == Path("assets/bench/long2/m2m-dino")


def test_a_constant_rate_run_without_ema_names_no_recipe_flags_it_did_not_use():
    metrics = {"variant": "self", "data": "mis", "steps": 700, "batch_size": 8, "n_images": 5, "lr": 0.001,
               "lr_schedule": "constant", "lr_warmup_steps": 0, "snr_gamma": None, "ema": False, "ema_decay": 0.995,
               "seed": 3}
    command = train_command(metrics, out=Path("out"))
    assert "--lr-schedule" not in command and "--snr-gamma" not in command and "--ema-decay" not in command
    assert "--timestep-sampling" not in command  # a run from before the flag drew t uniformly
    args = parsed(command)
    assert (args.variant, args.steps, args.seed, args.lr_schedule, args.snr_gamma) == ("self", 700, 3, "constant", None)
    assert args.ema is False and args.timestep_sampling == "uniform"


def test_the_train_command_names_a_timestep_sampling_other_than_uniform():
    metrics = {"variant": "dino", "data": "mis", "steps": 10, "batch_size": 4, "n_images": 5, "lr": 0.001,
               "timestep_sampling": "logit-normal", "ema": True, "ema_decay": 0.999, "seed": 0}
    assert parsed(train_command(metrics, out=Path("out"))).timestep_sampling == "logit-normal"


def test_the_train_command_names_the_precision_of_a_bf16_run_and_no_flag_for_fp32():
    metrics = {"variant": "dino", "data": "mis", "steps": 10, "batch_size": 4, "n_images": 5, "lr": 0.001,
               "ema": True, "ema_decay": 0.999, "seed": 0, "mixed_precision": "bf16"}
    assert parsed(train_command(metrics, out=Path("out"))).mixed_precision == "bf16"
    assert "--mixed-precision" not in train_command({**metrics, "mixed_precision": "no"}, out=Path("out"))


def test_a_prefixed_mis_gives_every_set_the_keywords_shape_and_keeps_the_other_attributes(tmp_path):
    import pyarrow.parquet as pq

    from m2m.data.procedural import ProceduralGenerator

    root = build_mis(tmp_path / "mis", prefix="ring")
    captions = pq.read_table(root / "captions.parquet").column("caption").to_pylist()
    attributes = [ProceduralGenerator(32).attributes(caption) for caption in captions]
    assert len(captions) >= 200 and all(caption.startswith("ring ") for caption in captions)
    assert {a["shape"] for a in attributes} == {"ring"}
    assert len({a["palette"] for a in attributes}) == 8 and len({a["texture"] for a in attributes}) == 5


def test_several_prefixes_take_turns_so_the_kinds_are_as_many_sets_each(tmp_path):
    import collections

    import pyarrow.parquet as pq

    from m2m.data.procedural import ProceduralGenerator

    root = build_mis(tmp_path / "mis", prefix=("ball", "box"))  # the two-kind pilot
    captions = pq.read_table(root / "captions.parquet").column("caption").to_pylist()
    kinds = collections.Counter(ProceduralGenerator(32).attributes(caption)["shape"] for caption in captions)
    assert set(kinds) == {"circle", "square"} and abs(kinds["circle"] - kinds["square"]) <= 1


def test_a_training_mis_names_every_attribute_in_its_captions_and_holds_no_test_split(tmp_path):
    import collections
    import json

    import pyarrow.parquet as pq

    from m2m.data.loader import read_mis_sets
    from m2m.data.procedural import ProceduralGenerator

    root = build_training_mis(tmp_path / "mis", 130, shapes=("circle", "star"), seed=1)
    captions = pq.read_table(root / "captions.parquet").column("caption").to_pylist()
    assert len(set(captions)) == 130
    for caption in captions:  # the caption's own words decide: palette, shape kind, texture, serial number
        palette, shape, texture, _ = caption.split()
        assert ProceduralGenerator(32).attributes(caption) == {"palette": palette, "shape": shape, "texture": texture}
    kinds = collections.Counter(caption.split()[1] for caption in captions)
    assert set(kinds) == {"circle", "star"} and min(kinds.values()) >= 45
    assert len({caption.split()[0] for caption in captions}) == 8
    assert json.loads((root / "manifest.json").read_text())["split"] == {"train": 130, "test": 0}
    sets = read_mis_sets(root / "manifest.json", split="train")
    assert len(sets) == 130 and {s["attributes"]["shape"] for s in sets} == {"circle", "star"}
    assert all(s["attributes"]["palette"] == s["caption"].split()[0] for s in sets)
    shards = {p.name: p.read_bytes() for p in (root / "shards").glob("*.tar")}
    again = build_training_mis(tmp_path / "mis", 130, shapes=("circle", "star"), seed=1)
    assert {p.name: p.read_bytes() for p in (again / "shards").glob("*.tar")} == shards
    with pytest.raises(ValueError, match="shapes must be among"):
        build_training_mis(tmp_path / "bad", 4, shapes=("hexagon",))
    with pytest.raises(ValueError, match="textures must be among"):
        build_training_mis(tmp_path / "bad", 4, textures=("plaid",))


def test_a_kind_only_training_mis_varies_the_shape_kind_alone(tmp_path):
    from m2m.data.loader import read_mis_sets

    root = build_training_mis(tmp_path / "mis", 40, shapes=("circle", "square"), palettes=("ocean",),
                              textures=("plain",))
    sets = read_mis_sets(root / "manifest.json", split="train")
    assert {(s["attributes"]["palette"], s["attributes"]["texture"]) for s in sets} == {("ocean", "plain")}
    assert {s["attributes"]["shape"] for s in sets} == {"circle", "square"}


def test_a_section_rewritten_in_place_keeps_a_blank_line_before_the_next(tmp_path, monkeypatch):
    from learning import report

    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## A\n\nold a\n\n## B\n\nb\n", encoding="utf-8")
    monkeypatch.setattr(report, "RESULTS_MD", results)
    report.write_section("## A\n\n| new | a |\n", "## A")
    assert results.read_text(encoding="utf-8") == "# R\n\n## A\n\n| new | a |\n\n## B\n\nb\n"
    report.write_section("## C\n\nc\n", "## C")  # a new section goes at the end
    assert results.read_text(encoding="utf-8").endswith("b\n\n## C\n\nc\n")
