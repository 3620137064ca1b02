"""``train_metrics.json``: what a training run measured (MLflow metrics) and the settings it ran with
(MLflow params)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from m2m.training import flops
from m2m.training.config import TrainConfig

if TYPE_CHECKING:
    from m2m.training.progress import Progress

# The measured keys of ``train_metrics.json`` (MLflow metrics); every other key is a setting (an MLflow param).
MEASUREMENTS = (
    "steps", "final_loss", "loss_last_10pct", "images_per_s", "s_per_step", "wall_time_s", "epochs", "params",
    "resumed_from", "skipped_samples", "skipped_shard_parts", "flops_per_image", "peak_flops", "mfu",
)


def train_metrics(
    cfg: TrainConfig, accelerator, pipe, progress: Progress, epoch_steps: int, settings: dict, data, stored=(),
    use: flops.Utilisation | None = None,
) -> dict:
    """``train_metrics.json``: loss, speed, size and the settings of the run (``stored``: the encodings read
    from the shards rather than computed; ``use``: FLOPs per image and the device's peak)."""
    losses, step, train_s = progress.losses, progress.step, progress.train_s
    position = data.state_dict()
    tail = losses[-max(1, len(losses) // 10) :]
    images = step * cfg.batch_size * cfg.n_images
    images_per_s = images / train_s if train_s else None
    counted = use is not None and use.flops_per_image is not None
    return {
        "steps": step,
        "final_loss": losses[-1] if losses else None,
        "loss_last_10pct": sum(tail) / len(tail) if tail else None,
        "images_per_s": images_per_s,
        "flops_per_image": use.flops_per_image if counted else None,
        "peak_flops": use.peak if use is not None else None,
        "mfu": use.of(images_per_s) if counted and images_per_s else None,
        "s_per_step": train_s / step if step else None,
        "wall_time_s": progress.elapsed_s,
        "epochs": step / epoch_steps,
        "params": {
            "unet": sum(p.numel() for p in pipe.unet.parameters()),
            "frozen": sum(p.numel() for m in (pipe.vae, pipe.image_encoder) if m is not None for p in m.parameters()),
        },
        "resumed_from": progress.resumed_from,
        "skipped_samples": position.get("corrupt", 0),
        "skipped_shard_parts": position.get("read_errors", 0),
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "gradient_accumulation": accelerator.gradient_accumulation_steps,
        "mixed_precision": cfg.mixed_precision,
        "precision_from_step": progress.precision,  # [first step, precision] of each stretch of a resumed run
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "stored_encodings": list(stored),
        **settings,
    }
