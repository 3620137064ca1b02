"""``m2m train``: pre-train on MIS (eq. 5) or fine-tune on a task (section 6.2), on Accelerate."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2m import speed
from m2m.cli.flags import AUTO, BooleanFlag, HelpFormatter, positive_int_or_auto
from m2m.models import presets
from m2m.models.context import context_encoder_names
from m2m.training.config import (
    LR_SCHEDULES,
    MIXED_PRECISION,
    PRESET_DEFAULTS,
    TASK_CONDITIONS,
    TASK_SAMPLES,
    TIMESTEP_SAMPLING,
    TrainConfig,
)


def _flag(name: str, value) -> str:
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value:g}"


def _preset_defaults(preset: str) -> str:
    return ", ".join(_flag(k, v) for k, v in PRESET_DEFAULTS[preset].items())


HELP = "pre-train on MIS (eq. 5) or fine-tune on a task (section 6.2)"
DESCRIPTION = f"""\
Train the UNet of an M2M model (the VAE and DINOv2 stay frozen): every image of a set is noised and
the model predicts each one's noise from the clean images before it (eq. 5); with probability
--p-uncond the whole clean context is zeroed so that guidance (eq. 6) works at sampling time.

Pre-training reads the train split of an MIS dataset (--data). Fine-tuning (--task nvs|procedure)
starts from --init, adds a camera or step-position embedding and reads --task-data.

Defaults per preset (sd21 follows the paper: AdamW, constant lr without warm-up, one epoch):
  tiny  {_preset_defaults('tiny')}
  sd21  {_preset_defaults('sd21')}
--batch-size counts sets per optimizer step over all processes; each process runs --micro-batch-size
sets per forward pass and accumulates gradients over the rest.

One process: `m2m train ...`. N GPUs: `m2m train --num-processes N ...` starts N data-parallel workers
itself (`accelerate launch --multi_gpu --num_processes N -m m2m train ...`; on a machine without a GPU
they train on the CPU over gloo). M machines: the same command on each, with --num-machines M,
--machine-rank, --main-process-ip and --main-process-port (or their M2M_* variables); --num-processes
is then the total over all machines.

Writes --out (the pipeline folder, train_metrics.json, loss.csv, samples.png) only when training is
done, replacing any earlier model there as a whole. Checkpoints go to <out>.ckpt/ (--checkpoint-dir);
--resume continues from the latest one and ends with the weights of an uninterrupted run; the
pipeline uses --resume auto, which starts afresh when the parameters or the data changed.
Unreadable sets are skipped, counted in train_metrics.json and fail the run past --max-skipped.
"""


def register(subparsers) -> argparse.ArgumentParser:
    d = TrainConfig
    p = subparsers.add_parser(
        "train", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("--preset", choices=presets.PRESETS, default=d.preset, help="model size (default tiny)")
    p.add_argument("--variant", choices=context_encoder_names(), default=d.variant, help="M2M-Self or M2M-DINO")
    p.add_argument("--data", type=Path, default=d.data, help="MIS dataset folder (default assets/mis)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. assets/models/m2m-self")
    p.add_argument("--init", type=Path, help="pipeline folder to start from (default: fresh from the preset)")
    p.add_argument("--task", choices=sorted(TASK_CONDITIONS), help="fine-tune for novel views or procedures")
    p.add_argument("--task-data", type=Path, help="task data folder (m2m make-task-data)")
    p.add_argument(
        "--task-sample", choices=TASK_SAMPLES, default=d.task_sample,
        help="a task item's N images: a random subset (default; the condition must tell which view/step "
        "comes next) or consecutive ones from a random start",
    )
    p.add_argument("--steps", type=int, help="optimizer steps (default: one epoch)")
    p.add_argument("--batch-size", type=int, help="sets per optimizer step over all processes (default: preset)")
    p.add_argument(
        "--micro-batch-size", type=positive_int_or_auto,
        help="sets per process per forward pass; auto (default): the process's whole share of --batch-size",
    )
    p.add_argument("--n-images", type=int, default=d.n_images, help="images N per set (paper: 5)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: preset)")
    p.add_argument(
        "--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
        help="constant (default, as in the paper) or cosine decay to 0 over --steps",
    )
    p.add_argument("--lr-warmup-steps", type=int, default=d.lr_warmup_steps, help="linear warm-up steps (default 0)")
    p.add_argument(
        "--snr-gamma", type=float, help="min-SNR-gamma loss weighting, e.g. 5 (default: none, eq. 5 as written)"
    )
    p.add_argument(
        "--timestep-sampling", choices=TIMESTEP_SAMPLING, default=d.timestep_sampling,
        help="how each set's t is drawn: uniform (default, eq. 5) or logit-normal (the middle of the schedule "
        "more often)",
    )
    p.add_argument("--p-uncond", type=float, default=d.p_uncond, help="probability of a zeroed context (0.1)")
    p.add_argument(
        "--mixed-precision", choices=[AUTO, *MIXED_PRECISION], default=d.mixed_precision,
        help="autocast dtype; auto (default): $ACCELERATE_MIXED_PRECISION, which the pipeline's compute dtype "
        "sets, else no",
    )
    p.add_argument(
        "--gradient-checkpointing", action=BooleanFlag, default=d.gradient_checkpointing,
        help="recompute activations in backward: less memory, ~30%% more time (default false)",
    )
    p.add_argument(
        "--adamw", choices=speed.ADAMW, default=d.adamw,
        help="AdamW implementation: auto (default: PyTorch's choice, foreach on a GPU, the for-loop on a CPU), "
        "for-loop, foreach or fused (one kernel)",
    )
    p.add_argument(
        "--channels-last", action=BooleanFlag, default=d.channels_last,
        help="the UNet's weights and activations in NHWC (default false; docs/model.md, Speed options)",
    )
    p.add_argument(
        "--sdpa-backend", choices=list(speed.SDPA_BACKENDS),
        help="attention kernel for every scaled_dot_product_attention call (default: PyTorch's choice per call)",
    )
    p.add_argument(
        "--ema", action=BooleanFlag,
        help="keep EMA weights and save them as the model (default: preset; tiny on, sd21 off as in the paper)",
    )
    p.add_argument("--ema-decay", type=float, help="EMA decay (default: preset; tiny 0.995, sd21 0.9999)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints, 0: none (default: preset)")
    p.add_argument("--checkpoint-dir", type=Path, help="checkpoint folder (default: <out>.ckpt)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest checkpoints kept (2)")
    p.add_argument(
        "--resume", nargs="?", const=True, default=False, choices=["auto"],
        help="continue from the latest checkpoint, if any (its settings and data must match); "
        "`--resume auto`: from the latest one made with these settings and data, else start afresh",
    )
    p.add_argument(
        "--max-skipped", type=float, default=d.max_skipped,
        help="fail when more than this share of the sets read are unreadable (default 0.01)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the data order, noise and new weights")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    p.add_argument(
        "--num-processes", type=int, default=1,
        help="data-parallel training processes (GPUs); > 1 starts them under accelerate launch (default 1)",
    )
    machines = p.add_argument_group(
        "several machines",
        "each defaults to its M2M_* environment variable, so every machine runs the same command "
        "(docs/training.md, \"Several machines\")",
    )
    machines.add_argument(
        "--num-machines", type=int, help="machines of the training ($M2M_NUM_MACHINES; default 1); "
        "--num-processes is the total over all of them",
    )
    machines.add_argument("--machine-rank", type=int, help="this machine, 0 the main one ($M2M_MACHINE_RANK)")
    machines.add_argument("--main-process-ip", help="address of machine 0 ($M2M_MAIN_PROCESS_IP)")
    machines.add_argument(
        "--main-process-port", type=int,
        help="port machine 0 listens on ($M2M_MAIN_PROCESS_PORT; one machine: any free one)",
    )
    machines.add_argument(
        "--save-on-each-node", action=BooleanFlag, default=d.save_on_each_node,
        help="each machine writes whole checkpoints to its own --checkpoint-dir, for machines that share no "
        "folder ($M2M_SAVE_ON_EACH_NODE; default false: one shared folder, written by the main process)",
    )
    p.add_argument("--num-workers", type=int, default=d.num_workers, help="data loading processes")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps for samples.png")
    p.add_argument("--sd-folder", type=Path, default=d.sd_folder, help="local SD-2.1-base folder (sd21)")
    p.add_argument("--dino-folder", type=Path, default=d.dino_folder,
                   help=f"local DINOv2 folder (dino; default: the preset's, {presets.TINY_DINO_FOLDER} for tiny)")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from m2m.training import launch

    machines = launch.Machines.from_flags(
        **{field: getattr(args, field) for field in launch.MACHINES_ENV}
    )
    if launch.is_launcher(args.num_processes, machines):
        precision = None if args.mixed_precision == AUTO else args.mixed_precision
        return launch.run_workers(args.argv, args.num_processes, precision, machines)
    from m2m.training.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.mixed_precision == AUTO:
        args.mixed_precision = None
    metrics = train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    if metrics is not None:
        print(
            f"trained M2M-{args.variant} for {metrics['steps']} steps: final loss {metrics['final_loss']:.4f}, "
            f"{metrics['images_per_s'] or 0:.1f} img/s; wrote {args.out}"
        )
    return 0
