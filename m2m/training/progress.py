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


def resumable(cfg: TrainConfig, accelerator, settings: dict) -> Path | None:
    """The checkpoint to resume from, among those whole for every process (each machine's copy with
    ``--save-on-each-node``). ``--resume``: the latest (its settings must match, else an error);
    ``--resume auto``: the newest whole checkpoint made with these settings and data, else none."""
    if not cfg.resume:
        return None
    seen = checkpoint.steps_seen(accelerator, cfg.checkpoints)
    common = sorted(set(seen[0]).intersection(*seen[1:]))
    if not common and any(seen):
        newest = max(step for steps in seen for step in steps)
        has = next(rank for rank, steps in enumerate(seen) if newest in steps)
        lacks = next(rank for rank, steps in enumerate(seen) if newest not in steps)
        raise ValueError(
            f"--resume: process {has} sees {checkpoint.checkpoint_name(newest)} in {cfg.checkpoints} and process "
            f"{lacks} does not, and no checkpoint is whole for all; give the machines one shared folder, or "
            "with --save-on-each-node each machine its own copy"
        )
    folders = [cfg.checkpoints / checkpoint.checkpoint_name(step) for step in common]
    if cfg.resume != "auto":
        return folders[-1] if folders else None
    for folder in reversed(folders):
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


def resume(cfg: TrainConfig, accelerator, settings: dict, data, lr_scheduler, ema, param_names) -> Progress:
    """Restore the checkpoint ``--resume`` picks; else a fresh start. A checkpoint of another number of
    processes continues at its step: the same model, optimizer, lr schedule and EMA, and the data stream
    at the position after that step (``step x --batch-size`` sets into the run)."""
    latest = resumable(cfg, accelerator, settings)
    if latest is None:
        if cfg.resume:
            logger.info(f"--resume: no checkpoint in {cfg.checkpoints}; starting at step 0")
        stale = checkpoint.list_checkpoints(cfg.checkpoints) if cfg.checkpoint_every else []
        if stale and checkpoint.writes(accelerator):  # they would pose as this run's history in a later --resume
            logger.warning(f"starting afresh: removing {len(stale)} earlier checkpoints in {cfg.checkpoints}")
            for folder in stale:
                shutil.rmtree(folder)
        accelerator.wait_for_everyone()
        return Progress()
    saved = checkpoint.read_trainer_state(latest)
    checkpoint.check_settings(latest, saved["settings"], settings)
    made_by = saved["settings"].get("num_processes", 1)
    data.load_state_dict(checkpoint.load_checkpoint(accelerator, latest, made_by, ema, param_names))
    # Accelerate counts micro-batches to know when an accumulation is complete, and load_state restores the
    # count of the run that saved; this run's count at that step is its own accumulation times the step
    accelerator.step = saved["step"] * accelerator.gradient_accumulation_steps
    if made_by != accelerator.num_processes:
        checkpoint.rescale_schedule(lr_scheduler, saved["step"], accelerator.num_processes)
        logger.info(f"{latest} was made by {made_by} processes; continuing on {accelerator.num_processes}")
    logger.info(f"resumed from {latest} at step {saved['step']}")
    return Progress(
        saved["step"], saved["losses"], saved["elapsed_s"], saved["train_s"], saved["step"], saved.get("precision", [])
    )
