"""Resumable training checkpoints: ``<dir>/checkpoint-000100/``, each written whole or not at all.

Accelerate's ``save_state`` stores the UNet (``model.safetensors``), the optimizer, the lr scheduler,
the gradient scaler (fp16) and every process's RNG states (torch, CUDA, numpy, python); ``load_state``
reads them back with ``torch.load(weights_only=True)``, so nothing is unpickled. Beside them this module
writes the EMA weights (``ema.safetensors`` + ``ema.json``), each process's noise generator
(``noise_<rank>.safetensors``) and data position (``data_<rank>.json``), and ``trainer_state.json``
(step, wall time, loss history and the settings a resumed run must share). A checkpoint is written to
``.checkpoint-N.tmp`` and renamed when complete, so every ``checkpoint-N`` folder is whole.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from m2m.data import write_json
from m2m.files import replace_dir
from m2m.weights import verify_safetensors

PATTERN = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"


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


def save_checkpoint(
    accelerator,
    root: str | Path,
    step: int,
    trainer_state: dict,
    data_state: dict,
    noise: torch.Generator,
    ema=None,
    ema_names: list[str] | None = None,
    keep: int = 2,
) -> Path:
    """Save everything a run needs to continue from ``step``; keep the newest ``keep`` checkpoints.

    Every process calls it: each writes its own RNG states, noise generator and data position.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    save_file({"state": noise.get_state()}, tmp / f"noise_{rank}.safetensors")
    write_json(tmp / f"data_{rank}.json", data_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            _save_ema(ema, ema_names, tmp)
        write_json(tmp / TRAINER_STATE, {"step": step, **trainer_state})
        replace_dir(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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


def load_checkpoint(accelerator, folder: str | Path, noise: torch.Generator, ema=None, ema_names=None) -> dict:
    """Restore model, optimizer, scheduler, RNGs, noise generator and EMA; returns this process's data position."""
    folder = Path(folder)
    rank = accelerator.process_index
    verify_safetensors(folder)
    for name in (f"data_{rank}.json", f"noise_{rank}.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing; the checkpoint was made by fewer processes")
    accelerator.load_state(str(folder))
    noise.set_state(load_file(folder / f"noise_{rank}.safetensors")["state"])
    if ema is not None:
        _load_ema(ema, ema_names, folder)
    return json.loads((folder / f"data_{rank}.json").read_text(encoding="utf-8"))


def differences(saved: dict, current: dict) -> list[str]:
    """``key=saved, this run has current`` for each setting that differs."""
    return [
        f"{key}={saved.get(key)!r}, this run has {value!r}" for key, value in current.items() if saved.get(key) != value
    ]


def check_settings(folder: str | Path, saved: dict, current: dict) -> None:
    """A run resumes only with the settings its checkpoint was made with (steps, logging may change)."""
    differ = differences(saved, current)
    if differ:
        raise ValueError(
            f"{Path(folder) / TRAINER_STATE}: made with {differ[0]}; "
            "resume with the same setting and data or use another --checkpoint-dir"
        )
