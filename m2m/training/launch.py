"""``m2m train --num-processes N``: the same command starts its N data-parallel workers itself.

With N > 1, the process the user (or DVC, or Dagster) started is only the launcher: it runs
``accelerate launch --multi_gpu --num_processes N -m m2m <the same arguments>`` and waits for it; each
worker then sees ``WORLD_SIZE`` and trains its share. So ``dvc.yaml`` names one command, ``dvc.lock``
records what ran, and ``dvc repro`` and Dagster start training the same way.

Launch choices: ``--multi_gpu`` is what makes Accelerate start several processes at all (on a machine
without a GPU they train on the CPU over gloo, ``ACCELERATE_USE_CPU``); ``--main_process_port 0`` takes a
free port, so two trainings on one host never fight over 29500; the mixed precision is passed on, as
``accelerate launch`` would otherwise impose its own default on the workers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

WORKER_ENV = "WORLD_SIZE"  # set by accelerate (torch.distributed.run) in each worker


def is_launcher(num_processes: int) -> bool:
    """True in the process that must start the workers: several asked for, none started yet."""
    if num_processes < 1:
        raise ValueError(f"--num-processes: expected >= 1, got {num_processes}")
    world = os.environ.get(WORKER_ENV)
    if world is not None and num_processes > 1 and int(world) != num_processes:
        raise ValueError(f"--num-processes {num_processes}, but this worker was launched as one of {world}")
    return num_processes > 1 and world is None


def launch_command(argv: list[str], num_processes: int, mixed_precision: str | None) -> list[str]:
    """The ``accelerate launch`` command that runs ``m2m <argv>`` in ``num_processes`` workers (on the CPU
    when the environment says ``ACCELERATE_USE_CPU``: accelerate refuses ``--cpu`` beside ``--multi_gpu``)."""
    precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", precision,
        "--dynamo_backend", "no", "-m", "m2m", *argv,
    ]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned workers


def run_workers(argv: list[str], num_processes: int, mixed_precision: str | None) -> int:
    """Start the workers and wait for them; their exit status."""
    import torch

    cpu = os.environ.get("M2M_DEVICE") == "cpu" or not torch.cuda.is_available()
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "true"} if cpu else {})}
    command = launch_command(argv, num_processes, mixed_precision)
    print(f"starting {num_processes} training processes: accelerate launch ... -m m2m {' '.join(argv)}", flush=True)
    linux = sys.platform.startswith("linux")
    return subprocess.run(command, env=env, check=False, preexec_fn=_die_with_parent if linux else None).returncode
