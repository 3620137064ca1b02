"""The Table 1 metrics (paper sections 7.2 and 8.4): FID, IS and CLIP scores on a backend's feature networks.

Images are float tensors ``(N, 3, H, W)`` in ``[0, 1]`` (what ``M2MPipeline(output_type="pt")`` returns);
they are quantised to ``uint8`` before they reach a feature network, as for any image file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2m.evaluation.features import FeatureNetworks

BATCH = 64


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` floats -> ``uint8`` in ``[0, 255]``, rounded as when saving a PNG."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def _features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``net``'s outputs ``(N, D)`` for ``[0, 1]`` images, batch by batch, as ``uint8`` like image files."""
    device = _device(net)
    return torch.cat([net(to_uint8(chunk).to(device)).reshape(len(chunk), -1) for chunk in images.split(BATCH)])


def frechet_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Fréchet distance of two Gaussians fitted to features ``(N, D)`` (Heusel et al., 2017):
    ``||μ_r − μ_g||² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½)``, in float64, the trace of the square root from the
    eigenvalues of ``Σ_r Σ_g`` as torchmetrics computes it."""
    real, generated = real.double(), generated.double()
    mu_r, mu_g = real.mean(0), generated.mean(0)
    sigma_r, sigma_g = torch.cov(real.T), torch.cov(generated.T)
    root_trace = torch.linalg.eigvals(sigma_r @ sigma_g).sqrt().real.sum()
    return float((mu_r - mu_g).square().sum() + sigma_r.trace() + sigma_g.trace() - 2 * root_trace)


def frechet_inception_distance(real: torch.Tensor, generated: torch.Tensor, networks: FeatureNetworks) -> float:
    """FID (Heusel et al., 2017) between ``real`` and ``generated`` images (section 8.4: the real set is
    the first preceding image of every set), on the backend's FID features.

    Computed here rather than with torchmetrics' ``FrechetInceptionDistance``: importing
    ``torchmetrics.image`` imports torch-fidelity whenever it is installed, and the ``tiny`` backend must
    work without it (or beside a broken one)."""
    return frechet_distance(_features(networks.fid, real), _features(networks.fid, generated))


def inception_splits(num_images: int) -> int:
    """Salimans et al.'s 10 splits once there are 1,000+ images; fewer below, so that no split
    holds fewer than 100 images (IS of a split is bounded by its size)."""
    return max(1, min(10, num_images // 100))


def inception_score(generated: torch.Tensor, networks: FeatureNetworks) -> float:
    """Inception Score (Salimans et al., 2016): ``exp E_x KL(p(y|x) || p(y))``, mean over splits of a
    seeded permutation (as torchmetrics' ``InceptionScore``, without importing torch-fidelity)."""
    logits = _features(networks.inception, generated)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the split permutation
        logits = logits[torch.randperm(len(logits))]
    scores = []
    for split in logits.chunk(inception_splits(len(generated))):
        prob, log_prob = split.softmax(1), split.log_softmax(1)
        marginal = prob.mean(0, keepdim=True)
        scores.append((prob * (log_prob - marginal.log())).sum(1).mean().exp())
    return float(torch.stack(scores).mean())


@torch.no_grad()
def _clip_image_features(images: torch.Tensor, networks: FeatureNetworks) -> torch.Tensor:
    """Unit-length CLIP image embeddings of ``[0, 1]`` images, preprocessed by the CLIP processor."""
    model, processor = networks.clip
    out = []
    for chunk in images.split(BATCH):
        pixels = processor(images=list(to_uint8(chunk).cpu()), return_tensors="pt")["pixel_values"]
        out.append(model.get_image_features(pixels.to(_device(model))))
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.no_grad()
def _clip_text_features(texts: list[str], networks: FeatureNetworks) -> torch.Tensor:
    """Unit-length CLIP text embeddings, captions truncated to the text tower's context (EOT kept)."""
    model, processor = networks.clip
    context = model.config.text_config.max_position_embeddings
    out = []
    for start in range(0, len(texts), BATCH):
        tokens = processor(
            text=texts[start : start + BATCH], return_tensors="pt", padding=True, truncation=True, max_length=context
        )
        device = _device(model)
        out.append(model.get_text_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)))
    return F.normalize(torch.cat(out).float(), dim=-1)


def clip_score(source: torch.Tensor, target: torch.Tensor) -> float:
    """CLIPScore (Hessel et al., 2021) of paired unit embeddings: ``max(100 · mean cos, 0)``, as torchmetrics'
    ``CLIPScore`` computes it (computed here so that the ``tiny`` backend needs no torchmetrics)."""
    return max(float(100 * (source * target).sum(-1).mean()), 0.0)


def clip_text_image(generated: torch.Tensor, captions: list[str], networks: FeatureNetworks) -> float:
    """Text-Image CLIP score (section 8.4): each generated image against its set's caption."""
    if len(captions) != len(generated):
        raise ValueError(f"clip_text_image: {len(generated)} images but {len(captions)} captions")
    return clip_score(_clip_image_features(generated, networks), _clip_text_features(captions, networks))


def clip_image_image(generated: torch.Tensor, preceding: torch.Tensor, networks: FeatureNetworks) -> float:
    """Image-Image CLIP score (section 8.4): each generated image ``(N, 3, H, W)`` against every one of
    its set's preceding images ``(N, K, 3, H, W)``, averaged over all N*K pairs."""
    if preceding.dim() != 5 or len(preceding) != len(generated):
        raise ValueError(
            f"clip_image_image: preceding must be (N, K, 3, H, W) with N = {len(generated)}, "
            f"got {tuple(preceding.shape)}"
        )
    k = preceding.shape[1]
    source = _clip_image_features(generated, networks).repeat_interleave(k, dim=0)
    return clip_score(source, _clip_image_features(preceding.flatten(0, 1), networks))
