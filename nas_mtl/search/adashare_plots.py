"""AdaShare policy figures: the blocks x tasks select-probability heatmap (as in Sun et al. 2020, Fig. 3) and
its evolution over the search rounds; the cells are drawn by the shared :func:`nas_mtl.plots.heatmap`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ..plots import heatmap, save_figure


def plot_policy(
    prob: Sequence[Sequence[float]],
    blocks: Sequence[str],
    tasks: Sequence[str],
    path: str | Path,
    chosen: Sequence[Sequence[bool]] | None = None,
) -> Path:
    """Heatmap of select probabilities ``prob[block][task]``; ``chosen`` marks the final policy (✓ select)."""
    text = [
        [f"{p:.2f}" + ("" if chosen is None else " ✓" if chosen[i][j] else " ✗") for j, p in enumerate(row)]
        for i, row in enumerate(prob)
    ]
    title = "AdaShare p(select)" + ("\n✓ = final policy selects" if chosen is not None else "")
    fig = heatmap(prob, blocks, tasks, title, vmin=0.0, vmax=1.0, cell_text=text)
    save_figure(fig, path)
    return Path(path)


def plot_policy_history(
    history: Sequence[Mapping[str, Any]],
    blocks: Sequence[str],
    tasks: Sequence[str],
    path: str | Path,
    max_panels: int = 12,
) -> Path | None:
    """Grid of select-probability heatmaps over the search rounds (at most ``max_panels``, evenly spaced,
    always including the last); None when there is no search round yet."""
    rounds = [h for h in history if h.get("phase") == "search"]
    if not rounds:
        return None
    shown = rounds[:: max(1, -(-len(rounds) // max_panels))]
    if shown[-1] is not rounds[-1]:
        shown = shown[: max_panels - 1] + [rounds[-1]]
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, squeeze=False, figsize=(cols * (1.6 + 0.6 * len(tasks)), rows * (1.0 + 0.4 * len(blocks)))
    )
    for ax in axes.flat[len(shown) :]:
        ax.set_axis_off()
    blank = [[""] * len(tasks) for _ in blocks]
    for ax, record in zip(axes.flat, shown):
        title = f"round {record['round']}  τ={record['tau']:.2f}  active={record['active_blocks']}"
        heatmap(record["select_prob"], blocks, tasks, title, vmin=0.0, vmax=1.0, ax=ax, cell_text=blank)
        ax.title.set_fontsize(8)
    save_figure(fig, path)
    return Path(path)


__all__ = [
    "plot_policy",
    "plot_policy_history",
]
