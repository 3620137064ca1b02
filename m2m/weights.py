"""Checks of the local weights folders the sd21 preset reads, before a long run spends GPU hours on them.

Each folder is recognised by its layout (a ``StableDiffusionPipeline`` folder, a DINOv2 or a CLIP model
folder, the Inception-v3 file) and checked for what would break or silently change a run: the classes
named in its configs, configs that parse, safetensors files that are present and complete, tensors whose
names, shapes and dtypes are those the config's architecture has (built on the meta device, no memory),
and the SD components agreeing with each other. Every problem is one line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

# SD pipeline component -> (library, class) SD-2.1-base's model_index.json names.
SD_COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
}
SD_WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
FLOAT_DTYPES = {"F32", "F16", "BF16"}
INTEGER_DTYPES = {"I64", "I32", "I16", "I8", "U8", "BOOL"}  # buffers such as position ids
HF_MODELS = {"dinov2": "Dinov2Model", "clip": "CLIPModel"}
INCEPTION_SUFFIX = ".pth"


def _json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        problems.append(f"{path}: missing")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{path}: not valid JSON ({err})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return None
    return data


def tensor_header(file: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor a safetensors file's header promises; safetensors raises its
    own error when the file is missing, truncated or not safetensors."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return {
            name: (part.get_dtype(), list(part.get_shape())) for name in handle.keys() for part in [handle.get_slice(name)]
        }


def stored_tensors(folder: Path, stem: str, problems: list[str]) -> dict[str, tuple[str, list[int]]] | None:
    """name -> (dtype, shape) of ``stem.safetensors`` (or its shards), from the headers; None when unreadable."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = (_json(index, problems) or {}).get("weight_map", {})
        files = sorted({folder / name for name in weight_map.values()})
    else:
        others = sorted(p.name for p in folder.glob(f"{stem}*.bin"))
        hint = f" (only {', '.join(others)}: convert to safetensors)" if others else ""
        problems.append(f"{single}: missing{hint}")
        return None
    tensors: dict[str, tuple[str, list[int]]] = {}
    for file in files:
        try:
            tensors.update(tensor_header(file))
        except Exception as err:  # missing, truncated or corrupt: safetensors says which
            problems.append(f"{file}: unreadable safetensors ({type(err).__name__}: {err}); download it again")
            return None
    odd = sorted(name for name, (dtype, _) in tensors.items() if dtype not in FLOAT_DTYPES | INTEGER_DTYPES)
    if odd:
        dtype = tensors[odd[0]][0]
        problems.append(f"{folder}: {len(odd)} tensors of dtype {dtype} (e.g. {odd[0]}), expected F32, F16 or BF16")
    return tensors


def compare_tensors(model, stored: dict, where: Path, problems: list[str]) -> None:
    """The stored tensors against the architecture's (a diffusers model, whose files keep its tensor names):
    every parameter present, with the shape the config implies."""
    expected = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    if missing:
        problems.append(f"{where}: {len(missing)} tensors of the config's architecture missing, e.g. {missing[0]}")
    wrong = sorted(name for name in expected if name in stored and stored[name][1] != expected[name])
    if wrong:
        name = wrong[0]
        problems.append(
            f"{where}: {len(wrong)} tensors with other shapes than the config implies, e.g. {name} "
            f"{stored[name][1]} (the config implies {expected[name]})"
        )


def empty_model(build):
    """The model ``build()`` makes, on the meta device: its tensor names and shapes, no memory."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build()


def check_sd_folder(folder: Path, problems: list[str]) -> None:
    import diffusers
    import transformers

    index = _json(folder / "model_index.json", problems)
    if index is None:
        return
    if index.get("_class_name") != "StableDiffusionPipeline":
        problems.append(f"{folder / 'model_index.json'}: _class_name is {index.get('_class_name')!r}, "
                        "expected 'StableDiffusionPipeline'")
    configs = {}
    for part, (library, class_name) in SD_COMPONENTS.items():
        named = index.get(part)
        if named != [library, class_name]:
            problems.append(f"{folder / 'model_index.json'}: {part} is {named!r}, expected {[library, class_name]!r}")
            continue
        if part == "tokenizer":
            for name in ("vocab.json", "merges.txt"):
                if not (folder / part / name).is_file():
                    problems.append(f"{folder / part / name}: missing")
            continue
        config_file = folder / part / "config.json"
        config = _json(config_file, problems)
        if config is None:
            continue
        configs[part] = config
        cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
        stored = stored_tensors(folder / part, SD_WEIGHTS[part], problems)
        if stored is None:
            continue
        if library == "transformers":
            check_loading(cls, folder / part, problems)
        else:
            compare_tensors(empty_model(lambda: cls.from_config(config)), stored, folder / part, problems)
    scheduler = _json(folder / "scheduler" / "scheduler_config.json", problems)
    if scheduler is not None and not str(scheduler.get("_class_name", "")).endswith("Scheduler"):
        problems.append(f"{folder / 'scheduler' / 'scheduler_config.json'}: _class_name "
                        f"{scheduler.get('_class_name')!r} is not a diffusers scheduler")
    unet, vae, text = configs.get("unet"), configs.get("vae"), configs.get("text_encoder")
    if unet and vae and unet.get("in_channels") != vae.get("latent_channels"):
        problems.append(f"{folder / 'unet' / 'config.json'}: in_channels {unet.get('in_channels')} but the VAE has "
                        f"{vae.get('latent_channels')} latent channels")
    if unet and text and unet.get("cross_attention_dim") != text.get("hidden_size"):
        problems.append(f"{folder / 'unet' / 'config.json'}: cross_attention_dim {unet.get('cross_attention_dim')} "
                        f"but the text encoder's hidden_size is {text.get('hidden_size')}")


def check_hf_folder(folder: Path, model_type: str, problems: list[str]) -> None:
    import transformers

    config = _json(folder / "config.json", problems)
    if config is None:
        return
    if config.get("model_type") != model_type:
        problems.append(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, expected {model_type!r}")
        return
    if model_type == "clip":
        if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
            problems.append(f"{folder / 'preprocessor_config.json'}: missing (the CLIP image processor)")
        if not (folder / "tokenizer_config.json").is_file():
            problems.append(f"{folder / 'tokenizer_config.json'}: missing (the CLIP tokenizer)")
    if stored_tensors(folder, "model", problems) is not None:
        check_loading(getattr(transformers, HF_MODELS[model_type]), folder, problems)


def check_loading(cls, folder: Path, problems: list[str]) -> None:
    """A transformers model loaded as the run will load it (transformers renames some tensors of older
    checkpoints on load): every tensor of the config's architecture found, with its shape."""
    try:
        _, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except Exception as err:  # e.g. a size mismatch: transformers names the tensor
        message = (str(err).strip().splitlines() or [type(err).__name__])[0]
        problems.append(f"{folder}: does not load as {cls.__name__} ({type(err).__name__}: {message})")
        return
    for kind in ("missing_keys", "mismatched_keys"):
        found = sorted(str(key) for key in info.get(kind) or [])
        if found:
            what = kind.replace("_keys", "")
            problems.append(f"{folder}: {len(found)} {what} tensors for {cls.__name__}, e.g. {found[0]}")


def check_weights(path: str | Path) -> tuple[str, list[str]]:
    """(what ``path`` holds, one line per problem); no problems means the folder is usable."""
    path = Path(path)
    problems: list[str] = []
    if not path.exists():
        return "missing", [f"{path}: not found; download the weights there (docs/pipeline.md lists them)"]
    if path.is_file() or path.name == "inception":
        file = path if path.is_file() else next(iter(sorted(path.glob(f"*{INCEPTION_SUFFIX}"))), None)
        if file is None:
            return "Inception-v3", [f"{path}: no {INCEPTION_SUFFIX} weights file"]
        return "Inception-v3", _check_torch_file(file)
    if (path / "model_index.json").is_file():
        check_sd_folder(path, problems)
        return "StableDiffusionPipeline", problems
    config = _json(path / "config.json", problems)
    if config is None:
        return "unknown", [f"{path}: neither a Stable Diffusion pipeline (model_index.json) nor a model (config.json)"]
    model_type = config.get("model_type")
    if model_type not in HF_MODELS:
        return "unknown", [f"{path / 'config.json'}: model_type {model_type!r} is neither dinov2 nor clip"]
    check_hf_folder(path, model_type, problems)
    return HF_MODELS[model_type], problems


def _check_torch_file(file: Path) -> list[str]:
    import torch

    try:
        state = torch.load(file, map_location="meta", weights_only=True)
    except Exception as err:
        return [f"{file}: unreadable ({type(err).__name__}: {err}); download it again"]
    return [] if isinstance(state, dict) and state else [f"{file}: holds no state dict"]


def verify_safetensors(folder: str | Path) -> None:
    """Every ``*.safetensors`` under ``folder`` has a readable header and every tensor it promises.

    Raises ``ValueError`` naming the first file that is truncated or not safetensors at all; loaders
    would otherwise fail with a deserialisation error that names no file.
    """
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            tensor_header(path)
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            raise ValueError(f"{path}: unreadable safetensors ({type(err).__name__}: {err})") from None
