"""Task fine-tuning (paper sections 6.2 and 8.5) on the novel-view and procedure fixtures, scored by consistency.

A pre-trained model is fine-tuned on each fixture, then held-out objects / methods are continued under two
protocols, each with the task condition (eq. 7, s_C = 1) and with it ignored (s_C = 0):

- sequence: the targets one after another, each seeing the real context and the images generated before it
  (Fig. 7 and 8). The context alone already hints at what comes next (the next view round the orbit, the
  next fill level).
- jump: every target from the real context alone. Only the task condition says which view or step is
  asked for: a model that follows its condition and one that ignores it part ways here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from learning.common import PRECEDING, mean_rows, pair_chance

PROCEDURE_STEPS = 6  # steps per fixture method
TASKS = {
    # task: (context images, target indices, the attribute the condition decides)
    "nvs": (1, (1, 3, 6, 9), "rotation"),
    "procedure": (2, (2, 3, 4, 5), "progress"),
}
NVS_VIEWS = 12
PROTOCOLS = ("sequence", "jump")


def fixtures(work: Path, task: str, train_items: int, heldout_items: int) -> tuple[Path, Path]:
    """The training and held-out fixtures of ``task`` (held-out objects/methods come from another seed)."""
    from m2m.data.tasks_nvs import write_nvs_fixture
    from m2m.data.tasks_procedure import write_procedure_fixture

    write, extra = (write_nvs_fixture, {}) if task == "nvs" else (write_procedure_fixture, {"n_steps": PROCEDURE_STEPS})
    roots = work / "tasks" / task, work / "tasks" / f"{task}-heldout"
    for root, count, seed in zip(roots, (train_items, heldout_items), (0, 1), strict=True):
        if not root.is_dir() or len(os.listdir(root)) != count:  # absent, or made for other settings
            shutil.rmtree(root, ignore_errors=True)
            write(root, count, seed=seed, **extra)
    return roots


def heldout_items(task: str, heldout: Path, n: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Every image of the first ``n`` held-out items ``(S, V, 3, H, W)``, their conditions, their attributes."""
    from m2m.data.tasks_nvs import NVSDataset
    from m2m.data.tasks_procedure import ProcedureDataset

    if task == "nvs":
        dataset = NVSDataset(heldout, n_images=NVS_VIEWS, sample="first", image_size=image_size)
    else:
        dataset = ProcedureDataset(heldout, n_images=PROCEDURE_STEPS, sample="first", image_size=image_size)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    meta = "object.json" if task == "nvs" else "method.json"
    attributes = [json.loads((heldout / it["id"] / meta).read_text(encoding="utf-8")) for it in items]
    return torch.stack([it["images"] for it in items]), torch.stack([it["cond"] for it in items]), attributes


def continue_items(pipe, images, cond, k: int, targets, protocol: str, s_C: float | None, args) -> torch.Tensor:
    """Images ``(S, T, 3, H, W)`` in [0, 1] at ``targets`` after the first ``k`` images of each item.

    ``s_C`` None: a model without a task condition (none is passed)."""
    from m2m.evaluation.evaluate import generate_continuations

    order = [*range(k), *targets]
    common = dict(window=PRECEDING, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                  batch_size=args.batch_size, condition_guidance_scale=s_C)
    if protocol == "sequence":
        conditions = None if s_C is None else cond[:, order]
        return generate_continuations(pipe, images[:, :k], len(targets), conditions=conditions, **common)
    n_items, n_targets = len(images), len(targets)
    context = images[:, :k].repeat_interleave(n_targets, 0)  # item i, target j at row i * T + j
    conditions = torch.stack([cond[:, [*range(k), t]] for t in targets], 1).flatten(0, 1)
    generated = generate_continuations(pipe, context, 1, conditions=None if s_C is None else conditions, **common)
    return generated[:, 0].unflatten(0, (n_items, n_targets))


def score(task: str, generated, images, cond, attributes, targets) -> dict:
    """Mean task consistency of generated ``(S, T, 3, H, W)`` in [0, 1] over the items."""
    from m2m.evaluation.consistency import nvs_consistency, procedure_consistency

    rows = []
    for i in range(len(generated)):
        views = list(generated[i] * 2 - 1)
        if task == "nvs":
            cameras = cond[i].numpy()
            rows.append(nvs_consistency(views, cameras[list(targets)], list(images[i]), cameras))
        else:
            steps = [int(cond[i, t]) for t in targets]
            rows.append(procedure_consistency(views, steps, PROCEDURE_STEPS, attributes[i]["attributes"]))
    return mean_rows(rows, [k for k in rows[0] if k != "n_images"])


def chance(task: str, attributes: list[dict]) -> dict:
    """Two different held-out items agree on palette (and shape); a uniform guess of the view (1 of 12) or
    the step (1 of 6)."""
    if task == "nvs":
        level = {"object": pair_chance([a["palette"] for a in attributes]), "rotation": 1 / NVS_VIEWS}
    else:
        scenes = [a["attributes"] for a in attributes]
        level = {
            "palette": pair_chance([s["palette"] for s in scenes]),
            "shape": pair_chance([s["shape"] for s in scenes]),
            "progress": 1 / PROCEDURE_STEPS,
        }
    return {**level, "score": float(np.mean(list(level.values())))}
