"""dvc.yaml read as DVC reads it: interpolation, foreach items, lineage, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration.stages import ROLES, PipelineError, interpolate, load_pipeline, upstream_assets

REPO = Path(__file__).resolve().parents[2]

CARD = [
    "filtered_captions",
    "mis_shards",
    "mis_dataset",
    "nvs_data",
    "procedure_data",
    "m2m_self_pretrained",
    "m2m_dino_pretrained",
    "m2m_nvs_finetuned",
    "m2m_procedure_finetuned",
    "evaluation",
]


def test_the_project_pipeline_is_the_design_card_chain():
    groups = load_pipeline(REPO)
    assert list(groups) == CARD
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert groups["mis_shards"].partitioned and groups["mis_shards"].items == params["mis"]["shards"]
    lineage = {name: upstream_assets(groups, name) for name in groups}
    assert lineage["mis_shards"] == ["filtered_captions"]
    assert lineage["mis_dataset"] == ["mis_shards"]
    assert set(lineage["m2m_self_pretrained"]) == {"mis_shards", "mis_dataset"}
    assert set(lineage["m2m_nvs_finetuned"]) == {"nvs_data", "m2m_dino_pretrained"}
    assert set(lineage["m2m_procedure_finetuned"]) == {"procedure_data", "m2m_dino_pretrained"}
    assert {"m2m_self_pretrained", "m2m_dino_pretrained"} <= set(lineage["evaluation"])
    heavy = {name for name, group in groups.items() if group.first.meta.get("pool") == "gpu"}
    assert heavy == {"mis_shards", "m2m_self_pretrained", "m2m_dino_pretrained", "m2m_nvs_finetuned",
                     "m2m_procedure_finetuned", "evaluation"}


def test_every_stage_runs_an_m2m_command_with_params_filled_in():
    groups = load_pipeline(REPO)
    for group in groups.values():
        for stage in group.stages:
            assert stage.cmds[0].startswith("m2m ") and all("${" not in cmd for cmd in stage.cmds), stage.name
            assert stage.desc, stage.name
    shard = groups["mis_shards"].stage("000001")
    assert shard.name == "mis_shards@000001"
    assert "--shard 000001" in shard.cmds[0]
    assert shard.outs == ("assets/mis/shards/mis-000001.tar", "assets/mis/shards/mis-000001.json")
    roles = {name: group.first.role for name, group in groups.items()}
    assert roles["evaluation"] == "evaluate" and roles["m2m_nvs_finetuned"] == "train"
    assert roles["mis_shards"] == "shards" and set(roles.values()) == set(ROLES)


def test_interpolation_keeps_types_of_whole_values_and_formats_embedded_ones():
    context = {"a": {"b": [1, 2]}, "flag": True, "lr": 1e-4, "name": "x"}
    assert interpolate("${a.b}", context, "w") == [1, 2]
    assert interpolate("${a.b[1]}", context, "w") == 2
    assert interpolate("--lr ${lr} --f ${flag} ${name}-${a.b[0]}", context, "w") == "--lr 0.0001 --f true x-1"
    assert interpolate(r"keep \${name}", context, "w") == "keep ${name}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${missing.key}", r"stage.cmd: \$\{missing.key\} is not defined in params.yaml"),
        ("--x ${a.b}", r"stage.cmd: \$\{a.b\} is a list; only scalars can be embedded in text"),
    ],
)
def test_interpolation_errors_name_the_field(template, message):
    with pytest.raises(PipelineError, match=message):
        interpolate(template, {"a": {"b": [1]}}, "stage.cmd")


def write_project(tmp_path, params: str, stage: str = "") -> None:
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "dvc.yaml").write_text(
        stage
        or "stages:\n  s:\n    foreach: ${shards}\n    do:\n      cmd: m2m x --k ${item} --n ${n}\n"
        "      outs:\n        - out-${item}.txt\n      params:\n        - n\n"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("shards: [0, 1]\nn: 1\n", r"stages.s.foreach\[0\]: expected a name such as \"000001\""),
        ("shards: []\nn: 1\n", "stages.s.foreach: expected a non-empty list"),
        ("shards: ['a', 'a']\nn: 1\n", "repeats an item"),
        ("shards: ['a']\n", r"\$\{n\} is not defined in params.yaml"),
        ("shards: ['a'\nn: 1\n", r"params.yaml: line \d+ not valid YAML"),
    ],
)
def test_broken_params_are_one_clear_error(tmp_path, params, message):
    write_project(tmp_path, params)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(tmp_path)


def test_a_stage_role_must_be_known(tmp_path):
    stage = "stages:\n  s:\n    cmd: m2m x\n    meta:\n      dagster: {role: %s}\n"
    write_project(tmp_path, "n: 1\n", stage % "train")
    assert load_pipeline(tmp_path)["s"].first.role == "train"
    write_project(tmp_path, "n: 1\n", stage % "trian")
    with pytest.raises(PipelineError, match=r"stages.s.meta.dagster.role: expected one of captions, .* got 'trian'"):
        load_pipeline(tmp_path)
    write_project(tmp_path, "n: 1\n", "stages:\n  s:\n    cmd: m2m x\n")
    assert load_pipeline(tmp_path)["s"].first.role is None  # a stage that is only run


def test_code_version_follows_the_stage_parameters(tmp_path):
    write_project(tmp_path, "shards: ['a', 'b']\nn: 1\n")
    before = load_pipeline(tmp_path)["s"].code_version()
    assert load_pipeline(tmp_path)["s"].code_version() == before
    write_project(tmp_path, "shards: ['a', 'b']\nn: 2\n")
    assert load_pipeline(tmp_path)["s"].code_version() != before


ONE_STAGE = "stages:\n  s:\n    cmd: {cmd}\n    outs:\n      - out.txt\n"


@pytest.mark.parametrize(
    ("cmd", "params", "message"),
    [
        ("m2m x --n ${n}", "n: 'a; touch PWNED'\n", r"params.yaml: n: 'a; touch PWNED' cannot be pasted into"),
        ("m2m x --n ${n}", "n: '$(reboot)'\n", "cannot be pasted into dvc.yaml: stages.s.cmd as one plain word"),
        ("m2m x --n ${n}", "n: --help\n", "not starting with -"),
        ("m2m x && m2m y", "n: 1\n", "uses the shell operator '&&'"),
        ("m2m x > out.txt", "n: 1\n", "uses the shell operator '>'"),
        ("m2m x `id`", "n: 1\n", "uses the shell operator '`'"),
    ],
)
def test_commands_are_plain_words_for_a_shell_and_for_shlex_alike(tmp_path, cmd, params, message):
    write_project(tmp_path, params, ONE_STAGE.format(cmd=f'"{cmd}"'))
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace("$", r"\$")):
        load_pipeline(tmp_path)
    assert load_pipeline(tmp_path, strict=False)["s"].first.cmds  # the asset graph still builds
