"""Resumable training checkpoints: ``<dir>/checkpoint-000100/``, each written whole or not at all.

Accelerate's ``save_state`` stores the UNet (``model.safetensors``), the optimizer, the lr scheduler,
the gradient scaler (fp16) and every process's RNG states (torch, CUDA, numpy, python); ``load_state``
reads them back with ``torch.load(weights_only=True)``, so nothing is unpickled. Beside them this module
writes the EMA weights (``ema.safetensors`` + ``ema.json``), each process's data position
(``data_<rank>.json``) and ``trainer_state.json`` (step, wall time, loss history and the settings a
resumed run must share). A checkpoint is written to ``.checkpoint-N.tmp`` and renamed when complete, so
every ``checkpoint-N`` folder is whole.

Two layouts (Accelerate's ``ProjectConfiguration.save_on_each_node``): machines that share the folder,
where the main process writes what is shared and renames; or machines that share none, where each
machine's local main process does, so every machine holds a whole copy with its own processes' files.
``check_layout`` proves at start that the folder is what the layout says, so a wrong one is an error
before any step, never a half-written checkpoint.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from m2m.data import write_json
from m2m.files import replace_dir
from m2m.weights import verify_safetensors

PATTERN = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"
DATA_STATE = re.compile(r"data_(\d+)\.json")
LAYOUT_PROBE = ".layout-{token}-{machine}"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if PATTERN.fullmatch(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(PATTERN.fullmatch(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _save_ema(ema, names: list[str], folder: Path) -> None:
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({name: p.detach().cpu().contiguous() for name, p in zip(names, shadow)}, folder / "ema.safetensors")
    write_json(folder / "ema.json", state)


def _load_ema(ema, names: list[str], folder: Path) -> None:
    path = folder / "ema.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no EMA weights in this checkpoint (it was made without --ema)")
    tensors = load_file(path)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{path}: no EMA weight for {missing[0]} (and {len(missing) - 1} more)")
    device = ema.shadow_params[0].device
    state = json.loads((folder / "ema.json").read_text(encoding="utf-8"))
    ema.load_state_dict({**state, "shadow_params": [tensors[n].to(device) for n in names]})


def writes(accelerator) -> bool:
    """Whether this process writes what the processes share (model, optimizer, EMA, trainer state) and
    renames: the main process, or with ``save_on_each_node`` the main process of each machine."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def _machine(accelerator) -> int:
    """The global rank of this machine's first process: it names the machine."""
    return accelerator.process_index - accelerator.local_process_index


def check_layout(accelerator, root: str | Path) -> None:
    """Every process sees, in ``root``, what its writer writes there and nothing another machine's writer
    writes; else a one-line ``ValueError`` on every process before anything is trained or written."""
    from accelerate.utils import broadcast_object_list, gather_object

    root = Path(root)
    token = broadcast_object_list([secrets.token_hex(8)])[0]
    probe = root / LAYOUT_PROBE.format(token=token, machine=_machine(accelerator))
    if writes(accelerator):
        root.mkdir(parents=True, exist_ok=True)
        probe.touch()
    accelerator.wait_for_everyone()
    probes = root.glob(LAYOUT_PROBE.format(token=token, machine="*")) if root.is_dir() else []
    seen = sorted(int(p.name.rsplit("-", 1)[1]) for p in probes)  # the machines whose writer this one sees
    views = gather_object([(accelerator.process_index, _machine(accelerator), seen)])
    accelerator.wait_for_everyone()
    if writes(accelerator):
        probe.unlink()
    problem = layout_problem(views, shared=not accelerator.project_configuration.save_on_each_node)
    if problem is not None:
        raise ValueError(f"--checkpoint-dir {root}: {problem}")


def layout_problem(views: list[tuple[int, int, list[int]]], shared: bool) -> str | None:
    """What is wrong with a checkpoint layout, given each process's ``(rank, machine, machines whose writer's
    probe it sees)`` (``check_layout``; a machine is named by its first rank); None when every process sees
    its writer's probe and, on per-machine folders, no other machine's."""
    for rank, machine, machines in views:
        if (0 if shared else machine) not in machines:
            if shared:
                return (
                    f"process {rank} does not see what the main process writes there; give every machine the "
                    "same shared folder, or pass --save-on-each-node"
                )
            return f"process {rank} does not see what its machine's main process writes there"
        if not shared and len(machines) > 1:
            return (
                f"--save-on-each-node, but process {rank} sees the folder of {len(machines)} machines; machines "
                "that share the folder leave --save-on-each-node off"
            )
    return None


def rescale_schedule(lr_scheduler, step: int, num_processes: int) -> None:
    """Continue the lr schedule of a checkpoint made by another number of processes at ``step``: Accelerate
    steps a prepared schedule once per process at every optimizer step, so its count is ``step`` times the
    processes that made it (the learning rate itself, a function of that count over the processes, is
    already the optimizer's)."""
    schedule = lr_scheduler.scheduler
    schedule.load_state_dict({**schedule.state_dict(), "last_epoch": step * num_processes})


def save_checkpoint(
    accelerator,
    root: str | Path,
    step: int,
    trainer_state: dict,
    data_state: dict,
    ema=None,
    ema_names: list[str] | None = None,
    keep: int = 2,
) -> Path:
    """Save everything a run needs to continue from ``step``; keep the newest ``keep`` checkpoints.

    Every process calls it: each writes its own RNG states and data position; the writers (``writes``)
    the rest, and rename.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    rank = accelerator.process_index
    if writes(accelerator):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_json(tmp / f"data_{rank}.json", data_state)
    accelerator.wait_for_everyone()
    if writes(accelerator):
        if ema is not None:
            _save_ema(ema, ema_names, tmp)
        write_json(tmp / TRAINER_STATE, {"step": step, **trainer_state})
        replace_dir(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def steps_seen(accelerator, root: str | Path) -> list[list[int]]:
    """Per process (by rank), the steps of the whole checkpoints it sees in ``root``, oldest first."""
    from accelerate.utils import gather_object

    return gather_object([[int(PATTERN.fullmatch(p.name).group(1)) for p in list_checkpoints(root)]])


# Settings that checkpoints made before them do not record, with the value every such run had.
SETTINGS_ADDED = {"timestep_sampling": "uniform"}


def read_trainer_state(folder: str | Path) -> dict:
    """``trainer_state.json``: step, ``elapsed_s``, ``train_s``, ``losses``, ``precision`` (which steps ran
    in which ``--mixed-precision``) and ``settings`` (those a checkpoint predates filled in from
    ``SETTINGS_ADDED``)."""
    path = Path(folder) / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable trainer state ({err})") from err
    missing = {"step", "elapsed_s", "train_s", "losses", "settings"} - set(state)
    if missing:
        raise ValueError(f"{path}: missing {', '.join(sorted(missing))}")
    state["settings"] = {**SETTINGS_ADDED, **state["settings"]}
    return state


def data_position(folder: Path, rank: int, num_processes: int, saved_processes: int) -> dict:
    """The data position this process continues from: its own, or, when the number of processes changed,
    the lowest rank's in the folder (every rank's stream position is the global one after the same step;
    the counts of skipped sets are that rank's)."""
    own = folder / f"data_{rank}.json"
    if num_processes == saved_processes:
        if not own.is_file():
            raise FileNotFoundError(
                f"{own}: missing; this folder was written by another machine's processes (see --save-on-each-node)"
            )
        return json.loads(own.read_text(encoding="utf-8"))
    ranks = sorted(int(match.group(1)) for p in folder.iterdir() if (match := DATA_STATE.fullmatch(p.name)))
    if not ranks:
        raise FileNotFoundError(f"{folder}: no data_<rank>.json; the checkpoint is not whole")
    return json.loads((folder / f"data_{ranks[0]}.json").read_text(encoding="utf-8"))


def load_checkpoint(accelerator, folder: str | Path, saved_processes: int, ema=None, ema_names=None) -> dict:
    """Restore model, optimizer, scheduler, RNGs and EMA; returns this process's data position.

    A checkpoint of ``saved_processes`` processes restores into any number: the model, optimizer, lr
    schedule and EMA are whole in it; a process with no RNG states of its own keeps the seeded ones
    (nothing eq. 5 draws comes from them: ``m2m.training.noise``).
    """
    folder = Path(folder)
    verify_safetensors(folder)
    position = data_position(folder, accelerator.process_index, accelerator.num_processes, saved_processes)
    accelerator.load_state(str(folder))
    if ema is not None:
        _load_ema(ema, ema_names, folder)
    return position


# Settings a resumed run may change: how each step's batch is split over processes and micro-batches
# (the model, optimizer, lr schedule and data position carry over; m2m.training.noise says what is drawn).
SPLIT_SETTINGS = ("num_processes", "micro_batch_size")


def differences(saved: dict, current: dict) -> list[str]:
    """``key=saved, this run has current`` for each setting that differs (``SPLIT_SETTINGS`` aside)."""
    return [
        f"{key}={saved.get(key)!r}, this run has {value!r}"
        for key, value in current.items()
        if saved.get(key) != value and key not in SPLIT_SETTINGS
    ]


def check_settings(folder: str | Path, saved: dict, current: dict) -> None:
    """A run resumes only with the settings its checkpoint was made with (steps, logging may change)."""
    differ = differences(saved, current)
    if differ:
        raise ValueError(
            f"{Path(folder) / TRAINER_STATE}: made with {differ[0]}; "
            "resume with the same setting and data or use another --checkpoint-dir"
        )
