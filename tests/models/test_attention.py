import pytest
import torch

from m2m.models.attention import image_set_attention


def dense_reference(q, k, v, visible, heads, tokens):
    """Eq. 4 with an explicit block-causal mask, in float64."""
    b, nq, lq, d = q.shape
    dh = d // heads
    qq = q.double().reshape(b, nq * lq, heads, dh).transpose(1, 2)
    kk = k.double().reshape(b, -1, heads, dh).transpose(1, 2)
    vv = v.double().reshape(b, -1, heads, dh).transpose(1, 2)
    scores = qq @ kk.transpose(-1, -2) / dh**0.5
    allowed = torch.zeros(nq * lq, kk.shape[2], dtype=torch.bool)
    for i, n in enumerate(visible):
        allowed[i * lq : (i + 1) * lq, : 1 + n * tokens] = True  # the null token, then n clean images
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ vv
    return out.transpose(1, 2).reshape(b, nq, lq, d)


@pytest.mark.parametrize("visible", [[0, 1, 2, 3], [3], [2, 2, 0], [0]])
def test_matches_dense_masked_attention(visible):
    torch.manual_seed(1)
    b, lq, lk, d, heads, nc = 2, 6, 5, 16, 4, 3
    q = torch.randn(b, len(visible), lq, d)
    k = torch.randn(b, 1 + nc * lk, d)
    v = torch.randn(b, 1 + nc * lk, d)
    out = image_set_attention(q, k, v, visible, heads, lk)
    ref = dense_reference(q, k, v, visible, heads, lk)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_first_image_sees_only_the_null_token():
    torch.manual_seed(2)
    q = torch.randn(1, 1, 4, 8)
    k = torch.randn(1, 1 + 2 * 3, 8)
    v = torch.randn(1, 1 + 2 * 3, 8)
    out = image_set_attention(q, k, v, [0], heads=2, tokens_per_image=3)
    assert torch.allclose(out, v[:, :1].expand(1, 4, 8).unsqueeze(1), atol=1e-6)


def test_visible_must_cover_every_noisy_image():
    q = torch.randn(1, 2, 4, 8)
    k = v = torch.randn(1, 1 + 4, 8)
    with pytest.raises(ValueError, match="visible has 1 entries for 2 noisy images"):
        image_set_attention(q, k, v, [1], heads=2, tokens_per_image=4)
