"""``m2m train --num-processes N [--num-machines M ...]``: the same command starts its workers itself.

With N > 1 (or M > 1), the process the user (or DVC, or Dagster) started is only the launcher: it runs
``accelerate launch --multi_gpu --num_processes N -m m2m <the same arguments>`` and waits for it; each
worker then sees ``WORLD_SIZE`` and trains its share. So ``dvc.yaml`` names one command, ``dvc.lock``
records what ran, and ``dvc repro`` and Dagster start training the same way.

Several machines: ``--num-processes`` stays the total over all of them (accelerate's meaning: N / M per
machine), and ``--num-machines``, ``--machine-rank``, ``--main-process-ip`` and ``--main-process-port``
go to ``accelerate launch`` as its own options. Each defaults to an ``M2M_*`` environment variable
(``MACHINES_ENV``), so every machine runs the very command ``dvc.yaml`` names and only its environment
says which machine it is.

Launch choices: ``--multi_gpu`` is what makes Accelerate start several processes at all (on a machine
without a GPU they train on the CPU over gloo, ``ACCELERATE_USE_CPU``); on one machine
``--main_process_port 0`` takes a free port, so two trainings on one host never fight over 29500 (several
machines must agree on a port, so there it is required); the mixed precision is passed on, as
``accelerate launch`` would otherwise impose its own default on the workers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

WORKER_ENV = "WORLD_SIZE"  # set by accelerate (torch.distributed.run) in each worker
# Where each machine setting comes from when its flag is not given.
MACHINES_ENV = {
    "num_machines": "M2M_NUM_MACHINES",
    "machine_rank": "M2M_MACHINE_RANK",
    "main_process_ip": "M2M_MAIN_PROCESS_IP",
    "main_process_port": "M2M_MAIN_PROCESS_PORT",
}
HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _integer(field: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_option(field)} (or ${MACHINES_ENV[field]}): expected an integer, got {value!r}") from None


@dataclass(frozen=True)
class Machines:
    """The machines one training runs on and which of them this is (one machine: the defaults)."""

    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None

    @classmethod
    def from_flags(cls, **flags) -> "Machines":
        """Each setting from its flag, else its ``MACHINES_ENV`` variable, else the one-machine default;
        checked, so that nothing but a count, a rank, a host name or address and a port reaches the launch."""
        values = {
            field: flags.get(field) if flags.get(field) is not None else os.environ.get(env)
            for field, env in MACHINES_ENV.items()
        }
        machines = cls(
            num_machines=_integer("num_machines", values["num_machines"] or 1),
            machine_rank=_integer("machine_rank", values["machine_rank"] or 0),
            main_process_ip=values["main_process_ip"] or None,
            main_process_port=None if values["main_process_port"] in (None, "") else _integer(
                "main_process_port", values["main_process_port"]
            ),
        )
        machines.check()
        return machines

    def check(self) -> None:
        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                where = f"{_option(field)} (or ${MACHINES_ENV[field]})"
                raise ValueError(f"{where}: {message}, got {getattr(self, field)!r}")

        need(self.num_machines >= 1, "num_machines", "must be at least 1")
        need(0 <= self.machine_rank < self.num_machines, "machine_rank", f"must be in 0..{self.num_machines - 1}")
        port = self.main_process_port
        need(port is None or 1 <= port <= 65535, "main_process_port", "must be a TCP port, 1-65535")
        if self.num_machines > 1:
            need(self.main_process_ip is not None, "main_process_ip", "is required on several machines")
            need(port is not None, "main_process_port", "is required on several machines (all must agree on it)")
        if self.main_process_ip is not None:
            need(_is_host(self.main_process_ip), "main_process_ip", "must be an IP address or a host name")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return HOSTNAME.fullmatch(text) is not None


def is_launcher(num_processes: int, machines: Machines = Machines()) -> bool:
    """True in the process that must start the workers: several asked for, none started yet."""
    if num_processes < 1:
        raise ValueError(f"--num-processes: expected >= 1, got {num_processes}")
    if num_processes % machines.num_machines:
        raise ValueError(
            f"--num-processes: the total over all machines, a multiple of --num-machines {machines.num_machines}, "
            f"got {num_processes}"
        )
    world = os.environ.get(WORKER_ENV)
    if world is not None and (num_processes > 1 or machines.num_machines > 1) and int(world) != num_processes:
        raise ValueError(f"--num-processes {num_processes}, but this worker was launched as one of {world}")
    return (num_processes > 1 or machines.num_machines > 1) and world is None


def launch_command(
    argv: list[str], num_processes: int, mixed_precision: str | None, machines: Machines = Machines()
) -> list[str]:
    """The ``accelerate launch`` command that runs ``m2m <argv>`` in ``num_processes`` workers over
    ``machines`` (on the CPU when the environment says ``ACCELERATE_USE_CPU``: accelerate refuses ``--cpu``
    beside ``--multi_gpu``)."""
    precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    where = ["--num_machines", str(machines.num_machines), "--main_process_port", str(machines.main_process_port or 0)]
    if machines.num_machines > 1:
        where += ["--machine_rank", str(machines.machine_rank), "--main_process_ip", machines.main_process_ip]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        *where, "--mixed_precision", precision, "--dynamo_backend", "no", "-m", "m2m", *argv,
    ]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned workers


def run_workers(
    argv: list[str], num_processes: int, mixed_precision: str | None, machines: Machines = Machines()
) -> int:
    """Start this machine's workers and wait for them; their exit status."""
    import torch

    cpu = os.environ.get("M2M_DEVICE") == "cpu" or not torch.cuda.is_available()
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    command = launch_command(argv, num_processes, mixed_precision, machines)
    local = num_processes // machines.num_machines
    where = f" on machine {machines.machine_rank} of {machines.num_machines}" if machines.num_machines > 1 else ""
    print(f"starting {local} training processes{where}: accelerate launch ... -m m2m {' '.join(argv)}", flush=True)
    linux = sys.platform.startswith("linux")
    return subprocess.run(command, env=env, check=False, preexec_fn=_die_with_parent if linux else None).returncode
