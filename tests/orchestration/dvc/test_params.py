"""params.yaml is checked against its schema before anything runs: one line naming the file and key."""

from __future__ import annotations

import pytest
import yaml

from orchestration import pipeline
from orchestration.dvc.params import ParamsError, validate
from tests.orchestration.projects import REPO, make_project, project_env, set_param


def shipped(name: str = "params.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", ["params.yaml", "params-sd21.yaml"])
def test_both_presets_fit_the_schema(name):
    validate(shipped(name))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pretrain.steps", "abc", "pretrain.steps: expected an integer"),
        ("pretrain.steps", 0, "pretrain.steps: expected an integer in [1, inf]"),
        ("pretrain.steps", True, "pretrain.steps: expected an integer"),
        ("finetune.lr", 1e30, "finetune.lr: expected a number in (0, 1]"),
        ("finetune.lr", float("nan"), "finetune.lr: expected a finite number"),
        ("preset", "tiny; touch PWNED #", "preset: expected one of tiny, sd21"),
        ("weights.sd", "weights/sd $(reboot)", "weights.sd: expected a relative path"),
        ("weights.sd", "/etc", "weights.sd: expected a path inside the project"),
        ("captions.input", "--help", "captions.input: expected a relative path"),
        ("evaluate.metrics_backend", "fancy", "evaluate.metrics_backend: expected one of tiny, standard"),
        ("manifest.test_percent", 101, "manifest.test_percent: expected a number in [0, 100]"),
    ],
)
def test_a_value_out_of_its_schema_is_named_by_key(key, value, expected):
    params = shipped()
    section, name = key.split(".") if "." in key else (None, key)
    (params[section] if section else params)[name] = value
    with pytest.raises(ParamsError) as err:
        validate(params)
    assert str(err.value).startswith("params.yaml: ") and expected in str(err.value)


def run_main(root, monkeypatch, capsys) -> tuple[int, str]:
    for key, value in project_env(root).items():
        monkeypatch.setenv(key, value)
    code = pipeline.main([])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda root: (root / "params.yaml").write_text("preset: tiny\npretrain: [1,\n"), "params.yaml: line 3 not valid YAML"),
        (lambda root: set_param(root, "pretrain.steps", "abc"), "params.yaml: pretrain.steps: expected an integer"),
        (
            lambda root: (root / "params.yaml").write_text(
                yaml.safe_dump({k: v for k, v in shipped().items() if k != "finetune"})
            ),
            "DVC cannot read the pipeline: failed to parse 'stages.m2m_nvs_finetuned.cmd' in 'dvc.yaml': Could not find 'finetune.steps'",
        ),
    ],
)
def test_the_main_command_refuses_broken_params_in_one_line(tmp_path, monkeypatch, capsys, breakage, expected):
    root = make_project(tmp_path / "project")
    breakage(root)
    code, err = run_main(root, monkeypatch, capsys)
    assert code == 2
    assert err.count("\n") == 1 and expected in err
    assert not (root / "assets").exists() and not (root / ".dagster" / "storage").exists()
