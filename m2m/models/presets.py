"""Model presets as plain data: ``tiny`` (CPU, pixel space, no downloads) and ``sd21`` (paper scale).

``sd21`` reads real weights from local folders (nothing is fetched at run time):
``weights/stable-diffusion-2-1-base`` (its ``unet``, ``vae`` and ``scheduler`` folders) and
``weights/dinov2-giant`` for M2M-DINO (appendix A). ``tiny`` builds its networks in code, except M2M-DINO's
``E_v``: a tiny DINOv2 pre-trained on procedural images (``m2m pretrain-encoder``), shipped in
``weights/tiny/dinov2``.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = ("tiny", "sd21")

# A small UNet2DConditionModel in pixel space: 32x32 RGB, Image-Set Attention at 16x16, 8x8 and the mid block.
TINY_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 4),
    norm_num_groups=8,
    cross_attention_dim=32,
)

# The Stable Diffusion 2.1-base UNet architecture (for random-weight benchmarks; real runs load weights).
SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)

# The tiny preset's E_v, pre-trained on procedural images and shipped in TINY_DINO_FOLDER.
TINY_DINO = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=4, patch_size=4, image_size=32
)
# DINOv2 ViT-g/14 (the paper's encoder), for random-weight benchmarks.
GIANT_DINO = dict(
    hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4, patch_size=14,
    image_size=224, use_swiglu_ffn=True,
)

# Noise schedules: SD-2.1-base's own (ε-prediction), and for 32x32 pixel space a cosine schedule with
# v-prediction: an undertrained ε-model's errors are amplified ~13x at high noise, v keeps them bounded.
SD21_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)
TINY_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=False,
    steps_offset=1, prediction_type="v_prediction",
)

PRESET_SETTINGS = {
    "tiny": dict(condition_dim=32, dino_image_size=32),
    "sd21": dict(condition_dim=256, dino_image_size=224),
}

# The default guidance scale s of eq. 6 each preset's pipelines carry (``pipe.config.guidance_scale``).
# sd21: 7.5 as in the paper. tiny: 1 (no guidance). A tiny model trained for minutes on CPU is most
# consistent with held-out procedural sets at s = 1 (palette 0.91-1.00 after 500-1500 steps) and less so as
# s grows (0.68-0.73 at s = 2, chance at 7.5): s (ε_c − ε_u) amplifies the error of two rough predictions
# and pushes the colours off the palette (benchmarks/RESULTS.md, "Proof of learning").
GUIDANCE_SCALE = {"tiny": 1.0, "sd21": 7.5}

SD21_FOLDER = Path("weights/stable-diffusion-2-1-base")
DINO_FOLDER = Path("weights/dinov2-giant")
TINY_DINO_FOLDER = Path("weights/tiny/dinov2")
# Each preset's E_v folder (M2M-DINO): what ``--dino-folder`` and ``params.yaml``'s ``weights.dino`` name.
DINO_FOLDERS = {"tiny": TINY_DINO_FOLDER, "sd21": DINO_FOLDER}


def missing_weights(folder: Path, what: str, hub_id: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{folder}: {what} not found; download {hub_id} (e.g. `huggingface-cli download {hub_id} "
        f"--local-dir {folder}`) and put it there, or pass its folder"
    )

# SD-2.1-base's AutoencoderKL architecture (for random-weight benchmarks; real runs load weights).
SD21_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    scaling_factor=0.18215,
)
