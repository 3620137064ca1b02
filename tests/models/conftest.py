import pytest
import torch


@pytest.fixture
def sd_unet():
    """A tiny random Stable Diffusion UNet (stands in for SD-2.1-base's)."""
    from diffusers import UNet2DConditionModel

    from m2m.models.presets import TINY_UNET

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(TINY_UNET)


def randomize_image_set_attention(unet, std=0.2, seed=0):
    """Give the zero-initialised output projections weight, so the context has an effect."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attn, _ in unet.image_set_layers():
            attn.to_out[0].weight.copy_(torch.randn(attn.to_out[0].weight.shape, generator=gen) * std)
