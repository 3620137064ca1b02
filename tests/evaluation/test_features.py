"""Feature networks: the download-free tiny ones and the local-file loaders of the standard ones."""

import importlib.util

import pytest
import torch

from m2m.evaluation import features
from m2m.evaluation.features import TinyFeatureNet, load_feature_networks, local_clip, local_inception, tiny_clip


def random_uint8(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_tiny_feature_net_is_fixed_by_its_seed():
    images = random_uint8(4, 32)
    same = TinyFeatureNet(seed=0)(images), TinyFeatureNet(seed=0)(images)
    assert torch.equal(*same)
    assert not torch.allclose(same[0], TinyFeatureNet(seed=1)(images))


def test_tiny_feature_net_shapes_and_any_input_size():
    fid_net, is_net = TinyFeatureNet(), TinyFeatureNet(num_classes=64)
    assert fid_net(random_uint8(3, 32)).shape == (3, fid_net.num_features) == (3, 64)
    assert is_net(random_uint8(3, 57)).shape == (3, 64)
    assert not any(p.requires_grad for p in fid_net.parameters())


def test_tiny_feature_net_rejects_float_images():
    with pytest.raises(ValueError, match="expects uint8"):
        TinyFeatureNet()(torch.rand(1, 3, 32, 32))


def test_tiny_classifier_gives_distinct_colours_distinct_classes():
    net = TinyFeatureNet(num_classes=64)
    colours = torch.tensor([[255, 0, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)
    images = colours[:, :, None, None].expand(3, 3, 32, 32)
    predicted = net(images).argmax(1)
    assert len(set(predicted.tolist())) == 3


@pytest.fixture(scope="module")
def clip_pair():
    return tiny_clip(seed=features.TINY_CLIP_SEED)


def test_tiny_clip_uses_the_project_tokenizer_and_is_seeded(clip_pair):
    model, processor = clip_pair
    assert processor.tokenizer.vocab_size == 49408
    ids = processor(text=["a red circle"], return_tensors="pt")["input_ids"][0].tolist()
    assert ids[0] == 49406 and ids[-1] == 49407
    again, _ = tiny_clip(seed=features.TINY_CLIP_SEED)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_tiny_clip_returns_pooled_feature_tensors(clip_pair):
    model, processor = clip_pair
    pixels = processor(images=list(random_uint8(2, 32)), return_tensors="pt")["pixel_values"]
    tokens = processor(text=["a", "two rings"], return_tensors="pt", padding=True)
    assert model.get_image_features(pixels).shape == (2, 32)
    assert model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).shape == (2, 32)


def test_local_clip_round_trips_a_saved_folder(clip_pair, tmp_path):
    model, processor = clip_pair
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = local_clip(tmp_path)
    pixels = processor(images=list(random_uint8(2, 32)), return_tensors="pt")["pixel_values"]
    assert torch.allclose(loaded.get_image_features(pixels), model.get_image_features(pixels), atol=1e-6)
    assert loaded_processor.tokenizer.vocab_size == 49408


def test_local_clip_missing_folder_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CLIP model here.*openai/clip-vit-large-patch14"):
        local_clip(tmp_path / "clip")


def test_local_inception_missing_file_names_file_and_url(tmp_path):
    path = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError, match=rf"{path}: Inception weights not found; download https://"):
        local_inception(path, "2048")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_local_inception_without_torch_fidelity_says_how_to_install(tmp_path):
    path = tmp_path / features.INCEPTION_FILE
    path.write_bytes(b"not used")
    with pytest.raises(ValueError, match="needs the `standard` extra: torch-fidelity"):
        local_inception(path, "2048")


def test_load_feature_networks_labels_the_tiny_backend():
    networks = load_feature_networks("tiny")
    assert networks.label == "tiny feature net (not comparable to the paper)"
    assert networks.backend == "tiny"


def test_load_feature_networks_standard_checks_local_files_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        load_feature_networks("standard", tmp_path / "missing.pth", tmp_path)


def test_load_feature_networks_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fancy'"):
        load_feature_networks("fancy")
