"""Training settings in one place: the paper's (``sd21``, appendix A) and the CPU preset's (``tiny``).

Every field has one default here; ``None`` means "the preset's value" (``PRESET_DEFAULTS``) or, for
``steps``, one epoch over the training sets as in the paper. ``resolved()`` fills them in and checks
every field, naming the offending option in a one-line ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from m2m import speed
from m2m.cli.flags import FALSE, TRUE
from m2m.models import presets
from m2m.models.context import context_encoder_names

# Task of section 6.2 -> the task condition it adds to the model.
TASK_CONDITIONS = {"nvs": "camera", "procedure": "procedure"}
MIXED_PRECISION = ("no", "fp16", "bf16")
# How a fine-tuning item's N images are drawn (m2m.data.tasks.TaskDataset's samples used in training).
TASK_SAMPLES = ("subset", "window")
# Learning-rate schedules (diffusers.optimization.get_scheduler names): constant after the warm-up, as in
# appendix A, or a cosine decay to zero over --steps (a fixed-length run; --steps is then part of the
# schedule and may not change on --resume).
LR_SCHEDULES = ("constant", "cosine")
# How eq. 5's timestep t is drawn per set (m2m.training.objective.sample_timesteps): uniform over the
# scheduler's steps, as written, or logit-normal (t / T = sigmoid(u), u ~ N(0, 1); Esser et al. 2024), which
# draws the middle of the schedule more often, where an image's layout is decided.
TIMESTEP_SAMPLING = ("uniform", "logit-normal")

# Appendix A: lr 1e-5, no warm-up, batch 256 across GPUs. The tiny preset is a random network at 32x32
# trained from scratch; in a 200-step check (batch 8, N = 5) 1e-4 lagged (last-20-step loss 0.28),
# 3e-4 reached 0.21, 1e-3 0.18 and 3e-3 0.17 after a rougher start: 1e-3 is fast and safe. At that constant
# lr the weights keep jumping: an EMA over the last ~200 steps (decay 0.995) gave M2M-DINO 0.45 held-out
# consistency after 1,000 steps against 0.41 without (benchmarks/RESULTS.md). The paper reports no EMA.
SAVE_ON_EACH_NODE_ENV = "M2M_SAVE_ON_EACH_NODE"


def _env_bool(name: str) -> bool:
    """A boolean environment variable in the forms the command line takes (unset: False)."""
    value = os.environ.get(name, "false").strip().lower()
    if value not in TRUE + FALSE:
        raise ValueError(f"${name}: expected true or false, got {os.environ[name]!r}")
    return value in TRUE


PRESET_DEFAULTS = {
    "tiny": dict(lr=1e-3, batch_size=8, checkpoint_every=100, ema=True, ema_decay=0.995),
    "sd21": dict(lr=1e-5, batch_size=256, checkpoint_every=500, ema=False, ema_decay=0.9999),
}


@dataclass
class TrainConfig:
    """What ``m2m train`` does; CLI flags are the field names with dashes."""

    out: Path = Path("assets/models/m2m-self")
    preset: str = "tiny"
    variant: str = "self"
    data: Path | None = Path("assets/mis")  # MIS dataset folder (pre-training)
    init: Path | None = None  # a pipeline folder to start from; None: fresh from the preset
    task: str | None = None  # "nvs" | "procedure": fine-tune with a task condition (section 6.2)
    task_data: Path | None = None
    task_sample: str = "subset"  # one of TASK_SAMPLES
    steps: int | None = None  # optimizer steps; None: one epoch
    batch_size: int | None = None  # sets per optimizer step over all processes
    micro_batch_size: int | None = None  # sets per process per forward; None: batch_size / processes
    n_images: int = 5  # N images per set (paper: 5)
    lr: float | None = None
    lr_schedule: str = "constant"  # one of LR_SCHEDULES
    lr_warmup_steps: int = 0  # linear warm-up from 0 (appendix A: none)
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting; None: plain eq. 5
    timestep_sampling: str = "uniform"  # one of TIMESTEP_SAMPLING
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    p_uncond: float = 0.1  # eq. 5: whole clean condition zeroed (section 6.1)
    p_drop_condition: float = 0.1  # task condition alone zeroed, for eq. 7
    mixed_precision: str | None = None  # None: $ACCELERATE_MIXED_PRECISION (the pipeline's compute dtype), else "no"
    gradient_checkpointing: bool = False
    adamw: str = "auto"  # AdamW implementation, one of m2m.speed.ADAMW; auto: PyTorch's choice
    channels_last: bool = False  # the UNet in NHWC (m2m.speed)
    sdpa_backend: str | None = None  # attention kernel, one of m2m.speed.SDPA_BACKENDS; None: PyTorch's choice
    ema: bool | None = None  # keep EMA weights and save them as the model
    ema_decay: float | None = None
    checkpoint_every: int | None = None  # 0: no checkpoints
    checkpoint_dir: Path | None = None  # None: "<out>.ckpt"
    # True: every machine writes whole checkpoints to its own --checkpoint-dir (machines that share no folder);
    # False: one folder all machines share, written by the main process; None: $M2M_SAVE_ON_EACH_NODE, else False
    save_on_each_node: bool | None = None
    keep_checkpoints: int = 2
    resume: bool | str = False  # True: the latest checkpoint; "auto": the latest made with these settings
    max_skipped: float = 0.01  # share of unreadable sets read before training fails
    seed: int = 0
    log_every: int = 10
    num_workers: int = 0
    sample_steps: int = 20  # DDIM steps for samples.png
    sample_sets: int = 4
    sample_context: int = 2  # K preceding images per row of samples.png
    sample_generate: int = 3  # M generated images per row of samples.png
    sample_guidance_scale: float | None = None  # None: the model's own (pipe.config.guidance_scale)
    sd_folder: Path = presets.SD21_FOLDER
    dino_folder: Path | None = None  # None: the preset's E_v folder (presets.DINO_FOLDERS)

    @property
    def condition(self) -> str | None:
        return TASK_CONDITIONS.get(self.task) if self.task else None

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.out.with_name(self.out.name + ".ckpt")

    def resolved(self, num_processes: int = 1) -> "TrainConfig":
        """A copy with the preset's defaults filled in and every field checked."""
        if self.preset not in presets.PRESETS:
            raise ValueError(f"--preset: unknown {self.preset!r}; expected one of {', '.join(presets.PRESETS)}")
        filled = {k: v for k, v in PRESET_DEFAULTS[self.preset].items() if getattr(self, k) is None}
        config = dataclasses.replace(self, **filled)
        if config.mixed_precision is None:
            config.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if config.save_on_each_node is None:
            config.save_on_each_node = _env_bool(SAVE_ON_EACH_NODE_ENV)
        if config.micro_batch_size is None:
            config.micro_batch_size = max(1, config.batch_size // num_processes)
        config._check(num_processes)
        return config

    def accumulation_steps(self, num_processes: int) -> int:
        """Micro-batches each process accumulates per optimizer step."""
        return self.batch_size // (self.micro_batch_size * num_processes)

    def _check(self, num_processes: int) -> None:
        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ValueError(f"--{field.replace('_', '-')}: {message}, got {getattr(self, field)!r}")

        variants = context_encoder_names()
        need(self.variant in variants, "variant", f"must be one of {', '.join(variants)}")
        need(self.task is None or self.task in TASK_CONDITIONS, "task", f"must be one of {', '.join(TASK_CONDITIONS)}")
        need(self.task is None or self.task_data is not None, "task_data", f"is required with --task {self.task}")
        need(self.task_sample in TASK_SAMPLES, "task_sample", f"must be one of {', '.join(TASK_SAMPLES)}")
        need(self.task is not None or self.data is not None, "data", "an MIS dataset folder is required")
        need(self.steps is None or self.steps >= 1, "steps", "must be at least 1")
        need(self.n_images >= 2, "n_images", "must be at least 2 (image 1 has no preceding image to attend to)")
        need(0 < self.lr <= 1, "lr", "must be in (0, 1]")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        need(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be non-negative")
        need(self.lr_schedule != "cosine" or self.steps is not None, "lr_schedule",
             "cosine decays over --steps, which must be given")
        need(self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", "must be positive")
        need(self.timestep_sampling in TIMESTEP_SAMPLING, "timestep_sampling",
             f"must be one of {', '.join(TIMESTEP_SAMPLING)}")
        need(self.resume in (False, True, "auto"), "resume", "must be off, on or auto")
        need(0 <= self.max_skipped < 1, "max_skipped", "must be a fraction in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be non-negative")
        need(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        for field in ("p_uncond", "p_drop_condition"):
            need(0 <= getattr(self, field) <= 1, field, "must be a probability in [0, 1]")
        need(0 < self.ema_decay < 1, "ema_decay", "must be in (0, 1)")
        need(self.adamw in speed.ADAMW, "adamw", f"must be one of {', '.join(speed.ADAMW)}")
        need(self.sdpa_backend is None or self.sdpa_backend in speed.SDPA_BACKENDS, "sdpa_backend",
             f"must be one of {', '.join(speed.SDPA_BACKENDS)}")
        need(self.mixed_precision in MIXED_PRECISION, "mixed_precision", f"must be one of {', '.join(MIXED_PRECISION)}")
        need(self.micro_batch_size >= 1, "micro_batch_size", "must be at least 1")
        need(
            self.batch_size >= 1 and self.batch_size % (self.micro_batch_size * num_processes) == 0,
            "batch_size",
            f"must be a positive multiple of --micro-batch-size {self.micro_batch_size} x {num_processes} processes",
        )
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be 0 (off) or positive")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        need(self.log_every >= 1, "log_every", "must be at least 1")
        need(self.num_workers >= 0, "num_workers", "must be non-negative")
        need(self.sample_steps >= 1, "sample_steps", "must be at least 1")
        need(self.sample_sets >= 1, "sample_sets", "must be at least 1")
        need(self.sample_context >= 1, "sample_context", "must be at least 1")
        need(self.sample_generate >= 1, "sample_generate", "must be at least 1")


@dataclass(frozen=True)
class EncoderPretraining:
    """The settings of the tiny preset's ``E_v`` pre-training (``m2m.training.encoder``), all written beside
    its weights (``pretrain.json``)."""

    out: Path
    sets: int = 40000  # distinct (caption) sets drawn
    images_per_set: int = 4
    steps: int = 10000
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.05
    validation_sets: int = 200  # more sets, drawn after the training sets: accuracy on images never trained on
    image_size: int = presets.PRESET_SETTINGS["tiny"]["dino_image_size"]
    checkpoint_every: int = 500  # steps; 0: none. A rerun of the same command resumes from the last one
    seed: int = 0

    def __post_init__(self):
        for name in ("sets", "images_per_set", "steps", "batch_size", "warmup", "validation_sets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be non-negative, got {self.checkpoint_every}")
