"""dvc.yaml read by DVC itself (vars, foreach, matrix, params files), lineage from DVC's graph, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestration.dvc import stages
from orchestration.dvc.stages import ROLES, PipelineError, load_pipeline, upstream_assets

REPO = Path(__file__).resolve().parents[3]

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


def write_project(tmp_path, params: str, stage: str = "") -> None:
    (tmp_path / "params.yaml").write_text(params)
    (tmp_path / "dvc.yaml").write_text(
        stage
        or "stages:\n  s:\n    foreach: ${shards}\n    do:\n      cmd: m2m x --k ${item} --n ${n}\n"
        "      outs:\n        - out-${item}.txt\n      params:\n        - n\n"
    )


def test_dvc_resolves_vars_matrix_dict_foreach_and_params_files(tmp_path):
    (tmp_path / "params.yaml").write_text("lrs: [0.1, 0.2]\nn: 1\n")
    (tmp_path / "train.yaml").write_text("epochs: 3\n")
    (tmp_path / "dvc.yaml").write_text(
        "vars:\n  - prefix: out\nstages:\n"
        "  make:\n    foreach: {a: {size: 8}, b: {size: 16}}\n    do:\n"
        "      cmd: m2m make --size ${item.size} --name ${key}\n      outs:\n        - ${prefix}/${key}.txt\n"
        "  sweep:\n    matrix:\n      lr: ${lrs}\n      bs: [4, 8]\n"
        "    cmd: m2m train --lr ${item.lr} --bs ${item.bs}\n    deps:\n      - out/a.txt\n"
        "    params:\n      - n\n      - train.yaml:\n          - epochs\n"
    )
    groups = load_pipeline(tmp_path)
    assert groups["make"].items == ["a", "b"]
    assert groups["make"].stage("b").cmds == ("m2m make --size 16 --name b",)
    assert groups["make"].stage("a").outs == ("out/a.txt",)
    sweep = groups["sweep"]
    assert sweep.partitioned and sweep.items == ["0.1-4", "0.1-8", "0.2-4", "0.2-8"]
    assert sweep.stage("0.2-8").cmds == ("m2m train --lr 0.2 --bs 8",)
    assert sweep.first.params == {"n": 1, "train.yaml:epochs": 3}
    assert upstream_assets(groups, "sweep") == ["make"]  # DVC's graph: out/a.txt comes from make@a
    before = sweep.code_version()
    (tmp_path / "train.yaml").write_text("epochs: 4\n")  # a params file other than params.yaml
    assert load_pipeline(tmp_path)["sweep"].code_version() != before


def test_the_index_is_read_again_only_when_a_file_dvc_read_changes(tmp_path, monkeypatch):
    write_project(tmp_path, "shards: ['a']\nn: 1\n")
    calls = []
    run = stages.subprocess.run
    monkeypatch.setattr(stages.subprocess, "run", lambda *a, **k: calls.append(a) or run(*a, **k))
    load_pipeline(tmp_path)
    load_pipeline(tmp_path)
    assert len(calls) == 1
    write_project(tmp_path, "shards: ['a', 'b']\nn: 1\n")
    assert load_pipeline(tmp_path)["s"].items == ["a", "b"] and len(calls) == 2
    (tmp_path / ".dvc").mkdir()  # a DVC project: another process (a Dagster step) reads it from disk
    stages._INDEX_CACHE.clear()
    load_pipeline(tmp_path)
    stages._INDEX_CACHE.clear()
    assert load_pipeline(tmp_path)["s"].items == ["a", "b"] and len(calls) == 3
    (tmp_path / "params.yaml").write_text("shards: ['c']\nn: 1\n")
    stages._INDEX_CACHE.clear()
    assert load_pipeline(tmp_path)["s"].items == ["c"] and len(calls) == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("shards: ['a']\n", r"dvc.yaml: DVC cannot read the pipeline: .*stages.s@a.cmd.*Could not find 'n'"),
        ("shards: ['a'\nn: 1\n", r"params.yaml: line \d+ not valid YAML"),
    ],
)
def test_broken_params_are_one_clear_error(tmp_path, params, message):
    write_project(tmp_path, params)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(tmp_path)


def test_broken_dvc_yaml_is_dvcs_error_with_its_line(tmp_path):
    write_project(tmp_path, "n: 1\n", "stages:\n  s:\n    cmd: m2m x\n    outs: [${n}/b]\n")
    with pytest.raises(PipelineError, match=r"DVC cannot read the pipeline: .*'dvc.yaml'.* \(line 4: .*\)"):
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
        ("m2m x --n ${n}", "n: '$(reboot)'\n", "cannot be pasted into dvc.yaml: stages.s as one plain word"),
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
