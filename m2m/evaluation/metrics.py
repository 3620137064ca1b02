"""The Table 1 metrics (paper sections 7.2 and 8.4) on torchmetrics.

Images are float tensors ``(N, 3, H, W)`` in ``[0, 1]`` (what ``M2MPipeline(output_type="pt")`` returns);
they are quantised to ``uint8`` before they reach a feature network, as for any image file.
"""

from __future__ import annotations

import warnings

import torch

from m2m.evaluation.features import FeatureNetworks

BATCH = 64


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` floats -> ``uint8`` in ``[0, 255]``, rounded as when saving a PNG."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def frechet_inception_distance(real: torch.Tensor, generated: torch.Tensor, networks: FeatureNetworks) -> float:
    """FID (Heusel et al., 2017) between ``real`` and ``generated`` images (section 8.4: the real set is
    the first preceding image of every set)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = _device(networks.fid)
    metric = FrechetInceptionDistance(feature=networks.fid).to(device)
    for images, is_real in ((real, True), (generated, False)):
        for chunk in images.split(BATCH):
            metric.update(to_uint8(chunk).to(device), real=is_real)
    return float(metric.compute())


def inception_splits(num_images: int) -> int:
    """Salimans et al.'s 10 splits once there are 1,000+ images; fewer below, so that no split
    holds fewer than 100 images (IS of a split is bounded by its size)."""
    return max(1, min(10, num_images // 100))


def inception_score(generated: torch.Tensor, networks: FeatureNetworks) -> float:
    """Inception Score (Salimans et al., 2016): ``exp E_x KL(p(y|x) || p(y))``, mean over splits."""
    from torchmetrics.image.inception import InceptionScore

    device = _device(networks.inception)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=networks.inception, splits=inception_splits(len(generated))).to(device)
    for chunk in generated.split(BATCH):
        metric.update(to_uint8(chunk).to(device))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # the std of a single split
        torch.manual_seed(0)  # the split permutation
        mean, _ = metric.compute()
    return float(mean)


def _clip_score(networks: FeatureNetworks):
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=lambda: networks.clip)


def clip_text_image(generated: torch.Tensor, captions: list[str], networks: FeatureNetworks) -> float:
    """Text-Image CLIP score (section 8.4): each generated image against its set's caption;
    ``100 * cos`` averaged, floored at 0 (torchmetrics' CLIPScore, Hessel et al., 2021)."""
    if len(captions) != len(generated):
        raise ValueError(f"clip_text_image: {len(generated)} images but {len(captions)} captions")
    metric = _clip_score(networks)
    device = _device(networks.clip[0])
    for start in range(0, len(generated), BATCH):
        chunk = to_uint8(generated[start : start + BATCH]).to(device)
        metric.update(chunk, captions[start : start + BATCH])
    return float(metric.compute())


def clip_image_image(generated: torch.Tensor, preceding: torch.Tensor, networks: FeatureNetworks) -> float:
    """Image-Image CLIP score (section 8.4): each generated image ``(N, 3, H, W)`` against every one of
    its set's preceding images ``(N, K, 3, H, W)``, averaged over all N*K pairs."""
    if preceding.dim() != 5 or len(preceding) != len(generated):
        raise ValueError(
            f"clip_image_image: preceding must be (N, K, 3, H, W) with N = {len(generated)}, "
            f"got {tuple(preceding.shape)}"
        )
    k = preceding.shape[1]
    source = generated.repeat_interleave(k, dim=0)
    target = preceding.flatten(0, 1)
    metric = _clip_score(networks)
    device = _device(networks.clip[0])
    for start in range(0, len(source), BATCH):
        metric.update(
            to_uint8(source[start : start + BATCH]).to(device), to_uint8(target[start : start + BATCH]).to(device)
        )
    return float(metric.compute())
