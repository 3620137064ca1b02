"""m2m/speed.py: every option changes how the UNet runs, never what it computes."""

import pytest
import torch

from m2m.build import build_pipeline
from m2m.speed import ADAMW, Speed, adamw
from tests.models.conftest import randomize_image_set_attention


def sample(pipe, images, **kwargs):
    kwargs = {"num_images": 2, "window": 2, "num_inference_steps": 2, "guidance_scale": 3.0, "output_type": "pt",
              "progress": False} | kwargs
    return pipe(images, generator=torch.Generator().manual_seed(0), **kwargs).images


def tiny(variant: str):
    pipe = build_pipeline("tiny", variant)
    randomize_image_set_attention(pipe.unet, std=0.1)
    return pipe


@pytest.fixture
def images():
    return torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.slow  # inductor compiles the tiny UNet's step in C++: about a minute on two cores
def test_a_compiled_denoising_step_samples_what_the_eager_one_does(images, monkeypatch):
    import m2m.models.attention as attention

    pipe = tiny("dino")
    eager = sample(pipe, images)
    traced, attend = [], attention.image_set_attention

    def spy(*args, **kwargs):
        traced.append(torch.compiler.is_compiling())
        return attend(*args, **kwargs)

    monkeypatch.setattr(attention, "image_set_attention", spy)
    compiled = sample(pipe.enable_speed(Speed(compile="default")), images)
    assert any(traced)  # the denoising step ran through torch.compile
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_channels_last_samples_what_contiguous_weights_do(images):
    pipe = tiny("self")
    contiguous = sample(pipe, images)
    pipe.enable_speed(Speed(channels_last=True))
    assert pipe.unet.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(sample(pipe, images), contiguous, atol=1e-5, rtol=1e-5)


def test_the_sdpa_backend_holds_for_every_attention_call_and_changes_nothing(images, monkeypatch):
    pipe = tiny("self")
    default = sample(pipe, images)
    backends, kernel = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        backends.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    math = sample(pipe.enable_speed(Speed(sdpa_backend="math")), images)
    assert backends and set(backends) == {(False, True)}  # Image-Set Attention's calls and diffusers' alike
    assert torch.backends.cuda.flash_sdp_enabled()  # and only inside the call
    torch.testing.assert_close(math, default, atol=1e-5, rtol=1e-5)


def test_fused_and_foreach_adamw_step_as_the_for_loop_does():
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32), torch.randn(8, 4, 3, 3)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    results = {}
    for impl in ADAMW:
        params = [p.clone().requires_grad_() for p in start]
        opt = adamw(params, impl, lr=1e-2, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        chosen = (opt.defaults["foreach"], opt.defaults["fused"])
        assert chosen == ((None, None) if impl == "auto" else (impl == "foreach", impl == "fused"))
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results[impl] = [p.detach() for p in params]
    assert not torch.allclose(results["for-loop"][0], start[0], atol=1e-3)  # the steps moved the weights
    for impl in ("auto", "foreach", "fused"):
        for got, want in zip(results[impl], results["for-loop"]):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_unknown_options_are_one_line_errors():
    with pytest.raises(ValueError, match="compile: one of default, reduce-overhead, cudagraphs or none, got 'max-autotune'"):
        Speed(compile="max-autotune")
    with pytest.raises(ValueError, match="sdpa_backend: one of flash, efficient, cudnn, math"):
        Speed(sdpa_backend="xformers")
    with pytest.raises(ValueError, match="adamw: one of auto, for-loop, foreach, fused, got 'apex'"):
        adamw([torch.zeros(1, requires_grad=True)], "apex")
