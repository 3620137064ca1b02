"""The training loop (paper section 6, appendix A) on Accelerate: one CPU process or N GPUs alike.

Pre-training reads MIS image sets and minimises eq. 5; fine-tuning (section 6.2) adds a task condition
to a pre-trained model and reads a task dataset. Only the UNet trains; the VAE and DINOv2 stay frozen.
Progress shows loss and images/s; checkpoints (``checkpoint.py``) let ``progress.resume`` continue a
run so that it ends with the weights an uninterrupted run would have. The model folder (pipeline,
``train_metrics.json``, ``loss.csv``, ``samples.png``) is written to a temporary folder and moved into
place only when complete.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.logging import get_logger

from m2m.files import atomic_folder
from m2m.speed import Speed, adamw, sdpa_backend, speed_up
from m2m.training import checkpoint, flops, noise
from m2m.training.config import TrainConfig
from m2m.training.data import check_mis, data_digest, heldout_sets, stored_encodings, training_data
from m2m.training.metrics import train_metrics
from m2m.training.objective import clean_context, m2m_loss
from m2m.training.progress import Progress, resume
from m2m.weights import verify_safetensors

logger = get_logger(__name__)

# Settings a resumed run must share with its checkpoint (others, such as --steps, may change; so may the
# batch's split over processes and micro-batches, checkpoint.SPLIT_SETTINGS).
RESUME_SETTINGS = (
    "preset", "variant", "init", "task", "data", "task_data", "task_sample", "n_images", "batch_size",
    "micro_batch_size", "lr", "lr_schedule", "lr_warmup_steps", "snr_gamma", "timestep_sampling", "weight_decay",
    "p_uncond", "p_drop_condition", "ema", "ema_decay", "seed",
)


def live_tracker() -> str | None:
    """``"mlflow"`` when the environment names an MLflow run or experiment to log to (the pipeline sets
    ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID``), else None: training logs only to its files."""
    return "mlflow" if os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME") else None


# -- model ---------------------------------------------------------------------------------------


def load_pipeline(cfg: TrainConfig):
    """The pipeline to train: ``--init`` or fresh from the preset, with the task condition added."""
    from m2m.build import add_condition, build_pipeline
    from m2m.models.context import context_encoder
    from m2m.pipeline import M2MPipeline

    if cfg.init is not None:
        if not (Path(cfg.init) / "model_index.json").is_file():
            raise FileNotFoundError(f"{cfg.init}: not an M2M pipeline folder (model_index.json missing)")
        verify_safetensors(cfg.init)
        pipe = M2MPipeline.from_pretrained(cfg.init, dtype=torch.float32)  # fp32 master weights
        if pipe.context_encoder is not context_encoder(cfg.variant):
            raise ValueError(f"--init {cfg.init}: an M2M-{pipe.variant} model, but --variant is {cfg.variant}")
    else:
        pipe = build_pipeline(
            cfg.preset, cfg.variant, seed=cfg.seed, sd_folder=cfg.sd_folder, dino_folder=cfg.dino_folder
        )
    if cfg.condition is not None:
        pipe = add_condition(pipe, cfg.condition)
    for frozen in (pipe.vae, pipe.image_encoder):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
    return pipe


# -- outputs -------------------------------------------------------------------------------------


@torch.no_grad()
def sample_grid(pipe, cfg: TrainConfig, context: torch.Tensor, conditions: torch.Tensor | None):
    """``samples.png``: each row K preceding images | the M images the model generates after them."""
    from m2m.grid import image_grid
    from m2m.pipeline import to_pil

    device = pipe.unet.device
    generated = pipe(
        context.to(device), num_images=cfg.sample_generate, window=cfg.sample_context,
        num_inference_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance_scale,
        conditions=None if conditions is None else conditions.to(device),
        generator=torch.Generator(device).manual_seed(cfg.seed), output_type="pil", progress=False,
    ).images
    rows = [ctx + gen for ctx, gen in zip(to_pil((context + 1) / 2), generated)]
    return image_grid(rows, split=cfg.sample_context, scale=max(1, 64 // pipe.image_size))


def check_model_folder(out: str | Path) -> None:
    """``out`` may be replaced by a model folder: it is absent, empty, or a model folder already."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "model_index.json").is_file())):
        raise ValueError(f"--out {out}: exists and is not an M2M model folder; refusing to replace it")


def write_model_folder(
    out: str | Path, pipe, metrics: dict | None = None, losses: list[float] | None = None, grid=None
) -> None:
    """The pipeline folder (+ ``train_metrics.json``, ``loss.csv``, ``samples.png``), moved into place whole."""
    from m2m.data import write_json

    with atomic_folder(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if metrics is not None:
            write_json(tmp / "train_metrics.json", metrics)
        if losses is not None:
            rows = "".join(f"{i},{loss:.6g}\n" for i, loss in enumerate(losses, start=1))
            (tmp / "loss.csv").write_text("step,loss\n" + rows, encoding="utf-8")
        if grid is not None:
            grid.save(tmp / "samples.png")


# -- the loop ------------------------------------------------------------------------------------


def check_skipped(cfg: TrainConfig, data, sets_used: int) -> None:
    """Fail when more than ``--max-skipped`` of the sets read were skipped as unreadable (MIS only)."""
    position = data.state_dict()
    skipped = position.get("corrupt", 0) + position.get("read_errors", 0)
    if skipped and skipped > cfg.max_skipped * (sets_used + skipped):
        raise ValueError(
            f"--data {cfg.data}: {skipped} of {sets_used + skipped} sets read were skipped as unreadable "
            f"(more than --max-skipped {cfg.max_skipped:g}); the warnings above name the shards: rebuild them"
        )


@dataclass
class Run:
    """Everything one training run holds between its steps."""

    cfg: TrainConfig
    accelerator: object
    pipe: object
    prepared: object  # the UNet as Accelerate wraps it (DDP on several GPUs)
    optimizer: object
    lr_scheduler: object
    noise_scheduler: object
    ema: object | None
    param_names: list[str]
    data: object
    epoch_steps: int
    heldout: tuple | None
    stored: tuple[str, ...]
    total: int
    settings: dict
    progress: Progress
    use: flops.Utilisation

    @property
    def images_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.n_images


def start_run(config: TrainConfig) -> Run:
    """Check the settings and data, build the model, optimizer and data stream, resume if asked."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    checked = config.resolved()  # bad settings fail before anything starts
    precision = checked.mixed_precision
    check_model_folder(config.out)
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16: needs a GPU; use bf16 on a CPU")
    accelerator = Accelerator(
        mixed_precision=precision, log_with=live_tracker(),
        project_config=ProjectConfiguration(save_on_each_node=checked.save_on_each_node),
    )
    cfg = config.resolved(accelerator.num_processes)
    accelerator.gradient_accumulation_steps = cfg.accumulation_steps(accelerator.num_processes)
    device, rank = accelerator.device, accelerator.process_index
    if cfg.checkpoint_every or cfg.resume:
        checkpoint.check_layout(accelerator, cfg.checkpoints)  # a wrong layout fails here, not mid-checkpoint

    if cfg.task is None and accelerator.is_main_process:
        check_mis(cfg)  # every shard as the manifest recorded it, sets of at least N images
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)  # fixes the weights a task condition adds to a pre-trained model
    pipe = load_pipeline(cfg).to(device)
    unet = speed_up(pipe.unet.train(), Speed(channels_last=cfg.channels_last))
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    stored = stored_encodings(cfg, pipe) if cfg.task is None else ()
    data, epoch_steps = training_data(cfg, pipe.image_size, rank, accelerator.num_processes, precomputed=bool(stored))
    heldout = heldout_sets(cfg, pipe.image_size) if accelerator.is_main_process else None
    total = cfg.steps or epoch_steps

    optimizer = adamw(
        unet.parameters(), cfg.adamw, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon
    )
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay) if cfg.ema else None
    param_names = [name for name, _ in unet.named_parameters()]
    # Accelerate steps a prepared schedule once per process at every optimizer step.
    schedule = get_scheduler(
        f"{cfg.lr_schedule}_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule, optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=total * accelerator.num_processes,
    )
    prepared, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, schedule)

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items() if k in RESUME_SETTINGS}
    settings["num_processes"] = accelerator.num_processes
    settings["data_digest"] = data_digest(cfg)
    if cfg.lr_schedule == "cosine":  # the decay is laid over --steps
        settings["steps"] = total
    progress = resume(cfg, accelerator, settings, data, lr_scheduler, ema, param_names)
    progress.continue_in(precision)
    if progress.step > total:
        logger.info(f"the checkpoint is at step {progress.step}, past --steps {total}: nothing to train")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    use = flops.Utilisation(flops.matmul_peak(device, dtype), accelerator.num_processes)
    run = Run(
        cfg, accelerator, pipe, prepared, optimizer, lr_scheduler, DDPMScheduler.from_config(pipe.scheduler.config),
        ema, param_names, data, epoch_steps, heldout, stored, total, settings, progress, use,
    )
    if accelerator.log_with:  # settings as params; the loss, lr and speed below as they happen
        if os.environ.get("MLFLOW_TRACKING_URI"):  # the store named here, also where mlflow was set up before
            import mlflow

            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        accelerator.init_trackers("m2m", config={
            **settings, "steps": total, "images_per_step": run.images_per_step, "mixed_precision": precision,
        })
        # a resumed training's run shows the whole curve: the steps before the checkpoint, from the checkpoint
        for step, loss in enumerate(progress.losses[: progress.step], start=1):
            accelerator.log({"loss": loss}, step=step)
    logger.info(
        f"training M2M-{cfg.variant} ({cfg.preset}{', task ' + cfg.task if cfg.task else ''}): {total} steps of "
        f"{cfg.batch_size} sets x {cfg.n_images} images ({accelerator.num_processes} processes x "
        f"{cfg.micro_batch_size} x {accelerator.gradient_accumulation_steps} accumulation), lr {cfg.lr:g}"
    )
    return run


def inputs(run: Run, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A micro-batch's images and (fine-tuning) task conditions on the run's device."""
    device = run.accelerator.device
    images = batch["images"].to(device, non_blocking=True)
    return images, batch["cond"].to(device) if run.cfg.task is not None else None


def encode(run: Run, batch: dict, images: torch.Tensor) -> tuple:
    """The micro-batch's clean context (stored encodings where the shards have them), as eq. 5 reads it."""
    with torch.no_grad(), run.accelerator.autocast():
        return clean_context(run.pipe, images, *(batch.get(name) for name in run.stored))


def eq5(run: Run, images, conditions, context, generator: torch.Generator, unet=None) -> torch.Tensor:
    """Eq. 5 with the run's condition dropout and loss weighting."""
    cfg = run.cfg
    return m2m_loss(
        run.pipe, run.noise_scheduler, images, conditions, p_uncond=cfg.p_uncond,
        p_drop_condition=cfg.p_drop_condition, generator=generator, precomputed=context, unet=unet,
        snr_gamma=cfg.snr_gamma, timestep_sampling=cfg.timestep_sampling,
    )


def micro_step(
    run: Run, batch: dict, generator: torch.Generator, context: tuple | None = None
) -> tuple[torch.Tensor, float]:
    """Eq. 5 on one micro-batch with its draws from ``generator`` (``m2m.training.noise``), backward, and
    (when the accumulation is complete) the optimizer step; returns the loss and the learning rate the step
    used. ``context``: the batch's clean context when it was already encoded (``flops_per_image``)."""
    cfg, accelerator = run.cfg, run.accelerator
    images, conditions = inputs(run, batch)
    with accelerator.accumulate(run.prepared), sdpa_backend(cfg.sdpa_backend):
        if context is None:
            context = encode(run, batch, images)
        loss = eq5(run, images, conditions, context, generator, unet=run.prepared)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.prepared.parameters(), cfg.max_grad_norm)
        step_lr = run.lr_scheduler.get_last_lr()[0]  # the rate this step uses
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach(), step_lr


def flops_per_image(run: Run, batch: dict, generator: torch.Generator) -> tuple[float, tuple]:
    """The model FLOPs of eq. 5 per trained image, counted on ``batch`` by a forward pass (the frozen encoders
    once, the UNet three times: its backward costs about twice its forward), and the batch's clean context,
    which the step then uses rather than encoding the batch again. The step's ``generator`` and the run's random
    streams and weights are left as they were (the encoders draw nothing), so the counted run trains exactly
    as an uncounted one."""
    device = run.accelerator.device
    images, conditions = inputs(run, batch)
    draws = torch.Generator(device).set_state(generator.get_state())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with flops.counting() as counter:
            context = encode(run, batch, images)
        encoders = counter.get_total_flops()
        # in the weights' own precision, without autocast: the count does not depend on it, and a bf16
        # forward on a CPU without bf16 units costs seconds
        with flops.counting() as counter, torch.no_grad():
            eq5(run, images, conditions, context, draws)
    z0 = context[0]  # (B, N, C, h, w): the images of the micro-batch
    return (encoders + 3 * counter.get_total_flops()) / (z0.shape[0] * z0.shape[1]), context


def end_step(run: Run, micro_losses: list[torch.Tensor]) -> float:
    """After an optimizer step: the EMA, the step's loss over all processes, the step count."""
    if run.ema is not None:
        run.ema.step(run.pipe.unet.parameters())
    step_loss = run.accelerator.gather(torch.stack(micro_losses).mean().reshape(1)).mean().item()
    run.progress.step += 1
    if not math.isfinite(step_loss):
        raise FloatingPointError(f"loss is {step_loss} at step {run.progress.step}; lower --lr (checkpoints are kept)")
    run.progress.losses.append(step_loss)
    return step_loss


def logs_images(run: Run) -> bool:
    """Whether this process logs the run's sample grids: the main one, when the run logs to MLflow."""
    return run.accelerator.is_main_process and bool(run.accelerator.log_with)


def sample_grid_now(run: Run):
    """``sample_grid`` of the weights at this step (the EMA weights when the run keeps them, as the model
    folder will have), with the training weights, mode and random streams left as they were."""
    unet, params = run.pipe.unet, list(run.pipe.unet.parameters())
    devices = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if run.ema is not None:
            run.ema.store(params)
            run.ema.copy_to(params)
        unet.eval()
        try:
            return sample_grid(run.pipe, run.cfg, *run.heldout)
        finally:
            unet.train()
            if run.ema is not None:
                run.ema.restore(params)


def log_samples(run: Run, grid) -> None:
    """The sample grid at this step as the MLflow image ``samples`` (the run page shows it per step)."""
    import mlflow

    mlflow.log_image(grid, key="samples", step=run.progress.step)


def save(run: Run, run_s: float) -> None:
    """A checkpoint of everything the run needs to continue from this step."""
    cfg, progress = run.cfg, run.progress
    check_skipped(cfg, run.data, progress.step * cfg.batch_size // run.accelerator.num_processes)
    state = {
        "losses": progress.losses, "elapsed_s": progress.elapsed_s + run_s, "train_s": progress.train_s,
        "settings": run.settings, "precision": progress.precision,
    }
    saved = checkpoint.save_checkpoint(
        run.accelerator, cfg.checkpoints, progress.step, state, run.data.state_dict(), run.ema,
        run.param_names, cfg.keep_checkpoints,
    )
    logger.info(f"checkpoint: {saved}")


def steps(run: Run) -> None:
    """Optimizer steps up to ``total``, with progress, log lines (and MLflow metrics) and checkpoints."""
    from tqdm.auto import tqdm

    cfg, accelerator, progress, total = run.cfg, run.accelerator, run.progress, run.total
    bar = tqdm(
        total=total, initial=min(progress.step, total), unit="step", desc="train",
        disable=not accelerator.is_local_main_process,
    )
    try:
        if progress.step == 0 and cfg.checkpoint_every and logs_images(run):
            # the grid before the first step: MLflow's image chart opens on step 0, so it is never empty, and a
            # fine-tuning's slider starts from what the pre-trained model drew
            log_samples(run, sample_grid_now(run))
        t_run = t_step = t_log = time.perf_counter()
        micro_losses, log_from, batches = [], progress.step, iter(run.data)
        while progress.step < total:
            batch, context = next(batches), None
            slot = noise.slot(len(micro_losses), accelerator.process_index, accelerator.num_processes)
            generator = noise.noise_generator(cfg.seed, progress.step, slot, accelerator.device)
            if run.use.flops_per_image is None:
                run.use.flops_per_image, context = flops_per_image(run, batch, generator)
            loss, step_lr = micro_step(run, batch, generator, context)
            micro_losses.append(loss)
            if not accelerator.sync_gradients:  # accumulating: the optimizer step comes later
                continue
            step_loss = end_step(run, micro_losses)
            micro_losses = []
            now = time.perf_counter()
            progress.train_s += now - t_step
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", img_s=f"{run.images_per_step / (now - t_step):.1f}")
            # every step's loss, so the curve has a point per step and its last point is ``final_loss``
            accelerator.log({"loss": step_loss}, step=progress.step)
            if progress.step % cfg.log_every == 0 or progress.step == total:
                window = progress.losses[log_from:]
                mean, speed = sum(window) / len(window), run.images_per_step * len(window) / (now - t_log)
                use = run.use.of(speed)
                logger.info(f"step {progress.step}/{total} loss {mean:.4f} img/s {speed:.1f} MFU {use:.1%} "
                            f"of {run.use.peak / 1e9:.0f} GFLOP/s lr {step_lr:.2e}")
                accelerator.log({"lr": step_lr, "images_per_s": speed, "mfu": use}, step=progress.step)
                t_log, log_from = now, progress.step
            if cfg.checkpoint_every and (progress.step % cfg.checkpoint_every == 0 or progress.step == total):
                save(run, time.perf_counter() - t_run)
                if progress.step < total and logs_images(run):  # the last grid is samples.png (finish)
                    log_samples(run, sample_grid_now(run))
            t_step = time.perf_counter()
    finally:
        bar.close()  # an error is printed on a line of its own, after the bar
    progress.elapsed_s += time.perf_counter() - t_run


def finish(run: Run) -> dict | None:
    """The model folder with the EMA (or final) weights, its metrics, loss curve and samples."""
    cfg, accelerator = run.cfg, run.accelerator
    check_skipped(cfg, run.data, run.progress.step * cfg.batch_size // accelerator.num_processes)
    accelerator.wait_for_everyone()
    metrics = None
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(run.prepared)
        if run.ema is not None:
            run.ema.copy_to(unet.parameters())
        unet.eval()
        grid = sample_grid(run.pipe, cfg, *run.heldout)
        if logs_images(run):
            log_samples(run, grid)
        metrics = train_metrics(
            cfg, accelerator, run.pipe, run.progress, run.epoch_steps, run.settings, run.data, run.stored, run.use
        )
        write_model_folder(cfg.out, run.pipe, metrics, run.progress.losses, grid)
        logger.info(f"wrote {cfg.out}: final loss {metrics['final_loss']}, {metrics['images_per_s'] or 0:.1f} img/s")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def train(config: TrainConfig) -> dict | None:
    """Train as ``config`` says; write the model folder; return its ``train_metrics`` (main process)."""
    run = start_run(config)
    steps(run)
    return finish(run)
