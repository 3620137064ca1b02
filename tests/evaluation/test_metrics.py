"""Table 1 metrics against direct computations on toy cases."""

import numpy as np
import pytest
import scipy.linalg
import torch

from m2m.evaluation import metrics
from m2m.evaluation.features import load_feature_networks


@pytest.fixture(scope="module")
def networks():
    return load_feature_networks("tiny")


def toy_images(n: int, seed: int, brightness: float = 0.0) -> torch.Tensor:
    """Coloured squares on coloured backgrounds, ``(n, 3, 32, 32)`` in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, 32, 32).clone()
    for image in images:
        x, y = torch.randint(0, 20, (2,), generator=g).tolist()
        image[:, y : y + 12, x : x + 12] = torch.rand(3, 1, 1, generator=g)
    return (images + brightness).clamp(0, 1)


def direct_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Heusel et al.'s formula with scipy's matrix square root."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_to_uint8_rounds_and_clamps():
    images = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0]).reshape(1, 5, 1, 1)
    assert metrics.to_uint8(images).flatten().tolist() == [0, 0, 128, 255, 255]


def test_fid_of_identical_sets_is_zero(networks):
    images = toy_images(80, seed=0)
    assert metrics.frechet_inception_distance(images, images, networks) == pytest.approx(0.0, abs=1e-4)


def test_fid_matches_scipy_sqrtm_formula(networks):
    real, fake = toy_images(80, seed=1), toy_images(80, seed=2, brightness=0.2)
    with torch.no_grad():
        f_real = networks.fid(metrics.to_uint8(real)).double().numpy()
        f_fake = networks.fid(metrics.to_uint8(fake)).double().numpy()
    expected = direct_fid(f_real, f_fake)
    assert expected > 0.01
    assert metrics.frechet_inception_distance(real, fake, networks) == pytest.approx(expected, rel=1e-3)


def test_fid_grows_with_distribution_shift(networks):
    real = toy_images(80, seed=3)
    near = metrics.frechet_inception_distance(real, toy_images(80, seed=4, brightness=0.1), networks)
    far = metrics.frechet_inception_distance(real, toy_images(80, seed=4, brightness=0.4), networks)
    assert 0 < near < far


def test_inception_score_of_identical_images_is_one(networks):
    images = toy_images(1, seed=5).repeat(40, 1, 1, 1)
    assert metrics.inception_score(images, networks) == pytest.approx(1.0, abs=1e-4)


def test_inception_score_matches_direct_kl(networks):
    images = toy_images(60, seed=6)
    with torch.no_grad():
        logits = networks.inception(metrics.to_uint8(images)).double()
    p = logits.softmax(1)
    expected = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    assert expected > 2  # diverse images spread over the classes
    assert metrics.inception_score(images, networks) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("n", "splits"), [(10, 1), (64, 1), (250, 2), (1000, 10), (10_000, 10)])
def test_inception_splits_keep_100_images_per_split(n, splits):
    assert metrics.inception_splits(n) == splits


def test_image_image_clip_of_an_image_with_itself_is_100(networks):
    images = toy_images(6, seed=7)
    assert metrics.clip_image_image(images, images[:, None], networks) == pytest.approx(100.0, abs=1e-3)


def direct_clip_cosines(networks, images: torch.Tensor, other) -> torch.Tensor:
    """Cosines between each image and ``other`` (images or captions), through the CLIP model itself."""
    model, processor = networks.clip
    with torch.no_grad():
        pixel = processor(images=list(metrics.to_uint8(images)), return_tensors="pt")["pixel_values"]
        a = model.get_image_features(pixel)
        if isinstance(other, torch.Tensor):
            pixel = processor(images=list(metrics.to_uint8(other)), return_tensors="pt")["pixel_values"]
            b = model.get_image_features(pixel)
        else:
            tokens = processor(text=other, return_tensors="pt", padding=True)
            b = model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
    return torch.nn.functional.cosine_similarity(a, b)


def test_image_image_clip_averages_every_preceding_image(networks):
    generated, preceding = toy_images(4, seed=8), toy_images(12, seed=9).reshape(4, 3, 3, 32, 32)
    cosines = torch.stack([direct_clip_cosines(networks, generated, preceding[:, k]) for k in range(3)])
    expected = max(100 * cosines.mean().item(), 0.0)
    assert expected > 0
    assert metrics.clip_image_image(generated, preceding, networks) == pytest.approx(expected, abs=1e-3)


def test_text_image_clip_matches_direct_cosine(networks):
    images = toy_images(5, seed=10)
    captions = ["a red circle", "blue squares on stripes", "a star", "night sky", "two rings"]
    cosines = direct_clip_cosines(networks, images, captions)
    expected = max(100 * cosines.mean().item(), 0.0)
    assert expected > 0
    assert metrics.clip_text_image(images, captions, networks) == pytest.approx(expected, abs=1e-3)


def test_clip_scores_reject_mismatched_inputs(networks):
    images = toy_images(3, seed=11)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        metrics.clip_text_image(images, ["a", "b"], networks)
    with pytest.raises(ValueError, match=r"preceding must be \(N, K, 3, H, W\)"):
        metrics.clip_image_image(images, images, networks)
