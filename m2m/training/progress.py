"""Where a training run stands (``Progress``, saved in every checkpoint) and how ``--resume`` continues it
from a checkpoint (``checkpoint.py``), so that it ends with the weights an uninterrupted run would have."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.logging import get_logger

from m2m.training import checkpoint
from m2m.training.config import TrainConfig
from m2m.weights import verify_safetensors

logger = get_logger(__name__)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time, resumed runs included
    train_s: float = 0.0  # time in training steps (no start-up, checkpoints or sampling)
    resumed_from: int | None = None
    # [first step, --mixed-precision] of each stretch of the run: a resumed run may change its precision
    # (not a resume setting), and a checkpoint says which steps ran in which; empty before it was recorded
    precision: list[list] = field(default_factory=list)

    def continue_in(self, precision: str) -> None:
        """Record that the steps from here on run in ``precision``."""
        if not self.precision or self.precision[-1][1] != precision:
            self.precision.append([self.step, precision])


def resumable(cfg: TrainConfig, settings: dict) -> Path | None:
    """The checkpoint to resume from. ``--resume``: the latest (its settings must match, else an
    error); ``--resume auto``: the newest whole checkpoint made with these settings and data, else none."""
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        return checkpoint.latest_checkpoint(cfg.checkpoints)
    for folder in reversed(checkpoint.list_checkpoints(cfg.checkpoints)):
        try:
            verify_safetensors(folder)
            saved = checkpoint.read_trainer_state(folder)["settings"]
        except ValueError as err:
            logger.warning(f"--resume auto: skipping {folder} ({err})")
            continue
        differ = checkpoint.differences(saved, settings)
        if differ:
            logger.info(f"--resume auto: {folder} was made with other settings ({differ[0]}); starting afresh")
            return None
        return folder
    return None


def resume(cfg: TrainConfig, accelerator, settings: dict, data, noise, ema, param_names) -> Progress:
    """Restore the checkpoint ``--resume`` picks; else a fresh start."""
    latest = resumable(cfg, settings)
    if latest is None:
        if cfg.resume:
            logger.info(f"--resume: no checkpoint in {cfg.checkpoints}; starting at step 0")
        stale = checkpoint.list_checkpoints(cfg.checkpoints) if cfg.checkpoint_every else []
        if stale and accelerator.is_main_process:  # they would pose as this run's history in a later --resume
            logger.warning(f"starting afresh: removing {len(stale)} earlier checkpoints in {cfg.checkpoints}")
            for folder in stale:
                shutil.rmtree(folder)
        accelerator.wait_for_everyone()
        return Progress()
    saved = checkpoint.read_trainer_state(latest)
    checkpoint.check_settings(latest, saved["settings"], settings)
    data.load_state_dict(checkpoint.load_checkpoint(accelerator, latest, noise, ema, param_names))
    logger.info(f"resumed from {latest} at step {saved['step']}")
    return Progress(
        saved["step"], saved["losses"], saved["elapsed_s"], saved["train_s"], saved["step"], saved.get("precision", [])
    )
