"""Feature networks behind the Table 1 metrics (paper section 7.2): Inception-v3 and CLIP.

Two backends, one interface (:class:`FeatureNetworks`):

- ``standard``: torchmetrics' Inception-v3 (torch-fidelity weights) from a local file and a CLIP model
  from a local folder, so the numbers are comparable with the paper's Table 1.
- ``tiny``: a fixed, seeded random conv net and a seeded random tiny CLIP that need no download. They
  measure the same quantities on the same scale (FID, IS, CLIPScore's 0-100) but against a different
  feature space, so every number they produce carries :data:`TINY_LABEL`.

Every image network takes ``uint8`` tensors ``(N, 3, H, W)`` of any size, like torchmetrics' Inception.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TINY_LABEL = "tiny feature net (not comparable to the paper)"
STANDARD_LABEL = "Inception-v3 (torch-fidelity weights) and CLIP from local files"

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
DEFAULT_INCEPTION_WEIGHTS = Path("weights/inception") / INCEPTION_FILE
CLIP_REPO = "openai/clip-vit-large-patch14"
DEFAULT_CLIP_FOLDER = Path("weights/clip-vit-large-patch14")
# Fixed seeds, so that tiny-backend numbers are comparable across runs and models. The tiny CLIP's seed is
# one whose random text and image towers are not anti-aligned: CLIPScore floors its mean at 0, which would
# flatten every text-image score of an anti-aligned pair to 0.
TINY_FEATURE_SEED = 0
TINY_CLIP_SEED = 4


@dataclass
class FeatureNetworks:
    """What the metrics run on: FID features, IS logits, and a CLIP ``(model, processor)`` pair."""

    backend: str
    label: str
    fid: nn.Module
    inception: nn.Module
    clip: tuple

    def to(self, device: str | torch.device) -> FeatureNetworks:
        """Move every network to ``device``."""
        self.fid.to(device)
        self.inception.to(device)
        self.clip[0].to(device)
        return self


class TinyFeatureNet(nn.Module):
    """A fixed random conv net standing in for Inception-v3 on the CPU preset.

    Random convolutional features still separate colour, texture and layout statistics, which is what
    FID and IS compare. Weights come from ``seed`` alone, so every machine gets the same network.
    With ``num_classes=None`` it returns pooled features (for FID). With an integer it returns class
    logits (for IS): ``logit_scale * W f``, where ``f`` is the unit-length offset of the image's features
    from those of a mid-grey image (removing what all images share) and ``W`` is a fixed ``N(0, 1)``
    matrix, so that distinct images get confident, distinct classes and identical images give IS = 1.
    """

    def __init__(
        self,
        seed: int = 0,
        input_size: int = 32,
        num_features: int = 64,
        num_classes: int | None = None,
        logit_scale: float = 10.0,
    ):
        super().__init__()
        self.input_size = input_size
        self.logit_scale = logit_scale
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, num_features, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.trunk:
                if isinstance(layer, nn.Conv2d):
                    fan_in = layer.weight[0].numel()
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                    layer.bias.zero_()
            grey = self.trunk(torch.zeros(1, 3, input_size, input_size))
        self.register_buffer("grey_features", grey)
        head = torch.randn(num_classes, num_features, generator=generator) if num_classes else None
        self.register_buffer("head", head)
        self.num_features = num_classes or num_features
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"feature net expects uint8 images, got {images.dtype}")
        x = images.float() / 127.5 - 1.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        features = self.trunk(x)
        if self.head is None:
            return features
        offset = F.normalize(features - self.grey_features, dim=1)
        return self.logit_scale * offset @ self.head.T


def pooled_clip_class():
    """``CLIPModel`` whose ``get_*_features`` return pooled tensors, as torchmetrics' CLIPScore expects.

    transformers 5 returns a ``BaseModelOutputWithPooling`` there, which torchmetrics 1.9 cannot use.
    """
    from transformers import CLIPModel

    class PooledCLIPModel(CLIPModel):
        def get_image_features(self, pixel_values, **kwargs):
            return super().get_image_features(pixel_values=pixel_values, **kwargs).pooler_output

        def get_text_features(self, input_ids, attention_mask=None, **kwargs):
            return super().get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs).pooler_output

    return PooledCLIPModel


def clip_tokenizer():
    """The project's CLIP tokenizer (SD-2.1's, shipped vocabulary) as a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    from m2m.data.tokenizer import VOCAB_SIZE, write_tokenizer_folder

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(folder), local_files_only=True)
    if tokenizer.vocab_size != VOCAB_SIZE:
        raise ValueError(f"CLIP tokenizer has {tokenizer.vocab_size} ids, expected {VOCAB_SIZE}")
    return tokenizer


def tiny_clip(seed: int = 0, image_size: int = 32):
    """A seeded random tiny CLIP with the project's CLIP tokenizer: ``(model, processor)``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPProcessor

    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = pooled_clip_class()(config)
    model.requires_grad_(False)
    model.eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def local_clip(folder: str | Path):
    """CLIP ``(model, processor)`` from a local folder in the Hugging Face layout (no download)."""
    from transformers import CLIPProcessor

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no CLIP model here (config.json missing); download {CLIP_REPO} into it, e.g. "
            f"`hf download {CLIP_REPO} --local-dir {folder}`, or pass --clip-folder"
        )
    model = pooled_clip_class().from_pretrained(folder, local_files_only=True)
    model.requires_grad_(False)
    model.eval()
    return model, CLIPProcessor.from_pretrained(folder, local_files_only=True)


def local_inception(weights: str | Path, output: str) -> nn.Module:
    """torchmetrics' Inception-v3 loaded from a local torch-fidelity weights file.

    ``output`` is ``"2048"`` (pool features, for FID) or ``"logits_unbiased"`` (for IS). ``weights`` is
    the file or the folder that holds it under its release name.
    """
    weights = Path(weights)
    if weights.is_dir():
        weights = weights / INCEPTION_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights}: Inception weights not found; download {INCEPTION_URL} to this path "
            "or pass --inception-weights"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[output], feature_extractor_weights_path=str(weights)
        )
    except ModuleNotFoundError as err:
        raise ValueError(
            "--metrics-backend standard needs the `standard` extra: torch-fidelity beside the torchvision built for "
            "your torch, and torchmetrics (pyproject.toml says how); --metrics-backend tiny needs none of them"
        ) from err


def load_feature_networks(
    backend: str = "tiny", inception_weights: str | Path | None = None, clip_folder: str | Path | None = None
) -> FeatureNetworks:
    """The feature networks of ``backend`` (``tiny`` or ``standard``), checked before any generation."""
    if backend == "tiny":
        return FeatureNetworks(
            backend="tiny",
            label=TINY_LABEL,
            fid=TinyFeatureNet(seed=TINY_FEATURE_SEED),
            inception=TinyFeatureNet(seed=TINY_FEATURE_SEED, num_classes=64),
            clip=tiny_clip(seed=TINY_CLIP_SEED),
        )
    if backend == "standard":
        inception_weights = inception_weights or DEFAULT_INCEPTION_WEIGHTS
        return FeatureNetworks(
            backend="standard",
            label=STANDARD_LABEL,
            fid=local_inception(inception_weights, "2048"),
            inception=local_inception(inception_weights, "logits_unbiased"),
            clip=local_clip(clip_folder or DEFAULT_CLIP_FOLDER),
        )
    raise ValueError(f"--metrics-backend: unknown backend {backend!r} (choose tiny or standard)")
