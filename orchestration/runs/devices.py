"""A device per heavy step: a lease of device indices, held for the step's life.

Dagster's ``gpu`` pool says how many heavy steps run at once; it does not say *which* GPU each one
computes on, so with ``device: auto`` every concurrent step would pick ``cuda:0``. Each heavy step
therefore leases device indices before its command starts: one lock file per index under
``$DAGSTER_HOME/devices/`` (``cuda-0.lock``, ``cuda-1.lock``, ... by the GPU's machine-wide index, or
``cpu-0.lock`` ...), taken with
``flock``. The command inherits the lock's file descriptor, so the lease lasts as long as the step or
its command lives, and the kernel frees it when the last of them exits: a step killed with
``kill -9`` holds no device afterwards, with nothing to clean up. A DDP training of N processes
leases N indices.

The command sees only its devices: ``CUDA_VISIBLE_DEVICES`` lists the leased GPUs (mapped through the
caller's own ``CUDA_VISIBLE_DEVICES``, if set). On a machine without GPUs the "devices" are equal
shares of the CPU cores (as many as the pool's limit): a CPU device pins its command to its cores
(``sched_setaffinity``) and sets ``OMP_NUM_THREADS`` to their number, so two steps at once do not
fight over every core.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# How often a step waiting for a device says so in its log.
WAIT_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class Devices:
    """The devices of this machine that heavy steps share: ``kind`` cuda or cpu, ``count`` of them;
    ``cores`` (cpu only) the cores each one gets."""

    kind: str
    count: int
    cores: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of_machine(cls, kind: str, cpu_devices: int = 1) -> "Devices":
        """The GPUs torch sees (``kind`` cuda), or the CPU's cores split into ``cpu_devices`` shares."""
        if kind == "cuda":
            import torch

            return cls("cuda", max(1, torch.cuda.device_count()))
        cores = sorted(os.sched_getaffinity(0))
        count = max(1, min(cpu_devices, len(cores)))
        share = len(cores) // count
        return cls("cpu", count, tuple(tuple(cores[i * share : (i + 1) * share]) for i in range(count)))

    def physical(self, index: int) -> str:
        """The GPU ``index`` is, as the machine names it: through this process's ``CUDA_VISIBLE_DEVICES``
        (a Celery worker of one GPU sees it as index 0)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        return visible[index].strip() if len(visible) > index and visible[index].strip() else str(index)

    def lock_name(self, index: int) -> str:
        """The lock file of device ``index``: GPUs by their machine-wide name, so that processes seeing
        different GPUs (two workers, one GPU each) never wait for each other, and ones seeing the same GPU do."""
        name = self.physical(index) if self.kind == "cuda" else str(index)
        return f"{self.kind}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.lock"

    def env(self, indices: list[int]) -> dict[str, str]:
        """The environment that confines a command to the leased ``indices``."""
        if self.kind == "cuda":
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.physical(i) for i in indices), "M2M_DEVICE": "cuda"}
        threads = str(sum(len(self.cores[i]) for i in indices))
        return {"M2M_DEVICE": "cpu", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads}

    def affinity(self, indices: list[int]) -> set[int] | None:
        """The cores a command on the leased cpu ``indices`` may run on (None: no pinning)."""
        if self.kind != "cpu":
            return None
        return {core for i in indices for core in self.cores[i]}

    def names(self, indices: list[int]) -> str:
        return ", ".join(f"{self.kind}:{i}" for i in indices)


@dataclass
class Lease:
    """Device ``indices`` held through the open, locked files ``fds`` (pass them to the command)."""

    devices: Devices
    indices: list[int]
    fds: list[int]

    def env(self) -> dict[str, str]:
        return self.devices.env(self.indices)

    def affinity(self) -> set[int] | None:
        return self.devices.affinity(self.indices)


def lease_folder(home: str | Path) -> Path:
    """Where the lock files live: ``devices/`` in the Dagster instance's folder."""
    return Path(home) / "devices"


def _try_lock(path: Path, holder: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{holder}\n".encode())
    return fd


def holders(devices: Devices, folder: Path) -> dict[int, str]:
    """Which of ``devices`` are leased now, and by whom (what the holder wrote into its lock file)."""
    held = {}
    for index in range(devices.count):
        path = folder / devices.lock_name(index)
        if not path.exists():
            continue
        fd = _try_lock(path, "")
        if fd is None:
            held[index] = path.read_text(encoding="utf-8", errors="replace").strip()
        else:
            os.close(fd)
    return held


@contextmanager
def lease(devices: Devices, needed: int, holder: str, folder: Path, log=None, timeout_s: float | None = None):
    """Hold ``needed`` free device indices (the lowest free ones) until the block ends.

    Waits while fewer are free (another step, or a DDP training, holds them), saying so in ``log``
    every ``WAIT_LOG_EVERY_S``; ``timeout_s`` (None: no limit) raises TimeoutError. On the CPU, N
    processes of one training share the cores of at most every device (gloo needs no device of its own).
    """
    if devices.kind == "cpu":
        needed = min(needed, devices.count)
    if needed > devices.count:
        raise ValueError(f"needs {needed} {devices.kind} devices, this machine has {devices.count}")
    folder.mkdir(parents=True, exist_ok=True)
    start, said = time.monotonic(), float("-inf")
    while True:
        held: list[tuple[int, int]] = []
        for index in range(devices.count):
            fd = _try_lock(folder / devices.lock_name(index), holder)
            if fd is not None:
                held.append((index, fd))
                if len(held) == needed:
                    break
        if len(held) == needed:
            break
        for _, fd in held:
            os.close(fd)
        waited = time.monotonic() - start
        if timeout_s is not None and waited > timeout_s:
            raise TimeoutError(f"no {needed} free {devices.kind} device(s) in {timeout_s:.0f} s")
        if log and time.monotonic() - said >= WAIT_LOG_EVERY_S:
            log(f"waiting for {needed} free {devices.kind} device(s) of {devices.count} ({waited:.0f} s so far)")
            said = time.monotonic()
        time.sleep(0.5)
    try:
        yield Lease(devices, [index for index, _ in held], [fd for _, fd in held])
    finally:
        for _, fd in held:
            os.close(fd)
