import pytest
import torch

from m2m.models.attention import image_set_attention, masked_attention_reference, repeated_context_attention


@pytest.mark.parametrize("visible", [[0, 1, 2, 3], [3], [2, 2, 0], [0]])
def test_matches_dense_masked_attention(visible):
    torch.manual_seed(1)
    b, lq, lk, d, heads, nc = 2, 6, 5, 16, 4, 3
    q = torch.randn(b, len(visible), lq, d)
    k = torch.randn(b, 1 + nc * lk, d)
    v = torch.randn(b, 1 + nc * lk, d)
    out = image_set_attention(q, k, v, visible, heads, lk)
    ref = masked_attention_reference(q, k, v, visible, heads, lk)
    assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.parametrize("copies", [1, 2, 3, 4, 8])
def test_one_copy_with_log_w_equals_w_identical_context_images(copies):
    """The unconditional branch of eq. 6: W copies of the zeroed context's keys/values, or one with + log W."""
    torch.manual_seed(2)
    b, lq, lk, d, heads = 2, 6, 5, 16, 4
    q = torch.randn(b, 2, lq, d)
    null_k, null_v, block_k, block_v = torch.randn(b, 1, d), torch.randn(b, 1, d), torch.randn(b, lk, d), torch.randn(b, lk, d)
    k = torch.cat([null_k, *[block_k] * copies], 1)
    v = torch.cat([null_v, *[block_v] * copies], 1)
    ref = masked_attention_reference(q, k, v, [copies, copies], heads, lk)
    out = repeated_context_attention(q, torch.cat([null_k, block_k], 1), torch.cat([null_v, block_v], 1), copies, heads)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    if copies > 1:  # the bias is what makes it exact: one copy alone is another attention
        plain = image_set_attention(q, torch.cat([null_k, block_k], 1), torch.cat([null_v, block_v], 1), [1, 1], heads, lk)
        assert not torch.allclose(plain.double(), ref, atol=1e-3)


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
