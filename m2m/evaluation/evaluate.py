"""Table 1 (paper section 8.4): condition on K preceding images, generate M, score every n-th image.

For each position n = 1..M over all sets: FID (n-th generated images vs the first preceding images), IS,
text-image CLIP (vs the set caption) and image-image CLIP (vs all preceding images); on procedural MIS
sets also the consistency score. Each metric is then reported as mean ± std over the M positions.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from m2m.evaluation import metrics
from m2m.evaluation.features import FeatureNetworks
from m2m.evaluation.image_sets import EvalSet
from m2m.files import atomic_file

# (key, column title) in Table 1's order; the arrow says which way is better.
METRICS = [
    ("fid", "FID ↓"),
    ("inception_score", "IS ↑"),
    ("clip_text_image", "Text-Image CLIP ↑"),
    ("clip_image_image", "Image-Image CLIP ↑"),
    ("consistency", "Consistency ↑"),
]
GRID_ROWS = 8


def preceding_images(sets: list[EvalSet], k: int) -> torch.Tensor:
    """The first ``k`` images of every set as ``(S, k, 3, H, W)`` in ``[-1, 1]``."""
    from m2m.pipeline import from_pil

    return from_pil([s.images[:k] for s in sets])


def generate_continuations(
    pipe,
    preceding: torch.Tensor,
    num_images: int,
    window: int,
    steps: int,
    guidance_scale: float | None,
    seed: int,
    batch_size: int,
    conditions: torch.Tensor | None = None,
    condition_guidance_scale: float | None = None,
) -> torch.Tensor:
    """Auto-regressively generate ``num_images`` after each set's preceding images (eq. 6; eq. 7 with
    task ``conditions`` for all K + M positions).

    ``preceding`` is ``(S, K, 3, H, W)`` in ``[-1, 1]``; returns ``(S, M, 3, H, W)`` in ``[0, 1]``. Set ``i``
    draws its noise from its own generator seeded ``seed + i``, so a set's images depend neither on the
    batch size nor on how many images follow them.
    """
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(preceding))]
    out = []
    for start in tqdm(range(0, len(preceding), batch_size), desc="generating", unit="batch"):
        stop = start + batch_size
        result = pipe(
            preceding[start:stop],
            num_images=num_images,
            window=window,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            conditions=None if conditions is None else conditions[start:stop],
            condition_guidance_scale=condition_guidance_scale,
            generator=generators[start:stop],
            output_type="pt",
            progress=False,
        )
        out.append(result.images.float().cpu())
    return torch.cat(out)


def set_consistency_per_position(generated: torch.Tensor, references: list[dict]) -> list[dict]:
    """The procedural consistency of every n-th generated image ``(S, M, 3, H, W)`` in ``[0, 1]`` with its
    set's attributes: per position, the agreement rate of each attribute and ``score``, their mean."""
    from m2m.evaluation.consistency import set_consistency

    return [set_consistency(list(generated[:, n] * 2 - 1), references) for n in range(generated.shape[1])]


def per_position_metrics(
    preceding: torch.Tensor, generated: torch.Tensor, sets: list[EvalSet], networks: FeatureNetworks
) -> tuple[list[dict], list[str]]:
    """Section 8.4's metrics for each n-th generated image; returns the rows and notes on what was skipped.

    ``preceding`` ``(S, K, 3, H, W)`` and ``generated`` ``(S, M, 3, H, W)`` are in ``[0, 1]``.
    """
    notes = []
    captioned = [i for i, s in enumerate(sets) if s.caption]
    if not captioned:
        notes.append("text-image CLIP skipped: the sets have no captions")
    elif len(captioned) < len(sets):
        notes.append(f"text-image CLIP over the {len(captioned)} of {len(sets)} sets that have a caption")
    with_attributes = all(s.attributes for s in sets)
    if not with_attributes:
        notes.append("consistency skipped: the sets carry no procedural attributes")
    consistency = set_consistency_per_position(generated, [s.attributes for s in sets]) if with_attributes else None
    rows = []
    for n in tqdm(range(generated.shape[1]), desc="scoring positions", unit="position"):
        images = generated[:, n]
        row = {
            "position": n + 1,
            "fid": metrics.frechet_inception_distance(preceding[:, 0], images, networks),
            "inception_score": metrics.inception_score(images, networks),
            "clip_image_image": metrics.clip_image_image(images, preceding, networks),
        }
        if captioned:
            row["clip_text_image"] = metrics.clip_text_image(
                images[captioned], [sets[i].caption for i in captioned], networks
            )
        if consistency is not None:
            row["consistency"] = consistency[n]["score"]
        rows.append(row)
    return rows, notes


def summarise(rows: list[dict]) -> dict:
    """Mean ± std of each metric over the generated positions, as Table 1 reports it (std with ddof=0)."""
    summary = {}
    for key, _ in METRICS:
        values = [row[key] for row in rows if key in row]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    with atomic_file(path) as tmp:
        write(tmp)


def grid_image(preceding: torch.Tensor, generated: torch.Tensor, rows: int = GRID_ROWS) -> Image.Image:
    """Rows = sets, columns = preceding | generated (a wider gap between them); ``[0, 1]`` inputs."""
    from m2m.grid import image_grid
    from m2m.pipeline import to_pil

    sets = to_pil(torch.cat([preceding[:rows], generated[:rows]], dim=1))
    return image_grid(sets, split=preceding.shape[1], scale=max(1, 64 // preceding.shape[-1]))


def markdown_report(report: dict) -> str:
    """Table 1 as markdown, then the per-position table."""
    summary, rows = report["summary"], report["per_position"]
    keys = [(key, title) for key, title in METRICS if key in summary]
    lines = [
        f"# Evaluation: {report['model']['name']}",
        "",
        f"Feature networks: **{report['feature_networks']['label']}**.",
        f"{report['data']['sets_used']} sets from `{report['data']['path']}`; "
        f"{report['settings']['preceding']} preceding images, {report['settings']['generate']} generated, "
        f"{report['settings']['steps']} steps, guidance {report['settings']['guidance_scale']}.",
        "",
        "| Method | " + " | ".join(title for _, title in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
        f"| {report['model']['method']} | "
        + " | ".join(f"{summary[key]['mean']:.2f} ± {summary[key]['std']:.2f}" for key, _ in keys)
        + " |",
        "",
        "Mean ± standard deviation over the generated positions (Table 1 of the paper).",
        "",
        "## Per generated position",
        "",
        "| n | " + " | ".join(title for _, title in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {row['position']} | " + " | ".join(f"{row[key]:.2f}" for key, _ in keys) + " |" for row in rows]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def per_position_csv(rows: list[dict]) -> str:
    """One row per generated position, one column per metric."""
    keys = ["position"] + [key for key, _ in METRICS if key in rows[0]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row[key] for key in keys} for row in rows)
    return buffer.getvalue()


def plot_per_position(rows: list[dict], label: str, path: Path) -> None:
    """One panel per metric against the generated position n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(key, title) for key, title in METRICS if key in rows[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    positions = [row["position"] for row in rows]
    for ax, (key, title) in zip(axes[0], keys):
        ax.plot(positions, [row[key] for row in rows], marker="o")
        ax.set_title(title)
        ax.set_xlabel("n-th generated image")
        ax.set_xticks(positions)
    fig.suptitle(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def write_report(report: dict, preceding: torch.Tensor, generated: torch.Tensor, out: Path) -> None:
    """``metrics.json``, ``metrics.md``, ``per_position.csv``, ``per_position.png`` and ``grid.png``."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        "metrics.json": json.dumps(report, indent=2) + "\n",
        "metrics.md": markdown_report(report),
        "per_position.csv": per_position_csv(report["per_position"]),
    }
    for name, text in texts.items():
        write_atomic(out / name, lambda p, text=text: p.write_text(text, encoding="utf-8"))
    write_atomic(
        out / "per_position.png",
        lambda p: plot_per_position(report["per_position"], report["feature_networks"]["label"], p),
    )
    write_atomic(out / "grid.png", lambda p: grid_image(preceding, generated).save(p, format="PNG"))


def method_name(pipe, model: str | Path) -> str:
    """``M2M-Self (name)`` / ``M2M-DINO (name)`` from the model's context encoder and folder name."""
    return f"{pipe.context_encoder.display_name} ({Path(model).name})"


def evaluate(
    pipe,
    model: str | Path,
    sets: list[EvalSet],
    data: dict,
    networks: FeatureNetworks,
    out: str | Path,
    *,
    preceding: int = 4,
    generate: int = 10,
    window: int | None = None,
    steps: int = 50,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> dict:
    """Generate ``generate`` images after ``preceding`` images of every set, score them (section 8.4),
    write the report files into ``out`` and return the report."""
    if len(sets) < 2:
        raise ValueError(f"{data.get('path')}: {len(sets)} usable set(s); FID needs at least 2")
    if preceding < 1 or generate < 1:
        raise ValueError(f"--preceding and --generate must be >= 1, got {preceding} and {generate}")
    window = preceding if window is None else window
    guidance_scale = pipe.config.guidance_scale if guidance_scale is None else guidance_scale
    start = time.perf_counter()
    context = preceding_images(sets, preceding)
    generated = generate_continuations(pipe, context, generate, window, steps, guidance_scale, seed, batch_size)
    generation_s = time.perf_counter() - start
    context01 = (context + 1) / 2
    rows, notes = per_position_metrics(context01, generated, sets, networks)
    report = {
        "model": {"path": str(model), "name": Path(model).name, "method": method_name(pipe, model)},
        "data": {**data, "sets_used": len(sets)},
        "feature_networks": {"backend": networks.backend, "label": networks.label},
        "settings": {
            "preceding": preceding,
            "generate": generate,
            "window": window,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "batch_size": batch_size,
            "image_size": int(context.shape[-1]),
        },
        "summary": summarise(rows),
        "per_position": rows,
        "notes": notes,
        "seconds": {"generation": generation_s, "total": time.perf_counter() - start},
    }
    write_report(report, context01, generated, Path(out))
    return report
