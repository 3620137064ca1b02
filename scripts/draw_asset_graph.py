"""Draw the Dagster asset graph of this project (docs/img/asset_graph.png) from its definitions."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GROUP_COLOURS = {"data": "#dbeafe", "training": "#fde68a", "evaluation": "#bbf7d0"}


def main(out: Path) -> None:
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    keys = sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    parents = {k: [p for p in graph.get(k).parent_keys if p in keys] for k in keys}
    depth: dict = {}

    def level(k):
        if k not in depth:
            depth[k] = 1 + max((level(p) for p in parents[k]), default=-1)
        return depth[k]

    columns: dict[int, list] = {}
    for k in keys:
        columns.setdefault(level(k), []).append(k)
    pos = {k: (x * 3.2, -y * 1.1) for x, col in columns.items() for y, k in enumerate(col)}
    rows = max(map(len, columns.values()))
    fig, ax = plt.subplots(figsize=(2.2 * len(columns) + 1, 0.8 * rows + 1))
    for k, ps in parents.items():
        for p in ps:
            (x0, y0), (x1, y1) = pos[p], pos[k]
            ax.annotate("", (x1 - 1.1, y1), (x0 + 1.1, y0), arrowprops=dict(arrowstyle="->", color="#555"))
    for k, (x, y) in pos.items():
        node = graph.get(k)
        label = k.to_user_string() + (" [partitioned]" if node.is_partitioned else "")
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc=GROUP_COLOURS.get(node.group_name, "#eee"), ec="#333"))
    ax.set_axis_off()
    ax.set_xlim(-1.6, 3.2 * (len(columns) - 1) + 1.6)
    ax.set_ylim(-1.1 * (rows - 1) - 0.6, 0.6)
    ax.set_title("M2M asset graph (colour = Dagster group: data, training, evaluation)")
    fig.savefig(out, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/asset_graph.png"))
