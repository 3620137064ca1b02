"""The registry's aliases: challenger on registration, gated promotion to champion, rollback."""

from __future__ import annotations

import uuid

import pytest

from m2m import registry, tracking
from m2m.cli import main

MODEL = "m2m-self"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One store for the module (creating an MLflow database takes a second)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("registry")
        tracking.configure(root)
        yield root


@pytest.fixture()
def store(project):
    """The module's store, emptied of registered models after each test."""
    tracking.configure(project)
    yield project
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)


def new_version(tmp_path, metrics: dict[str, float], name: str = MODEL):
    version = registry.register((tmp_path / uuid.uuid4().hex).as_uri(), name, tags={"dvc.md5": "x"})
    registry.set_metrics(name, version.version, metrics)
    return str(version.version)


def aliases(name: str = MODEL) -> dict[str, str]:
    found = {alias: registry.alias_version(name, alias) for alias in ("challenger", "champion")}
    return {alias: str(version.version) for alias, version in found.items() if version is not None}


def test_register_gives_the_new_version_the_challenger_alias(store):
    first = new_version(store, {"fid": 10})
    assert aliases() == {"challenger": first}
    second = new_version(store, {"fid": 9})
    assert aliases() == {"challenger": second}


def test_champion_since_is_a_readable_utc_time(store):
    from datetime import datetime, timezone

    new_version(store, {"fid": 10})
    registry.promote(MODEL)
    text = registry.alias_version(MODEL, registry.CHAMPION).tags[registry.CHAMPION_SINCE_TAG]
    assert abs(datetime.fromisoformat(text) - datetime.now(timezone.utc)).total_seconds() < 60
    assert registry.since("1796000000.5") < registry.since(text)  # epoch-second tags of older stores still order


def test_first_challenger_becomes_champion_then_a_second_promote_changes_nothing(store):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    decision = registry.promote(MODEL)
    assert decision.changed and not decision.refused and decision.champion == first
    again = registry.promote(MODEL)
    assert not again.changed and not again.refused and "already the champion" in again.reason
    assert aliases() == {"challenger": first, "champion": first}


def test_better_challenger_is_promoted_with_the_metrics_as_reason(store):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    registry.promote(MODEL)
    second = new_version(store, {"fid": 8, "clip_image_image": 80})
    decision = registry.promote(MODEL)
    assert decision.changed and decision.champion == second
    assert "better fid" in decision.reason and "fid 8 vs 10" in decision.reason
    assert aliases() == {"challenger": second, "champion": second}
    assert first != second


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({"fid": 12, "clip_image_image": 90}, "worse fid"),
        ({"fid": 9, "clip_image_image": 70}, "worse clip_image_image"),
        ({"fid": 10, "clip_image_image": 80}, "no better on any"),
        ({"clip_image_image": 95}, "challenger has no finite value for fid"),
    ],
)
def test_challenger_that_does_not_beat_the_champion_is_refused_and_nothing_moves(store, metrics, why):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    registry.promote(MODEL)
    second = new_version(store, metrics)
    decision = registry.promote(MODEL)
    assert decision.refused and not decision.changed
    assert why in decision.reason
    assert aliases() == {"challenger": second, "champion": first}


def test_custom_rules_decide_instead_of_the_defaults(store):
    first = new_version(store, {"fid": 10, "consistency": 0.5})
    registry.promote(MODEL)
    second = new_version(store, {"fid": 20, "consistency": 0.9})
    assert registry.promote(MODEL).refused
    decision = registry.promote(MODEL, [registry.Rule.parse("consistency:max")])
    assert decision.changed and decision.champion == second != first


def test_no_challenger_is_refused(store):
    new_version(store, {"fid": 10})
    registry.promote(MODEL)
    from mlflow.tracking import MlflowClient

    MlflowClient().delete_registered_model_alias(MODEL, "challenger")
    decision = registry.promote(MODEL)
    assert decision.refused and "no version with alias 'challenger'" in decision.reason


def test_unknown_models_are_refused_by_name(store):
    new_version(store, {"fid": 10})
    for decision in (registry.promote("nope"), registry.rollback("nope"), registry.rollback("nope", to_version=1)):
        assert decision.refused and decision.reason == f"no registered model 'nope' (registered: {MODEL})"


def test_rollback_returns_to_the_previous_champion_and_blocks_re_promotion(store):
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    registry.promote(MODEL)
    second = new_version(store, {"fid": 5, "clip_image_image": 90})
    registry.promote(MODEL)
    decision = registry.rollback(MODEL)
    assert decision.changed and decision.champion == first
    assert aliases() == {"challenger": second, "champion": first}
    refused = registry.promote(MODEL)
    assert refused.refused and "rolled back" in refused.reason
    assert registry.rollback(MODEL).refused  # no earlier champion than the first
    explicit = registry.rollback(MODEL, to_version=int(second))  # the rule holds for --to-version too
    assert explicit.refused and "rolled back" in explicit.reason and aliases()["champion"] == first
    same = registry.rollback(MODEL, to_version=int(first))
    assert not same.changed and not same.refused and "already the champion" in same.reason


def test_rollback_refuses_unknown_versions_and_models_without_champion(store):
    assert registry.rollback(MODEL).refused
    new_version(store, {"fid": 10})
    registry.promote(MODEL)
    decision = registry.rollback(MODEL, to_version=7)
    assert decision.refused and "no version 7" in decision.reason


def test_find_version_by_dvc_hash(store):
    version = registry.register((store / "a").as_uri(), MODEL, tags={"dvc.md5": "abc.dir"})
    assert str(registry.find_version(MODEL, "dvc.md5", "abc.dir").version) == str(version.version)
    assert registry.find_version(MODEL, "dvc.md5", "other") is None
    assert registry.find_version("never-registered", "dvc.md5", "abc.dir") is None


@pytest.mark.parametrize("text", ["fid", "fid:lowest", ":min", "fid:"])
def test_malformed_rules_are_one_clear_error(text):
    with pytest.raises(ValueError, match="expected NAME:min or NAME:max"):
        registry.Rule.parse(text)


def test_cli_promotes_refuses_and_rolls_back(store, capsys):
    project = ["--project", str(store)]
    first = new_version(store, {"fid": 10, "clip_image_image": 80})
    assert main(["promote", "--model", MODEL, *project]) == 0
    assert f"champion v{first}" in capsys.readouterr().out
    new_version(store, {"fid": 11, "clip_image_image": 80})
    assert main(["promote", "--model", MODEL, *project]) == 1
    assert "worse fid" in capsys.readouterr().out
    assert main(["promote", "--model", MODEL, "--metric", "clip_image_image:max", *project]) == 1
    assert main(["promote", "--model", MODEL, "--metric", "fid:max", *project]) == 0
    assert main(["promote", "--model", MODEL, "--rollback", *project]) == 0
    assert f"to v{first}" in capsys.readouterr().out
    assert aliases()["champion"] == first


def test_cli_refuses_a_missing_store_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["promote", "--model", MODEL, "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("m2m promote: error: --project") and "no MLflow store at" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_flags_are_one_line(store, capsys):
    assert main(["promote", "--model", MODEL, "--to-version", "2", "--project", str(store)]) == 2
    assert capsys.readouterr().err.strip() == "m2m promote: error: --to-version needs --rollback"
    assert main(["promote", "--model", MODEL, "--metric", "fid", "--project", str(store)]) == 2
    assert "expected NAME:min or NAME:max" in capsys.readouterr().err


def test_metric_tags_read_as_six_significant_digits(store):
    version = new_version(store, {"consistency": 1 / 6, "fid": 123456.789})
    tags = registry.alias_version(MODEL, registry.CHALLENGER).tags
    assert tags["metric.consistency"] == "0.166667" and tags["metric.fid"] == "123457"
    assert registry.metrics_of(registry.alias_version(MODEL, registry.CHALLENGER)) == {
        "consistency": 0.166667, "fid": 123457.0}
    assert version == "1"


def test_the_registered_model_gets_a_description_and_tags_once(store):
    from mlflow.tracking import MlflowClient

    register = lambda text: registry.register(  # noqa: E731
        (store / uuid.uuid4().hex).as_uri(), MODEL, tags={}, model_description=text, model_tags={"variant": "Self"})
    register("M2M-Self pre-trained.")
    client = MlflowClient()
    client.update_registered_model(MODEL, description="Edited by the team.")
    register("M2M-Self pre-trained.")
    model = client.get_registered_model(MODEL)
    assert model.description == "Edited by the team." and model.tags == {"variant": "Self"}


def test_the_version_description_links_its_latest_evaluation(store):
    from mlflow.tracking import MlflowClient

    version = registry.register((store / "a").as_uri(), MODEL, tags={}, description="Trained 200 steps.").version
    registry.note_evaluation(MODEL, version, "http://127.0.0.1:5077/#/experiments/2/runs/first")
    registry.note_evaluation(MODEL, version, "http://127.0.0.1:5077/#/experiments/2/runs/second")
    text = MlflowClient().get_model_version(MODEL, version).description
    assert text == "Trained 200 steps.\n\nEvaluated in [this run](http://127.0.0.1:5077/#/experiments/2/runs/second)."
