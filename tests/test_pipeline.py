import pytest
import torch

from m2m.build import add_condition, build_pipeline
from m2m.pipeline import Guidance, M2MPipeline, cfg_eq6, cfg_eq7, load_on
from tests.models.conftest import randomize_image_set_attention


def sample(pipe, images, **kwargs):
    kwargs = {"num_images": 3, "window": 2, "num_inference_steps": 4, "output_type": "pt", "progress": False} | kwargs
    return pipe(images, generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module", params=["self", "dino"])
def pipe(request):
    pipe = build_pipeline("tiny", request.param)
    randomize_image_set_attention(pipe.unet, std=0.1)
    return pipe


@pytest.fixture
def images():
    return torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_cached_sampler_equals_uncached(pipe, images):
    cached = sample(pipe, images, guidance_scale=3.0)  # both branches of eq. 6
    uncached = sample(pipe, images, guidance_scale=3.0, use_cache=False)
    assert cached.shape == (2, 3, 3, 32, 32)
    assert torch.allclose(cached, uncached, atol=1e-5)


def test_the_cache_holds_at_most_the_window(pipe, images, monkeypatch):
    """Memory stays flat along a 50-image sequence: images that left the window W are dropped from the cache."""
    sizes, encode = [], pipe.unet.encode_context

    def recording(*args, **kwargs):
        cache = encode(*args, **kwargs)
        sizes.append((cache.n_cached, cache.nbytes()))
        return cache

    monkeypatch.setattr(pipe.unet, "encode_context", recording)
    sample(pipe, images, num_images=50, window=2, num_inference_steps=1)
    assert len(sizes) == 50 and {n for n, _ in sizes} == {2}  # the 3 given images, then 49 generated ones
    assert len({size for _, size in sizes}) == 1 and sizes[0][1] > 0  # the same bytes from the first to the last
    monkeypatch.undo()
    cached = sample(pipe, images, num_images=4, window=2, guidance_scale=3.0)
    assert torch.allclose(cached, sample(pipe, images, num_images=4, window=2, guidance_scale=3.0, use_cache=False), atol=1e-5)


def test_two_pipelines_sharing_one_unet_keep_their_own_context(pipe, images, monkeypatch):
    """The key/value cache is the call's, not the UNet's: a second pipeline on the same UNet, run between
    two DDIM steps of the first one's call, changes none of the first one's images, nor they its own."""
    from diffusers import DDIMScheduler

    other = M2MPipeline(unet=pipe.unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config), vae=pipe.vae,
                        image_encoder=pipe.image_encoder)
    kwargs = {"guidance_scale": 3.0, "num_images": 2}
    alone, other_alone = sample(pipe, images, **kwargs), sample(other, images.flip(1), **kwargs)
    step, nested = pipe.scheduler.step, []

    def step_with_the_other_pipeline(*args, **kwargs_):
        if not nested:  # inside image 1, while the first call's cache holds its context
            nested.append(sample(other, images.flip(1), **kwargs))
        return step(*args, **kwargs_)

    monkeypatch.setattr(pipe.scheduler, "step", step_with_the_other_pipeline)
    interleaved = sample(pipe, images, **kwargs)
    assert nested and not torch.allclose(alone, other_alone, atol=1e-3)  # the two calls do differ
    assert torch.allclose(interleaved, alone, atol=1e-6)
    assert torch.allclose(nested[0], other_alone, atol=1e-6)


def test_more_visible_images_than_cached_is_a_clear_error(pipe, images):
    config = pipe.unet.config.unet_config
    noisy = torch.zeros(1, 1, config["in_channels"], config["sample_size"], config["sample_size"])
    with pytest.raises(ValueError, match="cannot see 2 images: 0 are cached"):
        pipe.unet(noisy, 10, visible=[2])


def test_generator_makes_sampling_reproducible(pipe, images):
    assert torch.equal(sample(pipe, images), sample(pipe, images))


def test_context_changes_the_generated_images(pipe, images):
    assert not torch.allclose(sample(pipe, images), sample(pipe, -images), atol=1e-3)


def test_unconditional_branch_ignores_the_context(pipe, images):
    """s = 0 leaves eq. 6's unconditional branch alone: the zeroed condition, whatever the context."""
    assert torch.allclose(sample(pipe, images, guidance_scale=0.0), sample(pipe, -images, guidance_scale=0.0), atol=1e-5)


def test_zeroed_condition_is_the_unconditional_branch():
    """M2M-Self in pixel space: a zero context is eq. 6's zeroed condition, so guidance changes nothing."""
    pipe = build_pipeline("tiny", "self")
    randomize_image_set_attention(pipe.unet, std=0.1)
    zeros = torch.zeros(1, 2, 3, 32, 32)
    first = {"num_images": 1}  # later images would see the (non-zero) first generated one
    assert torch.allclose(sample(pipe, zeros, guidance_scale=7.5, **first), sample(pipe, zeros, guidance_scale=1.0, **first), atol=1e-5)


def test_default_guidance_scale_is_saved_with_the_model(tmp_path, images):
    pipe = build_pipeline("tiny", "dino")
    assert pipe.config.guidance_scale == 1.0  # the tiny preset's own s (docs/model.md)
    randomize_image_set_attention(pipe.unet, std=0.1)  # so that s changes the images
    pipe.register_to_config(guidance_scale=3.0)
    pipe.save_pretrained(tmp_path)
    loaded = M2MPipeline.from_pretrained(tmp_path)
    assert loaded.config.guidance_scale == 3.0
    assert torch.equal(sample(loaded, images), sample(loaded, images, guidance_scale=3.0))
    assert not torch.allclose(sample(loaded, images), sample(loaded, images, guidance_scale=1.0), atol=1e-3)


def test_float16_weights_load_in_float32_on_cpu(tmp_path, images):
    pipe = build_pipeline("tiny", "dino")
    pipe.to(torch.float16).save_pretrained(tmp_path)
    loaded = load_on(tmp_path, "cpu")
    assert {p.dtype for p in loaded.unet.parameters()} == {torch.float32}
    assert {p.dtype for p in loaded.image_encoder.parameters()} == {torch.float32}
    assert torch.isfinite(sample(loaded, images, num_images=1)).all()


def test_guidance_arithmetic():
    torch.manual_seed(0)
    u, c, b = torch.randn(3, 4, 8).unbind(0)
    assert torch.allclose(cfg_eq6(u, c, 7.5), u + 7.5 * (c - u))
    assert torch.equal(cfg_eq6(u, c, 1.0), u + 1.0 * (c - u))
    assert torch.allclose(cfg_eq7(u, c, b, 3.0, 2.0), u + 3.0 * (c - u) + 2.0 * (b - c))
    assert torch.allclose(cfg_eq7(u, c, b, 7.5, 0.0), cfg_eq6(u, c, 7.5))


def test_eq7_scales_default_to_s_and_one():
    """s_I and s_C of eq. 7 default to s and 1 (the pipeline's docstring), each given one wins."""
    emb = torch.zeros(1, 2, 4)
    defaults = Guidance.choose(2.5, None, None, emb)
    assert (defaults.s_img, defaults.s_cond) == (2.5, 1.0)
    given = Guidance.choose(2.5, 3.0, 0.5, emb)
    assert (given.s_img, given.s_cond) == (3.0, 0.5)


def test_eq6_attends_to_one_copy_of_the_zeroed_context(pipe, images, monkeypatch):
    """With the cache, eq. 6's unconditional branch leads the batch and attends to its W identical zeroed
    context images as one (+ log W); without guidance (s = 1) there is no such branch."""
    import m2m.models.attention as attention

    copies, attend = [], attention.repeated_context_attention

    def spy(q, k, v, n, heads):
        copies.append(n)
        return attend(q, k, v, n, heads)

    monkeypatch.setattr(attention, "repeated_context_attention", spy)
    sample(pipe, images, guidance_scale=3.0)  # K = 3 given images: every generated one sees W = 2
    assert copies and set(copies) == {2}
    copies.clear()
    sample(pipe, images, guidance_scale=1.0)
    assert not copies


def test_the_cache_computes_each_context_image_once(pipe, images, monkeypatch):
    """With the cache, each context image is encoded once, when it enters the window W; the uncached
    baseline encodes the W visible ones at every DDIM step."""
    calls, context_of = [], pipe._context_of
    monkeypatch.setattr(pipe, "_context_of", lambda *args: calls.append(1) or context_of(*args))
    sample(pipe, images)  # K = 3, W = 2, 3 images of 4 steps
    assert len(calls) == 2 + 2  # the last 2 given images, then the first 2 generated ones (not the last)
    calls.clear()
    sample(pipe, images, use_cache=False)
    assert len(calls) == 3 * 4 * 2


def test_a_generated_image_fed_back_continues_the_sequence(images):
    """Generating two images equals generating one, then one more with the first given back as an input
    image: the output is the image the sampler goes on from, mapped from [-1, 1] to [0, 1]."""
    pipe = build_pipeline("tiny", "dino")  # its context is computed from the pixels
    randomize_image_set_attention(pipe.unet, std=0.1)
    both = sample(pipe, images, num_images=2)
    generator = torch.Generator().manual_seed(0)
    kwargs = {"window": 2, "num_inference_steps": 4, "output_type": "pt", "progress": False, "generator": generator}
    first = pipe(images, num_images=1, **kwargs).images
    second = pipe(torch.cat([images, first * 2 - 1], 1), num_images=1, **kwargs).images
    assert torch.allclose(torch.cat([first, second], 1), both, atol=1e-5)


def test_no_input_images(pipe):
    out = pipe(None, num_images=2, window=2, num_inference_steps=2, batch_size=2, progress=False).images
    assert len(out) == 2 and all(len(row) == 2 and row[0].size == (32, 32) for row in out)


def give_weight(unet, std: float = 0.1) -> None:
    """Randomise every zero-initialised parameter (Image-Set Attention's output, the task-condition
    projections), so that context and conditions change the prediction."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in unet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def test_task_conditions_follow_eq7_branch_by_branch(images, monkeypatch):
    """Eq. 7: ε_u = ε(z_t, ∅, ∅), ε_c = ε(z_t, c_I, ∅), ε_b = ε(z_t, c_I, c_C), combined as
    ε_u + s_I (ε_c − ε_u) + s_C (ε_b − ε_c); each branch is checked for what it sees."""
    pipe = add_condition(build_pipeline("tiny", "dino"), "procedure")
    give_weight(pipe.unet)
    steps = torch.arange(3).expand(2, 3)
    contexts, queries, outputs, combined = [], [], [], []
    encode, forward, step = pipe.unet.encode_context, pipe.unet.forward, pipe.scheduler.step

    def spy_encode(context, cache, cond_context=None):
        contexts.append((context.clone(), cond_context.clone()))
        return encode(context, cache, cond_context)

    def spy_forward(*args, **kwargs):
        queries.append(kwargs["cond_query"].clone())
        outputs.append(forward(*args, **kwargs))
        return outputs[-1]

    def spy_step(model_output, *args, **kwargs):
        combined.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "encode_context", spy_encode)
    monkeypatch.setattr(pipe.unet, "forward", spy_forward)
    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    sample(pipe, images[:, :2], conditions=steps, image_guidance_scale=2.0, condition_guidance_scale=1.5,
           num_images=1, num_inference_steps=1)
    [(context, cond_context)], [cond_query], [out], [eps] = contexts, queries, outputs, combined
    none, image, both = context.chunk(3)
    assert not none.any() and image.any() and torch.equal(image, both)  # c_I in the 2nd and 3rd branch only
    none, image, both = cond_context.chunk(3)
    assert not none.any() and not image.any() and both.any()  # c_C in the 3rd branch only ...
    none, image, both = cond_query.chunk(3)
    assert not none.any() and not image.any() and both.any()  # ... for the generated image too
    u, c, b = out.chunk(3)
    assert not torch.allclose(u, c) and not torch.allclose(c, b)  # each condition matters here
    torch.testing.assert_close(eps, cfg_eq7(u, c, b, 2.0, 1.5).flatten(0, 1))


def test_task_conditions_sample_the_same_with_and_without_the_cache(images):
    pipe = add_condition(build_pipeline("tiny", "dino"), "procedure")
    give_weight(pipe.unet)
    steps = torch.arange(5).expand(2, 5)
    out = sample(pipe, images, conditions=steps, image_guidance_scale=2.0, condition_guidance_scale=1.5, num_images=2)
    cached_off = sample(pipe, images, conditions=steps, image_guidance_scale=2.0, condition_guidance_scale=1.5,
                        num_images=2, use_cache=False)
    assert torch.allclose(out, cached_off, atol=1e-5)
    with pytest.raises(ValueError, match="conditions must cover all 5 positions"):
        sample(pipe, images, conditions=steps[:, :4], num_images=2)


def test_save_and_load_round_trip(pipe, images, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert list(tmp_path.glob("unet/*.safetensors"))
    loaded = M2MPipeline.from_pretrained(tmp_path)
    assert torch.equal(sample(pipe, images), sample(loaded, images))


def test_bad_inputs(pipe, images):
    with pytest.raises(ValueError, match="this model generates 32x32"):
        sample(pipe, torch.zeros(1, 2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, K, 3, H, W\) RGB"):
        sample(pipe, torch.zeros(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match="window W must be >= 1"):
        sample(pipe, None, window=0)
