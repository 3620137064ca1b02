import pytest
import torch

from m2m.models.conditions import CameraEmbedder, StepEmbedder, build_condition_embedder, sinusoidal_embedding


def test_sinusoidal_embedding_distinguishes_positions():
    emb = sinusoidal_embedding(torch.arange(6), 16)
    assert emb.shape == (6, 16)
    assert torch.cdist(emb, emb).fill_diagonal_(1).min() > 0.1


def test_camera_embedder_takes_3x4_and_4x4_extrinsics():
    torch.manual_seed(0)
    emb = CameraEmbedder(8)
    cams = torch.eye(4).expand(2, 3, 4, 4)
    assert torch.equal(emb(cams.reshape(2, 3, 16)), emb(cams[:, :, :3].reshape(2, 3, 12)))
    with pytest.raises(ValueError, match="last dim 7"):
        emb(torch.zeros(2, 3, 7))


def test_step_embedder_shape():
    assert StepEmbedder(8)(torch.arange(5).expand(2, 5)).shape == (2, 5, 8)


def test_unknown_condition():
    with pytest.raises(ValueError, match="unknown task condition 'depth'"):
        build_condition_embedder("depth", 8)
