"""Training data: MIS shards -> batches of image sets ``(B, N, 3, H, W)`` in ``[-1, 1]`` (sections 4-5).

Each sample keeps ``N`` of its 25 images (N = 5 in the paper), a random subset drawn from
``(seed, epoch, caption id)`` and kept in its original order. One epoch is one deterministic stream:
shards and samples are shuffled by generators seeded from ``(seed, epoch)``, and every worker (and
every data-parallel rank) reads that same stream but decodes only its own blocks of ``batch_size``
samples. The DataLoader takes the workers' batches round-robin, so batches come in stream order,
the position after any batch is a plain sample count, and a loader restored from ``state_dict()``
yields exactly the batches an uninterrupted run would have yielded next.

Corrupt data never stops an epoch: an unreadable part of a tar, an incomplete sample or an image
that does not decode is skipped, counted, and reported with a warning naming the shard and key.
"""

from __future__ import annotations

import io
import json
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from m2m.data.shards import PRECOMPUTED, SHARD_PREFIX, SPLITS, shard_paths


class CorruptSampleWarning(UserWarning):
    """A sample or part of a shard was skipped because it could not be read."""


def resolve_mis(source: str | Path | list) -> tuple[list[str], Path | None]:
    """(tar paths, manifest or None) from a list of tars, a shard folder, a dataset folder or a manifest."""
    if isinstance(source, (list, tuple)):
        tars = [str(p) for p in source]
        for tar in tars:
            if not Path(tar).is_file():
                raise FileNotFoundError(f"{tar}: shard not found")
        return tars, None
    path = Path(source)
    if path.is_dir() and (path / "manifest.json").is_file():
        path = path / "manifest.json"
    if path.is_file() and path.suffix == ".json":
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            root = path.parent / manifest["shards_dir"]
            tars = [str(root / shard["name"]) for shard in manifest["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an MIS manifest ({err}); run `m2m build-manifest`") from err
        for tar in tars:
            if not Path(tar).is_file():
                raise FileNotFoundError(f"{tar}: shard listed in {path} not found")
        return tars, path
    tars = [str(p) for p in shard_paths(path)]
    if not tars:
        raise ValueError(f"{path}: no {SHARD_PREFIX}*.tar shards and no manifest.json")
    return tars, None


def split_ids(split: str | None, split_file: str | Path | None, manifest: Path | None) -> frozenset | None:
    """Caption ids of ``split`` from ``split_file`` (or the manifest's), None for every sample."""
    if split is None:
        return None
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)} or None, got {split!r}")
    if split_file is None:
        if manifest is None:
            raise ValueError(f"split {split!r} needs a split file: pass split_file= or a manifest")
        split_file = manifest.parent / json.loads(manifest.read_text(encoding="utf-8"))["split_file"]
    path = Path(split_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found (run `m2m build-manifest`)")
    try:
        return frozenset(json.loads(path.read_text(encoding="utf-8"))[split])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: no {split!r} list of caption ids ({err})") from err


class ReadErrors:
    """Webdataset exception handler that records unreadable shard parts instead of raising."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str]] = []
        self._seen: set[str] = set()

    def __call__(self, exn: Exception) -> bool:
        text = " ".join(str(a) for a in exn.args)
        shard = next((a for a in exn.args if isinstance(a, str) and a.endswith(".tar")), None)
        if shard is None:
            match = re.search(r"name='([^']+)'", text)
            shard = match.group(1) if match else "?"
        if shard not in self._seen:
            self._seen.add(shard)
            self.pending.append((Path(shard).name, f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"))
        return True

    def drain(self) -> list[tuple[str, str]]:
        errors, self.pending = self.pending, []
        return errors


def choose_images(n_total: int, n_images: int | None, seed: int, epoch: int, key: str) -> list[int]:
    """The N image indices a sample contributes this epoch: a seeded subset, in original order."""
    if n_images is None:
        return list(range(n_total))
    return sorted(random.Random(f"{seed}:{epoch}:{key}").sample(range(n_total), n_images))


def checked_samples(src, errors: ReadErrors, ids, n_images, seed, epoch, precomputed=False) -> Iterator[dict]:
    """Raw samples -> {key, shard, caption, attributes, pngs, chosen, encoded, bad, errors}, keeping ``ids``.

    Read errors travel with the next sample so that whoever owns that sample reports them once.
    """
    held = None
    for raw in src:
        key = raw["__key__"]
        if ids is not None and key not in ids:
            continue
        item = {"key": key, "shard": Path(raw["__url__"]).name, "bad": None, "pngs": [], "errors": errors.drain()}
        try:
            meta = json.loads(raw["json"])
            n_total = len(meta["seeds"])
            item["caption"] = raw["txt"].decode("utf-8")
            item["attributes"] = meta.get("attributes", {})
        except (KeyError, ValueError, TypeError) as err:
            item["bad"] = f"incomplete sample (no readable json/txt: {type(err).__name__} {err})"
        else:
            present = [f"{j:03d}.png" for j in range(n_total) if f"{j:03d}.png" in raw]
            if len(present) != n_total:
                item["bad"] = f"incomplete sample ({len(present)} of {n_total} images)"
            elif n_images is not None and n_total < n_images:
                item["bad"] = f"{n_total} images, {n_images} needed"
            elif precomputed and PRECOMPUTED not in raw:
                item["bad"] = f"no {PRECOMPUTED} (generate the shard with --precompute)"
            else:
                chosen = choose_images(n_total, n_images, seed, epoch, key)
                item["chosen"] = chosen
                item["pngs"] = [(f"{j:03d}.png", raw[f"{j:03d}.png"]) for j in chosen]
                item["encoded"] = raw.get(PRECOMPUTED) if precomputed else None
        if held is not None:
            yield held
        held = item
    if held is not None:
        held["errors"] += errors.drain()
        yield held
    elif errors.pending:
        for shard, message in errors.drain():
            warnings.warn(f"{shard}: {message}; no readable sample", CorruptSampleWarning, stacklevel=2)


def owned_blocks(src, start: int, batch_size: int, rank: int, world_size: int) -> Iterator[dict]:
    """Skip the ``start`` samples already consumed; keep this rank's and this worker's blocks."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    for position, item in enumerate(src):
        if position < start:
            continue
        block = (position - start) // batch_size
        if block % world_size != rank or (block // world_size) % n_workers != worker:
            continue
        item["block"] = block // world_size
        yield item


def decode_image(data: bytes, image_size: int | None):
    """PNG bytes -> float tensor (3, H, W) in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return array.permute(2, 0, 1) / 127.5 - 1.0


def load_encoded(data: bytes, chosen: list[int]) -> dict:
    """The precomputed tensors of the chosen images (``latents``, and ``dino`` when stored)."""
    from safetensors.torch import load

    return {name: tensor[chosen] for name, tensor in load(data).items()}


def decode_item(item: dict, image_size: int | None):
    """(images (N, 3, H, W), precomputed tensors or None, None) of a checked sample, or (None, None, why)."""
    import torch

    if item["bad"] is not None:
        return None, None, item["bad"]
    try:
        images = torch.stack([decode_image(data, image_size) for _, data in item["pngs"]])
    except Exception as err:  # any undecodable image skips its sample
        return None, None, f"image does not decode ({type(err).__name__}: {err})"
    if item.get("encoded") is None:
        return images, None, None
    try:
        return images, load_encoded(item["encoded"], item["chosen"]), None
    except Exception as err:
        return None, None, f"{PRECOMPUTED} does not load ({type(err).__name__}: {err})"


def collate_blocks(src, batch_size: int, image_size, start: int, world_size: int) -> Iterator[dict]:
    """Decode each block into one batch; report what was skipped. Empty blocks yield ``images=None``."""
    import torch

    def finish(block, items):
        images, captions, keys, encoded, corrupt, read_errors = [], [], [], [], 0, 0
        for item in items:
            for shard, message in item["errors"]:
                read_errors += 1
                warnings.warn(f"{shard}: {message}; rest of the shard skipped", CorruptSampleWarning, stacklevel=2)
            stack, tensors, bad = decode_item(item, image_size)
            if bad is not None:
                corrupt += 1
                message = f"{item['shard']}: {item['key']}: {bad}; sample skipped"
                warnings.warn(message, CorruptSampleWarning, stacklevel=2)
                continue
            images.append(stack)
            captions.append(item["caption"])
            keys.append(item["key"])
            if tensors is not None:
                encoded.append(tensors)
        if images and len({tuple(x.shape) for x in images}) > 1:
            raise ValueError(f"{items[0]['shard']}: image sets of different sizes in one batch; pass image_size")
        batch = {
            "images": torch.stack(images) if images else None,
            "caption": captions,
            "id": keys,
            "position": start + (block + 1) * batch_size * world_size,
            "corrupt": corrupt,
            "read_errors": read_errors,
        }
        if encoded:
            batch.update({name: torch.stack([e[name] for e in encoded]) for name in encoded[0]})
        return batch

    block, items = None, []
    for item in src:
        if items and item["block"] != block:
            yield finish(block, items)
            items = []
        block = item["block"]
        items.append(item)
    if items:
        yield finish(block, items)


def mis_dataset(
    shards,
    split: str | None = None,
    split_file: str | Path | None = None,
    n_images: int | None = 5,
    image_size: int | None = None,
    seed: int = 0,
    shuffle: int = 1000,
    epoch: int = 0,
    start: int = 0,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    precomputed: bool = False,
):
    """One epoch of MIS as a webdataset pipeline of batches, from stream position ``start``.

    Yields ``{"images": (B, N, 3, H, W) or None, "caption", "id", "position", "corrupt", "read_errors"}``
    where ``position`` is the stream position after the batch; ``shuffle`` is the sample buffer
    (0: shard order, no shuffling). With ``precomputed``, batches also hold the stored ``latents``
    ``(B, N, C, h, w)`` (and ``dino`` ``(B, N, S, D)``) of the same images. Use it through
    ``mis_loader``, which keeps the position.
    """
    import webdataset as wds

    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images: must be positive, got {n_images}")
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"batch_size {batch_size}, rank {rank}, world_size {world_size}: invalid")
    tars, manifest = resolve_mis(shards)
    ids = split_ids(split, split_file, manifest)
    errors = ReadErrors()
    stages = [
        wds.SimpleShardList(tars, seed=f"{seed}:{epoch}:shards" if shuffle else None),
        wds.tarfile_to_samples(handler=errors),
        wds.pipelinefilter(checked_samples)(errors, ids, n_images, seed, epoch, precomputed),
    ]
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=shuffle, seed=f"{seed}:{epoch}:samples"))
    stages += [
        wds.pipelinefilter(owned_blocks)(start, batch_size, rank, world_size),
        wds.pipelinefilter(collate_blocks)(batch_size, image_size, start, world_size),
    ]
    return wds.DataPipeline(*stages)


class MISLoader:
    """Batches ``{"images": (B, N, 3, H, W), "caption": [...], "id": [...]}``, one epoch per iteration,
    resumable: ``state_dict()`` holds the epoch, the samples consumed in it and the skip counts."""

    def __init__(
        self,
        shards,
        split: str | None = None,
        split_file: str | Path | None = None,
        n_images: int | None = 5,
        image_size: int | None = None,
        seed: int = 0,
        shuffle: int = 1000,
        batch_size: int = 8,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        precomputed: bool = False,
    ) -> None:
        tars, manifest = resolve_mis(shards)
        split_ids(split, split_file, manifest)  # bad split arguments fail here, not in a worker
        self.tars = tars
        self.options = dict(
            split=split,
            split_file=split_file,
            n_images=n_images,
            image_size=image_size,
            seed=seed,
            shuffle=shuffle,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            precomputed=precomputed,
        )
        self.manifest = manifest
        self.num_workers = num_workers
        self.epoch = 0
        self.samples = 0
        self.corrupt = 0
        self.read_errors = 0

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        source = str(self.manifest) if self.manifest is not None else self.tars
        dataset = mis_dataset(source, epoch=self.epoch, start=self.samples, **self.options)
        for batch in DataLoader(dataset, batch_size=None, num_workers=self.num_workers):
            self.samples = batch.pop("position")
            self.corrupt += batch.pop("corrupt")
            self.read_errors += batch.pop("read_errors")
            if batch["images"] is not None:
                yield batch
        self.epoch += 1
        self.samples = 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "samples": self.samples,
            "corrupt": self.corrupt,
            "read_errors": self.read_errors,
            "seed": self.options["seed"],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.options["seed"]) != self.options["seed"]:
            raise ValueError(f"loader state: seed {state['seed']} differs from this loader's {self.options['seed']}")
        self.epoch, self.samples = int(state["epoch"]), int(state["samples"])
        self.corrupt, self.read_errors = int(state.get("corrupt", 0)), int(state.get("read_errors", 0))


def mis_loader(shards, batch_size: int = 8, num_workers: int = 0, **options) -> MISLoader:
    """A resumable loader of MIS image sets; ``options`` as for ``mis_dataset``."""
    return MISLoader(shards, batch_size=batch_size, num_workers=num_workers, **options)


def read_mis_sets(manifest_or_dir, split: str | None = "test", limit: int | None = None) -> list[dict]:
    """Whole MIS sets in shard order for evaluation: ``{"id", "caption", "images": [PIL], "attributes"}``."""
    import webdataset as wds
    from PIL import Image

    tars, manifest = resolve_mis(manifest_or_dir)
    ids = split_ids(split, None, manifest)
    errors = ReadErrors()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(tars),
        wds.tarfile_to_samples(handler=errors),
        wds.pipelinefilter(checked_samples)(errors, ids, None, 0, 0),
    )
    sets = []
    for item in pipeline:
        for shard, message in item["errors"]:
            warnings.warn(f"{shard}: {message}; rest of the shard skipped", CorruptSampleWarning, stacklevel=2)
        try:
            if item["bad"] is not None:
                raise ValueError(item["bad"])
            images = []
            for _, data in item["pngs"]:
                with Image.open(io.BytesIO(data)) as image:
                    images.append(image.convert("RGB"))
        except Exception as err:  # a corrupt set is skipped, as in training
            warnings.warn(f"{item['shard']}: {item['key']}: {err}; set skipped", CorruptSampleWarning, stacklevel=2)
            continue
        sets.append({"id": item["key"], "caption": item["caption"], "images": images, "attributes": item["attributes"]})
        if limit is not None and len(sets) >= limit:
            break
    return sets
