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


def test_several_machines_pass_their_rank_and_main_process_to_accelerate(monkeypatch):
    for env in launch.MACHINES_ENV.values():
        monkeypatch.delenv(env, raising=False)
    machines = launch.Machines.from_flags(
        num_machines=2, machine_rank=1, main_process_ip="10.0.0.7", main_process_port=29611
    )
    command = launch.launch_command(["train", "--num-processes", "4"], 4, "no", machines)

    def value(option):
        return command[command.index(option) + 1]

    assert value("--num_processes") == "4"  # the total over the machines, as accelerate counts it
    assert (value("--num_machines"), value("--machine_rank")) == ("2", "1")
    assert (value("--main_process_ip"), value("--main_process_port")) == ("10.0.0.7", "29611")
    one = launch.launch_command(["train"], 2, "no")
    assert "--machine_rank" not in one and "--main_process_ip" not in one


def test_each_machine_runs_the_same_command_and_its_environment_says_which(monkeypatch):
    monkeypatch.delenv(launch.WORKER_ENV, raising=False)
    monkeypatch.setenv("M2M_NUM_MACHINES", "2")
    monkeypatch.setenv("M2M_MACHINE_RANK", "1")
    monkeypatch.setenv("M2M_MAIN_PROCESS_IP", "node-0.cluster.local")
    monkeypatch.setenv("M2M_MAIN_PROCESS_PORT", "29500")
    machines = launch.Machines.from_flags()
    assert machines == launch.Machines(2, 1, "node-0.cluster.local", 29500)
    assert launch.Machines.from_flags(machine_rank=0).machine_rank == 0  # a flag wins over the environment
    assert launch.is_launcher(2, machines)  # one process per machine still needs accelerate to meet the other


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (dict(num_machines=2, machine_rank=2, main_process_ip="127.0.0.1", main_process_port=1), "--machine-rank"),
        (dict(num_machines=2, main_process_port=29500), "--main-process-ip .*: is required on several machines"),
        (dict(num_machines=2, main_process_ip="127.0.0.1"), "--main-process-port .*: is required"),
        (dict(main_process_ip="127.0.0.1; rm -rf ~", main_process_port=1), "must be an IP address or a host name"),
        (dict(main_process_port=70000), "must be a TCP port"),
    ],
)
def test_machine_settings_are_checked_before_they_reach_the_launch(monkeypatch, flags, message):
    for env in launch.MACHINES_ENV.values():
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(ValueError, match=message):
        launch.Machines.from_flags(**flags)


def test_the_environment_is_checked_like_the_flags(monkeypatch):
    monkeypatch.setenv("M2M_NUM_MACHINES", "two")
    with pytest.raises(ValueError, match=r"--num-machines \(or \$M2M_NUM_MACHINES\): expected an integer, got 'two'"):
        launch.Machines.from_flags()


def test_the_total_of_processes_is_split_evenly_over_the_machines(monkeypatch):
    monkeypatch.delenv(launch.WORKER_ENV, raising=False)
    machines = launch.Machines(2, 0, "127.0.0.1", 29500)
    with pytest.raises(ValueError, match="a multiple of --num-machines 2, got 3"):
        launch.is_launcher(3, machines)
