"""``m2m train --num-processes N``: the command starts its N workers itself under accelerate launch, with
the same arguments, so DVC and Dagster run one and the same command."""

from __future__ import annotations

import sys

import pytest

from m2m.training import launch


def test_the_launcher_relaunches_the_same_words_in_n_workers(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    argv = ["train", "--preset", "sd21", "--out", "assets/models/m2m self", "--num-processes", "4"]
    command = launch.launch_command(argv, 4, "bf16")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[command.index("--mixed_precision") + 1] == "bf16"
    assert command[command.index("--main_process_port") + 1] == "0"  # a free port: two trainings on one host
    assert command[-len(argv) - 2 :] == ["-m", "m2m", *argv] and "--cpu" not in command  # refused beside --multi_gpu
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # the compute resource's dtype, for `auto`
    auto = launch.launch_command(argv, 4, None)
    assert auto[auto.index("--mixed_precision") + 1] == "fp16"


def test_only_the_first_process_launches_and_a_worker_checks_its_count(monkeypatch):
    monkeypatch.delenv(launch.WORKER_ENV, raising=False)
    assert launch.is_launcher(2) and not launch.is_launcher(1)
    monkeypatch.setenv(launch.WORKER_ENV, "2")  # inside a worker accelerate started
    assert not launch.is_launcher(2)
    with pytest.raises(ValueError, match="--num-processes 4, but this worker was launched as one of 2"):
        launch.is_launcher(4)
    with pytest.raises(ValueError, match="expected >= 1"):
        launch.is_launcher(0)
