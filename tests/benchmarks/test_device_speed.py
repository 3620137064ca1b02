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
    status.write_text("correctness\tok\t3\nsampling\texit 1\t2\n")
    assert table(tmp_path, status) == 1
    assert "| sampling | FAILED (exit 1)" in capsys.readouterr().out
    (tmp_path / "correctness.json").write_text(json.dumps({**report, "ok": False, "failures": ["too far"]}))
    status.write_text("correctness\tok\t3\n")
    assert table(tmp_path, status) == 1
    assert "FAILED (too far)" in capsys.readouterr().out


def test_table_shows_the_rows_a_part_cut_off_by_its_limit_had_written(tmp_path, capsys):
    """speed_options rewrites its JSON after every option: a part its time limit stopped still shows them."""
    rows = {"eager": {"step_s": 0.02, "first_call_s": 0.1, "over_eager": 1.0, "rel_diff": 0.0},
            "compile cudagraphs": {"step_s": 0.01, "first_call_s": 5.0, "over_eager": 0.5, "rel_diff": 1e-4},
            "adamw fused": {"step_s": 0.005, "over_for_loop": 0.25, "max_abs_diff": 0.0}}
    partial = {"part": "speed_options", "ok": False, "partial": True, "failures": [], "results": {"rows": rows}}
    (tmp_path / "speed_options.json").write_text(json.dumps(partial))
    status = tmp_path / "status.tsv"
    status.write_text("speed_options\ttimed out after 100 s\t110\n")
    assert table(tmp_path, status) == 1
    out = capsys.readouterr().out
    assert "| speed_options | FAILED (timed out after 100 s), 110 s" in out
    assert "| b1 DINO step, compile cudagraphs | 10.0 ms, 0.50x eager, first call 5 s |" in out
    assert "| adamw fused | 5.0 ms/step, 0.25x for-loop |" in out
