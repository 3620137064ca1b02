"""Training data for the loop: endless, resumable batches of MIS sets or task items, and held-out sets.

Both streams restart exactly where a checkpoint left them (``state_dict`` / ``load_state_dict``), so a
resumed run reads the same sets an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import torch
from accelerate.logging import get_logger

from m2m.training.config import TrainConfig

logger = get_logger(__name__)


class _Seeded(torch.utils.data.Dataset):
    """Reads item ``index`` with torch's RNG seeded per draw, so the random images drawn survive a resume."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class TaskBatches:
    """Endless micro-batches of a task dataset, resumable: ``state_dict()`` is the batches consumed.

    The item stream is the concatenation of seeded permutations, one per epoch; process ``rank`` takes
    every ``world_size``-th block of ``batch_size`` items.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 0):
        self.dataset, self.batch_size, self.seed = _Seeded(dataset), batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.batches = 0

    def _keys(self, first_batch: int):
        n, perm, perm_epoch = len(self.dataset), None, -1
        batch = first_batch
        while True:
            start = (batch * self.world_size + self.rank) * self.batch_size
            for position in range(start, start + self.batch_size):
                epoch, i = divmod(position, n)
                if epoch != perm_epoch:
                    perm, perm_epoch = random.Random(f"{self.seed}:{epoch}").sample(range(n), n), epoch
                yield perm[i], random.Random(f"{self.seed}:item:{position}").getrandbits(63)
            batch += 1

    def __iter__(self):
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self._keys(self.batches), num_workers=self.num_workers
        )
        for batch in loader:
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        """This process's batches and ``items``, the position in the item stream of all processes together."""
        return {"batches": self.batches, "items": self.batches * self.world_size * self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``items`` (from a checkpoint of any number of processes and batch split), or at
        ``batches`` of a position saved before ``items`` was."""
        if state.get("seed") != self.seed:
            raise ValueError(f"task data position: made with seed {state.get('seed')}, this run has {self.seed}")
        if "items" not in state:
            self.batches = int(state["batches"])
            return
        per_round = self.world_size * self.batch_size
        if int(state["items"]) % per_round:
            raise ValueError(
                f"task data position: {state['items']} items read, not a whole number of rounds of "
                f"{self.world_size} processes x {self.batch_size} items"
            )
        self.batches = int(state["items"]) // per_round


class Endless:
    """Epoch after epoch of a resumable one-epoch-per-iteration loader (``MISLoader``)."""

    def __init__(self, loader, source: Path):
        self.loader, self.source = loader, source

    def __iter__(self):
        empty_passes = 0
        while empty_passes < 2:  # a resumed loader may start at the very end of an epoch
            empty_passes += 1
            for batch in self.loader:
                empty_passes = 0
                yield batch
        raise ValueError(f"{self.source}: no readable training sets")

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def _task_dataset(cfg: TrainConfig, n_images: int, sample: str, image_size: int):
    from m2m.data.tasks_nvs import NVSDataset
    from m2m.data.tasks_procedure import ProcedureDataset

    cls = NVSDataset if cfg.task == "nvs" else ProcedureDataset
    return cls(cfg.task_data, n_images=n_images, sample=sample, image_size=image_size)


def stored_encodings(cfg: TrainConfig, pipe) -> tuple[str, ...]:
    """The encodings training reads from the MIS shards instead of computing them: ``("latents",)`` or
    ``("latents", "dino")`` (an external context encoder's ``stored_as``), or ``()`` (with one log line
    saying why) when the shards do not carry them at the model's sizes. Only a latent-space model (a VAE)
    has anything to skip."""
    if pipe.vae is None:
        return ()
    from m2m.data.loader import resolve_mis
    from m2m.data.shards import read_sidecar

    encoder = pipe.context_encoder

    _, manifest = resolve_mis(cfg.data)
    settings = []
    if manifest is not None:
        index = json.loads(manifest.read_text(encoding="utf-8"))
        folder = manifest.parent / index["shards_dir"]
        settings = [(read_sidecar(folder / shard["name"]) or {}).get("settings", {}) for shard in index["shards"]]
    why = None
    if not settings or any("precompute" not in s for s in settings):
        why = "the shards carry no precomputed latents (generate-mis --precompute)"
    elif any(s.get("image_size") != pipe.image_size for s in settings):
        why = f"the shards' latents are of another image size than the model's {pipe.image_size} px"
    if why is not None:
        also = f" and {encoder.display_name}'s context encoder" if encoder.external else ""
        logger.info(f"{why}: encoding every set with the VAE{also}")
        return ()
    if not encoder.external:
        return ("latents",)
    name, size = encoder.stored_as, pipe.unet.config.dino_image_size
    if name is not None and all(
        s["precompute"].get(name) and s["precompute"].get(f"{name}_size") == size for s in settings
    ):
        return ("latents", name)
    logger.info(f"the shards carry no features of {encoder.display_name}'s context encoder at {size} px: "
                "encoding every set with it")
    return ("latents",)


def training_data(cfg: TrainConfig, image_size: int, rank: int, world_size: int, precomputed: bool = False):
    """(endless resumable batches of ``micro_batch_size`` sets, optimizer steps in one epoch); with
    ``precomputed``, MIS batches also hold the stored ``latents`` (and ``dino``) of their images."""
    if cfg.task is not None:
        dataset = _task_dataset(cfg, cfg.n_images, cfg.task_sample, image_size)
        batches = TaskBatches(dataset, cfg.micro_batch_size, cfg.seed, rank, world_size, cfg.num_workers)
        return batches, math.ceil(len(dataset) / cfg.batch_size)
    from m2m.data.loader import mis_loader

    loader = mis_loader(
        cfg.data, split="train", n_images=cfg.n_images, image_size=image_size, seed=cfg.seed,
        batch_size=cfg.micro_batch_size, num_workers=cfg.num_workers, rank=rank, world_size=world_size,
        precomputed=precomputed,
    )
    manifest = json.loads(loader.manifest.read_text(encoding="utf-8"))
    n_train = int(manifest["split"]["train"])
    if n_train == 0:
        raise ValueError(f"{loader.manifest}: the train split is empty")
    return Endless(loader, cfg.data), math.ceil(n_train / cfg.batch_size)


def check_mis(cfg: TrainConfig) -> dict:
    """Before training: every shard matches the manifest's sha256 and holds sets of at least N images."""
    from m2m.data.loader import resolve_mis
    from m2m.data.shards import verify_shards

    _, manifest_path = resolve_mis(cfg.data)
    if manifest_path is None:
        raise FileNotFoundError(f"--data {cfg.data}: no manifest.json (run `m2m build-manifest`)")
    manifest = verify_shards(manifest_path)
    if manifest["images_per_set"] is not None and cfg.n_images > manifest["images_per_set"]:
        raise ValueError(f"--n-images: {cfg.n_images} images per set, but the sets of {cfg.data} have "
                         f"{manifest['images_per_set']}, got {cfg.n_images}")
    return manifest


def data_digest(cfg: TrainConfig) -> str:
    """What a checkpoint's data was, for ``--resume``: the MIS manifest's sha256 (it lists every shard's),
    or a task folder's file names and sizes; plus the ``--init`` model's weights."""
    digest = hashlib.sha256()
    if cfg.task is None:
        from m2m.data.loader import resolve_mis

        manifest = resolve_mis(cfg.data)[1]
        digest.update(manifest.read_bytes() if manifest is not None else str(cfg.data).encode())
    else:
        root = Path(cfg.task_data)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    if cfg.init is not None:
        from m2m.data.shards import sha256_file

        for path in sorted(Path(cfg.init).rglob("*.safetensors")):
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def heldout_sets(cfg: TrainConfig, image_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sets for ``samples.png``: ``(S, K, 3, H, W)`` preceding images and task conditions for K + M images.

    MIS: the first sets of the test split (the train split when the test split is empty). Task data has
    no split; its first items from their first image are shown.
    """
    k, m = cfg.sample_context, cfg.sample_generate
    if cfg.task is not None:
        dataset = _task_dataset(cfg, k + m, "first", image_size)
        items = [dataset[i] for i in range(min(cfg.sample_sets, len(dataset)))]
        return torch.stack([it["images"][:k] for it in items]), torch.stack([it["cond"] for it in items])
    from m2m.data.loader import read_mis_sets
    from m2m.pipeline import from_pil

    sets = read_mis_sets(cfg.data, "test", limit=cfg.sample_sets)
    sets = sets or read_mis_sets(cfg.data, "train", limit=cfg.sample_sets)
    if not sets:
        raise ValueError(f"{cfg.data}: no readable sets to sample from")
    if len(sets[0]["images"]) < k:
        n = len(sets[0]["images"])
        raise ValueError(f"--sample-context: {k} preceding images, but the sets of {cfg.data} have {n}")
    rows = [[im.resize((image_size, image_size)) for im in s["images"][:k]] for s in sets]
    return from_pil(rows), None
