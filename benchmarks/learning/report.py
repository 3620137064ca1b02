"""The proof-of-learning report: pictures, curves, and the "Proof of learning" section of RESULTS.md."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from learning.common import PRECEDING, precision_stretches
from m2m.files import atomic_file

RESULTS = Path(__file__).resolve().parent.parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
SECTION = "## Proof of learning"
ATTRIBUTES = ("palette", "shape", "texture")
CLEAR_MARGIN = 0.10  # score points above the best of init, ablation and chance that count as learned


def labelled_grid(columns: dict[str, torch.Tensor], image_size: int) -> Image.Image:
    """Column groups side by side (rows = sets), each under its label; tensors ``(S, n, 3, H, W)`` in [0, 1]."""
    from m2m.grid import image_grid
    from m2m.pipeline import to_pil

    scale = max(1, 64 // image_size)
    grids = {label: image_grid(to_pil(images), scale=scale) for label, images in columns.items()}
    gap, header = 12, 16
    width = sum(g.width for g in grids.values()) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, header + max(g.height for g in grids.values())), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for label, grid in grids.items():
        draw.text((x + 2, 2), label, fill="black")
        canvas.paste(grid, (x, header))
        x += grid.width + gap
    return canvas


def save_atomic(image_or_figure, path: Path) -> None:
    with atomic_file(path) as tmp:
        if isinstance(image_or_figure, Image.Image):
            image_or_figure.save(tmp, format="PNG")
        else:
            image_or_figure.savefig(tmp, format="png", dpi=100)


def plot_curves(studies: list[dict]) -> Path:
    """Consistency against K preceding images, along the generated sequence and against s, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_k, along, by_s) = plt.subplots(1, 3, figsize=(14, 3.5))
    for study in studies:
        ks = sorted(study["by_preceding"], key=int)
        scores = [study["by_preceding"][k]["score"] for k in ks]
        by_k.plot([int(k) for k in ks], scores, marker="o", label=study["variant"])
        positions = range(1, len(study["by_position"]) + 1)
        line = along.plot(positions, study["by_position"], marker=".", label=f"{study['variant']} trained")[0]
        init = study["conditions"]["untrained init"]["score"]
        along.axhline(init, color=line.get_color(), ls=":", label=f"{study['variant']} init")
        scales = sorted(study["by_guidance"], key=float)
        by_s.plot([float(s) for s in scales], [study["by_guidance"][s]["score"] for s in scales], marker="o",
                  label=study["variant"])
    chance = studies[0]["conditions"]["chance (two test sets agree)"]["score"]
    for ax in (by_k, along, by_s):
        ax.axhline(chance, color="grey", ls="--", label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("consistency")
    by_k.set_xlabel("preceding images K")
    by_k.set_xticks(range(1, PRECEDING + 1))
    along.set_xlabel(f"n-th generated image (W = {PRECEDING})")
    by_s.set_xlabel("guidance scale s (eq. 6)")
    for ax in (by_k, along, by_s):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / "learning_curves.png"
    save_atomic(fig, path)
    plt.close(fig)
    return path


def run_header(args, argv: list[str] | None) -> dict:
    """What every results JSON starts with: the settings (``argv`` as typed) and the machine."""
    import sys

    def plain(value):
        return str(value) if isinstance(value, Path) else [plain(v) for v in value] if isinstance(value, list) else value

    settings = {k: plain(v) for k, v in vars(args).items()}
    settings["argv"] = " ".join(sys.argv[1:] if argv is None else argv)
    return {"settings": settings, "machine": f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)"}


def save_json(report: dict, name: str) -> Path:
    """Write ``results/<name>`` atomically."""
    import json

    path = RESULTS / name
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def table(rows: dict[str, dict], keys: list[str], first: str) -> list[str]:
    lines = [f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |" for name, row in rows.items()]


def margin(conditions: dict[str, dict]) -> tuple[float, str]:
    """The trained model's score minus the best of every other row (init, ablation, chance), and that row."""
    others = {name: row["score"] for name, row in conditions.items() if name != "trained"}
    best = max(others, key=others.get)
    return conditions["trained"]["score"] - others[best], best


def verdict(studies: list[dict]) -> list[str]:
    """One line per variant, from the numbers: learned when the margin is at least ``CLEAR_MARGIN``."""
    lines = []
    for study in studies:
        gap, best = margin(study["conditions"])
        learned = gap >= CLEAR_MARGIN
        lines.append(
            f"- **{study['variant']}: {'learned' if learned else 'not shown'}** — trained "
            f"{study['conditions']['trained']['score']:.2f}, {gap:+.2f} over the best other row ({best}); "
            f"a clear margin is {CLEAR_MARGIN:.2f}."
        )
    return lines


def study_lines(study: dict, sets: int) -> list[str]:
    t, attributes = study["train"], [*ATTRIBUTES, "score"]
    lines = [
        f"### {study['variant']}",
        "",
        f"Trained {t['steps']} steps of {t['batch_size']} sets x {t['n_images']} images "
        f"({t['wall_time_s'] / 60:.1f} min, {t['s_per_step']:.2f} s/step), final loss {t['final_loss']:.4f}"
        + (f", by `{study['trained_by']}`" if study.get("trained_by") else "")
        + (f" ({stretches})" if (stretches := precision_stretches(t.get("precision_from_step"))) else "")
        + f"; scored on {study['test_sets']} held-out sets x {study['generate']} generated images.",
        "",
        *table(study["conditions"], attributes, "model"),
        "",
        "Against the guidance scale s of eq. 6 (s = 0: the context ignored; s = 1: no guidance):",
        "",
        *table({f"s = {s}": v for s, v in study["by_guidance"].items()}, attributes, "guidance"),
        "",
        "Against the number of preceding images (section 8.2):",
        "",
        *table({f"K = {k}": v for k, v in study["by_preceding"].items()}, attributes, "context"),
        "",
        f"Along a sequence of {len(study['by_position'])} generated images (W = {PRECEDING}): "
        + ", ".join(f"{n + 1}: {v:.2f}" for n, v in enumerate(study["by_position"])) + ".",
        "",
        f"![{study['variant']}: preceding | trained | untrained init | context zeroed](results/{study['picture']})",
        "",
    ]
    return lines


def section(report: dict) -> str:
    """The "Proof of learning" section of RESULTS.md."""
    a = report["settings"]
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_learning.py {a['argv']}` on {report['machine']} "
        f"({report['minutes_total']:.0f} min in all). Tiny M2M (32x32 pixel space) trained on a procedural MIS "
        f"from the shipped sample captions ({report['mis']['train']} training sets, {report['mis']['test']} "
        f"held out). Score: the share of generated images whose palette, shape and texture — read back by the "
        f"procedural generator's own detector — match their set's, on held-out sets, K = {PRECEDING} "
        f"preceding images, DDIM {a['steps']} steps, s = {report['guidance_scale']} (the tiny preset's own).",
        "",
        *verdict(report["studies"]),
        "",
    ]
    for study in report["studies"]:
        lines += study_lines(study, a["sets"])
    lines += ["![consistency against K and along the sequence](results/learning_curves.png)", ""]
    return "\n".join(lines)


def write_section(text: str, heading: str = SECTION) -> None:
    """Replace (or add) the section under ``heading`` of RESULTS.md, leaving other sections alone."""
    old = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else ""
    start = old.find(heading + "\n")
    if start < 0:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text.rstrip("\n") + "\n\n" + (old[end + 1 :] if end >= 0 else "")  # a blank line
    with atomic_file(RESULTS_MD) as tmp:
        tmp.write_text(new.rstrip("\n") + "\n", encoding="utf-8")
