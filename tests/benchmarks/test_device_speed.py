import json

import torch

from benchmarks.bench_device_speed import table
from benchmarks.bench_sampling import build, late_over_early, sequence_seconds


def test_sequence_seconds_times_every_image_and_leaves_the_pipeline_as_it_was():
    pipe = build("tiny", "self", "cpu", torch.float32)
    seconds = sequence_seconds(pipe, 2, 6, 1, 1, "cpu", torch.float32)
    assert len(seconds) == 6 and all(s > 0 for s in seconds)
    assert "_denoise" not in vars(pipe)  # the class's method again, not the timing wrapper
    assert late_over_early([1.0] * 5 + [2.0] * 5) == 2.0


def test_table_fails_a_part_that_failed_or_left_no_json(tmp_path, capsys):
    report = {"ok": True, "failures": [], "results": {
        "isa_rel_err_fp32": 1e-8, "isa_rel_err_bf16": 1e-3, "self_cache_max_abs_diff": 0.0,
        "dino_cache_max_abs_diff": 0.0, "log_w_max_abs_diff": 1e-7, "log_w_one_copy_over_w_copies": 0.5}}
    (tmp_path / "correctness.json").write_text(json.dumps(report))
    status = tmp_path / "status.tsv"
    status.write_text("correctness\tok\t3\n")
    assert table(tmp_path, status) == 0
    status.write_text("correctness\tok\t3\nsampling_b1\texit 1\t2\n")
    assert table(tmp_path, status) == 1
    assert "| sampling_b1 | FAILED (exit 1)" in capsys.readouterr().out
    (tmp_path / "correctness.json").write_text(json.dumps({**report, "ok": False, "failures": ["too far"]}))
    status.write_text("correctness\tok\t3\n")
    assert table(tmp_path, status) == 1
    assert "FAILED (too far)" in capsys.readouterr().out
