"""Helpers the proof-of-learning studies share: training to a time budget, loading, averaging, chance."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

CALIBRATION_STEPS = 10
PRECEDING = 4  # K preceding images, and the window W


def offline_on_cpu(threads: int | None) -> None:
    """What every learning benchmark runs under: nothing fetched from a hub, and ``threads`` torch threads
    (None: torch's default, all cores)."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if threads:
        torch.set_num_threads(threads)


def train_for(config, minutes: float | None = None, steps: int | None = None, reuse: bool = False) -> dict:
    """Train for ``steps`` optimizer steps, or for about ``minutes``: a short run measures seconds per step,
    then resuming from its checkpoint trains to the step count that fits (the same weights as one
    uninterrupted run of that length).

    ``reuse``: a model already in ``config.out`` is kept and its training metrics returned."""
    from m2m.training.loop import train

    if (minutes is None) == (steps is None):
        raise ValueError("train_for: give minutes or steps, not both")
    metrics = config.out / "train_metrics.json"
    if reuse and metrics.is_file():
        return json.loads(metrics.read_text(encoding="utf-8"))

    shutil.rmtree(config.checkpoints, ignore_errors=True)
    if steps is not None:
        return train(replace(config, steps=steps, checkpoint_every=steps))
    first = train(replace(config, steps=CALIBRATION_STEPS, checkpoint_every=CALIBRATION_STEPS))
    total = max(CALIBRATION_STEPS, round(minutes * 60 / first["s_per_step"]))
    if total == CALIBRATION_STEPS:
        return first
    return train(replace(config, steps=total, checkpoint_every=total, resume=True))


def train_command(settings: dict, data=None, out: Path | None = None) -> str:
    """The ``m2m train`` command of a run, from the settings it recorded (a checkpoint's trainer state or
    its train_metrics.json): the recipe flags it used, none it left at their defaults, and the precision
    its last steps ran in (``mixed_precision``)."""
    flags = [f"--variant {settings['variant']}", f"--data {data if data is not None else settings['data']}"]
    flags += [f"--out {out}"] if out is not None else []
    flags += [f"--init {settings['init']}"] if settings.get("init") else []
    flags += [f"--steps {settings['steps']}"] if settings.get("steps") is not None else []
    flags += [f"--batch-size {settings['batch_size']}", f"--n-images {settings['n_images']}",
              f"--lr {settings['lr']:g}"]
    if settings.get("lr_schedule", "constant") != "constant":
        flags.append(f"--lr-schedule {settings['lr_schedule']}")
    if settings.get("lr_warmup_steps"):
        flags.append(f"--lr-warmup-steps {settings['lr_warmup_steps']}")
    if settings.get("snr_gamma"):
        flags.append(f"--snr-gamma {settings['snr_gamma']:g}")
    if settings.get("timestep_sampling", "uniform") != "uniform":
        flags.append(f"--timestep-sampling {settings['timestep_sampling']}")
    flags.append(f"--ema-decay {settings['ema_decay']:g}" if settings.get("ema") else "--no-ema")
    if settings.get("mixed_precision") not in (None, "no"):
        flags.append(f"--mixed-precision {settings['mixed_precision']}")
    return " ".join(["m2m train", *flags, f"--seed {settings['seed']}"])


def precision_stretches(stretches: list | None) -> str:
    """``[[first step, precision], ...]`` (a checkpoint's ``precision``, train_metrics' ``precision_from_step``)
    in words, where a run changed its ``--mixed-precision`` on resuming or began recording it after step 0;
    "" where one precision ran throughout (the command says it) or nothing was recorded."""
    stretches = stretches or []
    if len(stretches) < 2 and (not stretches or stretches[0][0] == 0):
        return ""
    said = [f"{'fp32' if precision == 'no' else precision} from step {step:,}" for step, precision in stretches]
    if stretches[0][0] > 0:
        said.insert(0, f"precision not recorded before step {stretches[0][0]:,}")
    return "; ".join(said)


def load(folder: Path):
    """A saved pipeline on the CPU in float32 (the shipped float16 models included)."""
    from m2m.pipeline import load_on

    return load_on(folder, "cpu")


def mean_rows(rows: list[dict], keys=None) -> dict:
    """Per-key mean of per-position (or per-item) consistency rows."""
    keys = keys or [k for k in rows[0] if k != "n_images"]
    return {k: float(np.mean([row[k] for row in rows])) for k in keys}


def pair_chance(values: list) -> float:
    """Probability that two different items of ``values`` agree: ``sum_v c_v (c_v - 1) / (n (n - 1))``.

    What a model that ignores its context but draws attributes as often as the data has them would score.
    """
    _, counts = np.unique(np.asarray(values), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def export_fp16(folder: Path, out: Path, card: str) -> int:
    """Save the pipeline in ``folder`` as half-precision safetensors in ``out`` (replaced as a whole) with
    ``card`` as its README.md; returns the bytes written. On CPU, load it with ``dtype=torch.float32``
    (``m2m sample`` and ``m2m evaluate`` do)."""
    import torch

    from m2m.files import atomic_folder

    pipe = load(folder).to(torch.float16)
    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
