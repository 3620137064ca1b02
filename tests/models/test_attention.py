import pytest
import torch

from m2m.models.attention import (
    image_set_attention,
    masked_attention_reference,
    repeated_context_attention,
    scaled_dot_product,
)


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


def test_bfloat16_on_cpu_attends_in_float32(kernel_dtypes):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16) for _ in range(3))
    bias = torch.randn(1, 1, 1, 64)
    out = scaled_dot_product(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=bias.bfloat16())
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert out.dtype == torch.bfloat16 and kernel_dtypes[0] == torch.float32
    assert torch.allclose(out.float(), reference, atol=0.05)
    assert scaled_dot_product(q, k, v).dtype == torch.float32  # float32 stays as it is


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_unet_under_cpu_autocast_runs_every_attention_kernel_in_float32(sd_unet, variant, kernel_dtypes):
    """``m2m train --mixed-precision bf16`` on CPU: self-attention and Image-Set Attention (training's joint
    and context passes) keep their kernels in float32 and predict what the float32 model predicts."""
    from m2m.models.unet import M2MUNet
    from tests.models.conftest import randomize_image_set_attention

    model = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=16)
    randomize_image_set_attention(model)
    torch.manual_seed(0)
    noisy = torch.randn(2, 3, 3, 32, 32)
    context = torch.randn(2, 3, 3, 32, 32) if variant == "self" else torch.randn(2, 3, 9, 16)
    with torch.no_grad():
        full = model(noisy, 500, context=context)
        kernel_dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(noisy, 500, context=context)
    layers = sum(1 for name, _ in model.named_modules() if name.endswith(("attn1", "attn2")))
    assert len(kernel_dtypes) >= layers and set(kernel_dtypes) == {torch.float32}
    assert (mixed.float() - full).abs().max() < 0.05 * full.abs().max()
