"""Device leases: concurrent steps get different devices, a DDP step several, a killed step frees its own,
and a command sees only its devices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.runs.devices import Devices, holders, lease

HOLD = """
import sys, time
from pathlib import Path
from orchestration.runs.devices import Devices, lease
kind, count, needed, folder, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
with lease(Devices(kind, count, tuple((i,) for i in range(count)) if kind == "cpu" else ()), needed, "holder", folder) as held:
    out.write_text(",".join(map(str, held.indices)))
    time.sleep(120)
"""


def hold(tmp_path: Path, name: str, count: int, needed: int = 1, kind: str = "cuda",
         visible: str | None = None) -> tuple[subprocess.Popen, Path]:
    """A step in another process that leases ``needed`` of ``count`` devices and holds them (``visible``:
    its ``CUDA_VISIBLE_DEVICES``)."""
    out = tmp_path / f"{name}.txt"
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(count), str(needed), str(tmp_path / "devices"), str(out)],
                            cwd=Path(__file__).resolve().parents[3], env=env)
    deadline = time.monotonic() + 60
    while not out.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not lease"
        time.sleep(0.05)
    return proc, out


def indices(out: Path) -> list[int]:
    return [int(i) for i in out.read_text().split(",")]


def test_two_concurrent_steps_get_different_devices_and_a_killed_one_frees_its_own(tmp_path):
    gpus = Devices("cuda", 2)
    first, first_out = hold(tmp_path, "first", 2)
    second, second_out = hold(tmp_path, "second", 2)
    try:
        assert sorted(indices(first_out) + indices(second_out)) == [0, 1]
        assert set(holders(gpus, tmp_path / "devices")) == {0, 1}
        with pytest.raises(TimeoutError):  # both devices are held: a third step waits
            with lease(gpus, 1, "third", tmp_path / "devices", timeout_s=1):
                pass
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        with lease(gpus, 1, "third", tmp_path / "devices", timeout_s=10) as third:
            assert third.indices == indices(first_out)  # the killed step's device, freed by the kernel
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_ddp_step_of_n_processes_leases_n_devices(tmp_path):
    gpus = Devices("cuda", 4)
    ddp, out = hold(tmp_path, "ddp", 4, needed=3)
    try:
        assert indices(out) == [0, 1, 2]
        with lease(gpus, 1, "single", tmp_path / "devices", timeout_s=5) as single:
            assert single.indices == [3]
        with pytest.raises(TimeoutError):
            with lease(gpus, 2, "pair", tmp_path / "devices", timeout_s=1):
                pass
    finally:
        ddp.kill()
        ddp.wait()
    with pytest.raises(ValueError, match="needs 5 cuda devices, this machine has 4"):
        with lease(gpus, 5, "too many", tmp_path / "devices"):
            pass


def test_a_lease_passed_to_a_command_lasts_as_long_as_the_command(tmp_path):
    gpus = Devices("cuda", 1)
    with lease(gpus, 1, "step", tmp_path / "devices") as held:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=tuple(held.fds))
    try:
        assert holders(gpus, tmp_path / "devices") == {0: "step"}  # the step ended, its command holds on
    finally:
        child.kill()
        child.wait()
    assert holders(gpus, tmp_path / "devices") == {}


def test_a_command_sees_only_its_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert Devices("cuda", 4).env([1, 3])["CUDA_VISIBLE_DEVICES"] == "1,3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the machine's GPUs for this Dagster, renumbered
    assert Devices("cuda", 4).env([1, 3])["CUDA_VISIBLE_DEVICES"] == "5,7"
    cpu = Devices("cpu", 2, ((0, 1), (2, 3)))
    assert cpu.env([1])["OMP_NUM_THREADS"] == "2" and cpu.affinity([1]) == {2, 3}
    assert cpu.env([0, 1])["OMP_NUM_THREADS"] == "4"


def test_workers_of_one_gpu_each_lease_by_the_machines_gpu_name(tmp_path, monkeypatch):
    """Two Celery workers on one machine, CUDA_VISIBLE_DEVICES=0 and =1, each see their GPU as index 0:
    they share the lease folder and never wait for each other; a step seeing GPU 1 as well waits for it."""
    first, _ = hold(tmp_path, "worker-gpu0", count=1, visible="0")
    second, _ = hold(tmp_path, "worker-gpu1", count=1, visible="1")  # would wait forever on a shared cuda-0.lock
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert holders(Devices("cuda", 1), tmp_path / "devices") == {0: "holder"}
        with pytest.raises(TimeoutError):
            with lease(Devices("cuda", 1), 1, "third", tmp_path / "devices", timeout_s=1):
                pass
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3f2a,GPU-77c1")
        assert Devices("cuda", 2).lock_name(1) == "cuda-GPU-77c1.lock"
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_the_cpu_splits_into_equal_shares_of_its_cores():
    cores = sorted(os.sched_getaffinity(0))
    one = Devices.of_machine("cpu", 1)
    assert one.count == 1 and one.cores == (tuple(cores),)
    many = Devices.of_machine("cpu", len(cores) + 3)  # never more devices than cores
    assert many.count == len(cores) and all(len(share) == 1 for share in many.cores)


def test_on_the_cpu_a_ddp_step_shares_the_cores_it_can_get(tmp_path):
    cpu = Devices("cpu", 2, ((0,), (1,)))
    with lease(cpu, 4, "ddp", tmp_path / "devices", timeout_s=1) as held:
        assert held.indices == [0, 1]
