import pytest
import torch

from m2m.models.cache import ContextCache
from m2m.models.unet import M2MUNet, load_sd_unet
from tests.models.conftest import randomize_image_set_attention


def zeroed_cross_attention(sd_unet):
    """The SD UNet with its text cross-attention contributing nothing."""

    class Zero:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return torch.zeros_like(hidden_states)

    sd_unet.set_attn_processor({k: Zero() if ".attn2." in k else v for k, v in sd_unet.attn_processors.items()})
    return sd_unet


def test_sd_folder_keeps_every_non_attn2_weight(sd_unet, tmp_path):
    sd_unet.save_pretrained(tmp_path / "unet")
    model = M2MUNet.from_sd_unet(tmp_path / "unet", "self")
    sd_weights = sd_unet.state_dict()
    m2m_weights = model.unet.state_dict()
    kept = [k for k in sd_weights if ".attn2." not in k]
    assert kept and all(torch.equal(sd_weights[k], m2m_weights[k]) for k in kept)
    new = [k for k in m2m_weights if ".attn2." in k]
    assert any(k.endswith("processor.null_k") for k in new)
    assert all(torch.count_nonzero(m2m_weights[k]) == 0 for k in new if ".to_out.0." in k)


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_untrained_m2m_predicts_what_sd_without_cross_attention_predicts(sd_unet, variant):
    model = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=16)
    torch.manual_seed(0)
    noisy = torch.randn(2, 3, 3, 32, 32)
    context = torch.randn(2, 3, 3, 32, 32) if variant == "self" else torch.randn(2, 3, 9, 16)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        out = model(noisy, t, context=context)
        ref = zeroed_cross_attention(sd_unet)(
            noisy.flatten(0, 1), t.repeat_interleave(3), encoder_hidden_states=torch.zeros(6, 1, 32)
        ).sample
    assert torch.allclose(out.flatten(0, 1), ref, atol=1e-5)


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_causality(sd_unet, variant):
    """Changing clean image j changes no prediction for noisy images i <= j and does change i > j."""
    model = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=16)
    randomize_image_set_attention(model)
    torch.manual_seed(0)
    noisy = torch.randn(1, 4, 3, 32, 32)
    context = torch.randn(1, 4, 3, 32, 32) if variant == "self" else torch.randn(1, 4, 9, 16)
    j = 1
    changed = context.clone()
    changed[:, j] += 1.0
    with torch.no_grad():
        before = model(noisy, 500, context=context)
        after = model(noisy, 500, context=changed)
    diff = (before - after).flatten(2).abs().amax(-1)[0]
    assert torch.all(diff[: j + 1] == 0)
    assert torch.all(diff[j + 1 :] > 1e-4)


def test_cache_equals_joint_pass(sd_unet):
    model = M2MUNet.from_sd_unet(sd_unet, "self")
    randomize_image_set_attention(model)
    torch.manual_seed(0)
    context = torch.randn(2, 3, 3, 32, 32)
    noisy = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        joint = model(noisy, 300, context=context, visible=[3])
        cache = model.encode_context(context[:, :2], ContextCache())
        model.encode_context(context[:, 2:], cache)
        cached = model(noisy, 300, visible=[3], cache=cache)
        windowed = model(noisy, 300, cache=cache, window=2)
        joint_window = model(noisy, 300, context=context[:, 1:], visible=[2])
    assert torch.allclose(joint, cached, atol=1e-5)
    assert torch.allclose(windowed, joint_window, atol=1e-5)


def test_zero_initialised_condition_changes_nothing(sd_unet):
    plain = M2MUNet.from_sd_unet(sd_unet, "dino", context_dim=16)
    randomize_image_set_attention(plain)
    cond = M2MUNet(**{k: v for k, v in plain.config.items() if not k.startswith("_")} | {"condition": "camera", "condition_dim": 8})
    cond.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(0)
    noisy, feats = torch.randn(1, 3, 3, 32, 32), torch.randn(1, 3, 9, 16)
    emb = cond.embed_condition(torch.randn(1, 3, 12))
    with torch.no_grad():
        assert torch.allclose(plain(noisy, 5, context=feats), cond(noisy, 5, context=feats, cond_query=emb, cond_context=emb))


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_own_condition_reaches_an_image_with_nothing_before_it(sd_unet, variant):
    """Image 1 sees only the null key/value, so its condition must act on its hidden states directly."""
    model = M2MUNet.from_sd_unet(sd_unet, variant, context_dim=16, condition="procedure", condition_dim=8)
    randomize_image_set_attention(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, proc in model.image_set_layers():
            proc.cond_proj.weight.copy_(torch.randn(proc.cond_proj.weight.shape, generator=gen) * 0.2)
    noisy = torch.randn(1, 1, 3, 32, 32)
    step_1, step_4 = (model.embed_condition(torch.tensor([[k]])) for k in (1, 4))
    with torch.no_grad():
        first, fourth = model(noisy, 5, cond_query=step_1), model(noisy, 5, cond_query=step_4)
        assert (first - fourth).abs().max() > 1e-3
        assert torch.equal(first, model(noisy, 5, cond_query=step_1))


def test_bad_inputs(sd_unet, tmp_path):
    with pytest.raises(FileNotFoundError, match="no UNet config.json"):
        load_sd_unet(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ValueError, match="not a Stable Diffusion UNet2DConditionModel"):
        load_sd_unet(tmp_path)
    with pytest.raises(ValueError, match="unknown M2M variant 'other'"):
        M2MUNet.from_sd_unet(sd_unet, "other")
    with pytest.raises(ValueError, match="needs context_dim"):
        M2MUNet.from_sd_unet(sd_unet, "dino")
    model = M2MUNet.from_sd_unet(sd_unet, "self")
    with pytest.raises(ValueError, match="cannot see 3 of 2 context images"):
        model(torch.randn(1, 1, 3, 32, 32), 1, context=torch.randn(1, 2, 3, 32, 32), visible=[3])


@pytest.mark.parametrize("variant", ["self", "dino"])
def test_sd21_model_from_weight_folders_saves_and_loads(tiny_sd_folder, tiny_dino_folder, tmp_path, variant):
    """An sd21 model built from a local SD folder (whose config carries the folder as a Path) saves
    as JSON and loads back with the same weights."""
    from m2m.build import build_pipeline
    from m2m.pipeline import M2MPipeline

    pipe = build_pipeline("sd21", variant, sd_folder=tiny_sd_folder, dino_folder=tiny_dino_folder)
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = M2MPipeline.from_pretrained(tmp_path / "model")
    assert loaded.unet.config.unet_config == pipe.unet.config.unet_config
    assert "_name_or_path" not in loaded.unet.config.unet_config
    for name, weight in pipe.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], weight), name


def test_the_call_data_reaches_every_attention_as_an_argument(sd_unet, caplog):
    """``image_set`` travels in diffusers' ``cross_attention_kwargs``: attn1 takes it without diffusers'
    "not expected" warning, and Image-Set Attention without it is a one-line error, not a stale state."""
    from diffusers.utils import logging as diffusers_logging

    model = M2MUNet.from_sd_unet(sd_unet, "self")
    noisy, context = torch.randn(1, 2, 3, 32, 32), torch.randn(1, 2, 3, 32, 32)
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"), torch.no_grad():
            model(noisy, 5, context=context)
    finally:
        diffusers_logging.disable_propagation()
    assert not [r for r in caplog.records if "cross_attention_kwargs" in r.getMessage()]
    with pytest.raises(ValueError, match="Image-Set Attention needs the call's image set"), torch.no_grad():
        model.unet(noisy.flatten(0, 1), torch.tensor([5, 5]), encoder_hidden_states=None)
