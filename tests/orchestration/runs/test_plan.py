"""The main command's runs: one per shard, the light data steps together, one per heavy asset, each
waiting only for the runs that make its inputs (dvc.yaml's graph), the promotion last."""

from __future__ import annotations

from orchestration.dvc.stages import load_pipeline
from orchestration.runs import plan
from tests.orchestration.projects import REPO

JOBS = {"prepare": "prepare_captions", "shards": "generate_mis_shards", "train": "train_and_evaluate",
        "promote": "promote_champion"}
CHECKS = [("evaluation", "metrics_in_range"), ("m2m_self_pretrained", "loss_is_finite"),
          ("mis_dataset", "shards_match_manifest")]


def test_each_run_waits_only_for_the_runs_of_its_inputs():
    specs = {spec.key: spec for spec in plan.plan(load_pipeline(REPO, strict=False), JOBS, CHECKS)}
    shards = [key for key in specs if key.startswith("mis_shards ")]
    assert len(shards) == 4 and all(specs[key].after == (plan.CAPTIONS,) for key in shards)
    assert specs[shards[0]].partition == "000000" and specs[shards[0]].job == "generate_mis_shards"
    data = specs[plan.DATA]
    assert set(data.assets) == {"mis_dataset", "nvs_data", "procedure_data"} and set(data.after) == set(shards)
    assert data.checks == (("mis_dataset", "shards_match_manifest"),)
    # the two pre-trainings need only the data (the manifest and the shards): they may run side by side
    for name in ("m2m_self_pretrained", "m2m_dino_pretrained"):
        assert specs[name].assets == (name,) and set(specs[name].after) == {plan.DATA, *shards}
    assert specs["m2m_self_pretrained"].checks == (("m2m_self_pretrained", "loss_is_finite"),)
    # each fine-tuning needs M2M-DINO and the task data, not M2M-Self
    assert set(specs["m2m_nvs_finetuned"].after) == {"m2m_dino_pretrained", plan.DATA}
    assert set(specs["evaluation"].after) == {"m2m_self_pretrained", "m2m_dino_pretrained", plan.DATA, *shards}
    assert specs["evaluation"].checks == (("evaluation", "metrics_in_range"),)
    assert set(specs[plan.PROMOTION].after) == set(specs) - {plan.PROMOTION}


def test_without_promotion_there_is_no_promotion_run():
    keys = [spec.key for spec in plan.plan(load_pipeline(REPO, strict=False), JOBS, CHECKS, promote=False)]
    assert plan.PROMOTION not in keys and keys[0] == plan.CAPTIONS


def test_a_run_with_nothing_to_do_is_left_out_with_what_waits_only_on_it():
    specs = plan.plan(load_pipeline(REPO, strict=False), JOBS, CHECKS)
    nothing, _ = plan.to_run(specs, lambda spec: False)
    assert nothing == []  # a rerun with nothing changed records no materialization, not even the promotion's run
    runs, current = plan.to_run(specs, lambda spec: spec.key == "m2m_dino_pretrained")
    kept = {spec.key: spec for spec in runs}
    # what reads M2M-DINO runs again (its fine-tunings, the evaluation), then the promotion; nothing else
    assert set(kept) == {"m2m_dino_pretrained", "m2m_nvs_finetuned", "m2m_procedure_finetuned", "evaluation",
                         plan.PROMOTION}
    assert plan.DATA in current and "m2m_self_pretrained" in current
    assert kept["m2m_dino_pretrained"].after == () and kept["m2m_nvs_finetuned"].after == ("m2m_dino_pretrained",)
    assert set(kept[plan.PROMOTION].after) == set(kept) - {plan.PROMOTION}
    assert set(kept["evaluation"].after) == {"m2m_dino_pretrained"}


def test_every_run_but_the_promotion_says_what_it_makes():
    specs = plan.plan(load_pipeline(REPO, strict=False), JOBS, CHECKS)
    assert all(spec.makes for spec in specs if spec.key != plan.PROMOTION)
    assert {name for spec in specs for name in spec.makes} == set(load_pipeline(REPO, strict=False))


def test_the_freshness_checks_run_last_when_anything_ran():
    jobs = {**JOBS, "freshness": "check_freshness"}
    specs = plan.plan(load_pipeline(REPO, strict=False), jobs, CHECKS)
    last = specs[-1]
    assert last.key == plan.FRESHNESS and last.job == "check_freshness" and not last.makes
    assert set(last.after) == {spec.key for spec in specs[:-1]}  # after the promotion too
    kept, _ = plan.to_run(specs, lambda spec: spec.key == "m2m_self_pretrained")
    assert [spec.key for spec in kept][-2:] == [plan.PROMOTION, plan.FRESHNESS]
    assert plan.to_run(specs, lambda spec: False) == ([], [spec.key for spec in specs])  # a no-op rerun: none
    # runs an earlier command left were followed to their end first: promote and check what they made
    after_leftovers, _ = plan.to_run(specs, lambda spec: False, ran_before=True)
    assert [spec.key for spec in after_leftovers] == [plan.PROMOTION, plan.FRESHNESS]
    assert after_leftovers[0].after == () and after_leftovers[1].after == (plan.PROMOTION,)
