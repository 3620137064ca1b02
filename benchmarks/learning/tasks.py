"""Task fine-tuning (paper section 6.2) on the novel-view and procedure fixtures, scored by consistency.

Each pre-trained model is fine-tuned on both fixtures, then scored on held-out objects / methods with its
condition (eq. 7, s_C = 1), with the condition ignored (s_C = 0), without fine-tuning, and by chance.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from learning.common import PRECEDING, load, mean_rows, pair_chance, train_for

PROCEDURE_STEPS = 6  # steps per fixture method; the first 2 are the context
NVS_VIEWS = 12


def fixtures(work: Path, args) -> dict:
    """Training and held-out fixtures for both tasks (held-out objects/methods come from another seed)."""
    from m2m.data.tasks_nvs import write_nvs_fixture
    from m2m.data.tasks_procedure import write_procedure_fixture

    roots = {}
    for task, write, extra in (
        ("nvs", write_nvs_fixture, {}),
        ("procedure", write_procedure_fixture, {"n_steps": PROCEDURE_STEPS}),
    ):
        roots[task] = work / "tasks" / task, work / "tasks" / f"{task}-heldout"
        for root, count, seed in zip(roots[task], (args.task_items, args.sets), (0, 1), strict=True):
            if not root.is_dir() or len(os.listdir(root)) != count:  # absent, or made for other settings
                shutil.rmtree(root, ignore_errors=True)
                write(root, count, seed=seed, **extra)
    return roots


def nvs_scores(pipe, heldout: Path, args, s_C: float | None) -> dict:
    """Novel views from one view (Fig. 7): views 1..M generated after view 0, given every camera."""
    from m2m.data.tasks_nvs import NVSDataset
    from m2m.evaluation.consistency import nvs_consistency
    from m2m.evaluation.evaluate import generate_continuations

    dataset = NVSDataset(heldout, n_images=NVS_VIEWS, sample="first", image_size=pipe.image_size)
    items = [dataset[i] for i in range(args.sets)]
    views, cameras = torch.stack([it["images"] for it in items]), torch.stack([it["cond"] for it in items])
    m = args.task_generate
    conditions = None if s_C is None else cameras[:, : 1 + m]
    generated = generate_continuations(
        pipe, views[:, :1], m, PRECEDING, args.steps, args.guidance_scale, args.seed, args.batch_size,
        conditions=conditions, condition_guidance_scale=s_C,
    )
    rows = [
        nvs_consistency(list(generated[i] * 2 - 1), cameras[i, 1 : 1 + m].numpy(), list(views[i]), cameras[i].numpy())
        for i in range(len(items))
    ]
    return mean_rows(rows, ["object", "rotation", "score"])


def procedure_scores(pipe, heldout: Path, args, s_C: float | None) -> dict:
    """Future steps (Fig. 8): steps 3..6 of each method generated after its first two."""
    from m2m.data.tasks_procedure import ProcedureDataset
    from m2m.evaluation.consistency import procedure_consistency
    from m2m.evaluation.evaluate import generate_continuations

    dataset = ProcedureDataset(heldout, n_images=PROCEDURE_STEPS, sample="first", image_size=pipe.image_size)
    items = [dataset[i] for i in range(args.sets)]
    steps, indices = torch.stack([it["images"] for it in items]), torch.stack([it["cond"] for it in items])
    attributes = [json.loads((heldout / it["id"] / "method.json").read_text())["attributes"] for it in items]
    k = 2
    generated = generate_continuations(
        pipe, steps[:, :k], PROCEDURE_STEPS - k, PRECEDING, args.steps, args.guidance_scale, args.seed,
        args.batch_size, conditions=None if s_C is None else indices, condition_guidance_scale=s_C,
    )
    rows = [
        procedure_consistency(list(generated[i] * 2 - 1), indices[i, k:].tolist(), PROCEDURE_STEPS, attributes[i])
        for i in range(len(items))
    ]
    return mean_rows(rows, ["palette", "shape", "progress", "score"])


def task_chance(task: str, heldout: Path, args) -> dict:
    """Chance per task score: two different held-out items agree on palette/shape; a uniform view (1 of 12)
    or step (1 of 6) guess."""
    if task == "nvs":
        objects = [json.loads((heldout / d / "object.json").read_text()) for d in sorted(os.listdir(heldout))]
        palettes = [o["palette"] for o in objects]
        chance = {"object": pair_chance(palettes[: args.sets]), "rotation": 1 / NVS_VIEWS}
    else:
        methods = [json.loads((heldout / d / "method.json").read_text()) for d in sorted(os.listdir(heldout))]
        attributes = [m["attributes"] for m in methods]
        attributes = attributes[: args.sets]
        chance = {
            "palette": pair_chance([a["palette"] for a in attributes]),
            "shape": pair_chance([a["shape"] for a in attributes]),
            "progress": 1 / PROCEDURE_STEPS,
        }
    return {**chance, "score": float(np.mean(list(chance.values())))}


def task_study(variant: str, pretrained: Path, work: Path, args) -> dict:
    """Fine-tune the pre-trained model on each task and score it with and without its condition."""
    from m2m.training.config import TrainConfig

    scorers = {"nvs": nvs_scores, "procedure": procedure_scores}
    results = {}
    for task, (train_root, heldout) in fixtures(work, args).items():
        config = TrainConfig(
            out=work / f"m2m-{variant}-{task}", variant=variant, data=None, init=pretrained, task=task,
            task_data=train_root, seed=args.seed, log_every=50,
        )
        train_metrics = train_for(config, args.task_minutes, reuse=args.reuse)
        tuned, score = load(config.out), scorers[task]
        results[task] = {
            "steps": train_metrics["steps"],
            "fine-tuned": score(tuned, heldout, args, 1.0),
            "fine-tuned, condition ignored (s_C = 0)": score(tuned, heldout, args, 0.0),
            "pre-trained, not fine-tuned": score(load(pretrained), heldout, args, None),
            "chance": task_chance(task, heldout, args),
        }
    return results
