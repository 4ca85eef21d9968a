"""Figures shared by searches and reports (matplotlib, Agg backend; each returns the Figure)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .graph import SKIP, SharingGraph  # noqa: E402


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    path: str | Path | None = None,
    cmap: str = "viridis",
    fmt: str = "{:.2f}",
    vmin: float | None = None,
    vmax: float | None = None,
    ax=None,
    cell_text: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """A labelled matrix with its values written in the cells (``cell_text``: what to write instead)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap: matrix shape {matrix.shape} vs {len(row_labels)} x {len(col_labels)} labels")
    if cell_text is not None and [len(row) for row in cell_text] != [matrix.shape[1]] * matrix.shape[0]:
        raise ValueError(f"heatmap: cell_text must be {matrix.shape[0]} rows of {matrix.shape[1]} strings")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(col_labels), 0.8 + 0.45 * len(row_labels)))
    else:
        fig = ax.figure
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    lo, hi = np.nanmin(matrix), np.nanmax(matrix)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            light = (matrix[i, j] - lo) < 0.5 * (hi - lo) if hi > lo else True
            text = fmt.format(matrix[i, j]) if cell_text is None else cell_text[i][j]
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if light else "black")  # fmt: skip
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _finish(fig, path) if path is not None or ax is None else fig


def draw_topology(graph: SharingGraph, title: str = "", path: str | Path | None = None, ax=None) -> Figure:
    """The computation the executor runs: one box per unique path prefix (layer x), tasks at the right.

    Skipped blocks are drawn as hollow dots; boxes are labelled ``copy`` and coloured by copy, so weight
    sharing across different prefixes (AdaShare policies) shows as equal colours on different rows.
    """
    nodes = graph.prefix_nodes()
    rows: dict[int, float] = {}
    leaf_tasks = [n for n in nodes if n.layer == graph.num_layers - 1]
    order = {t: i for i, t in enumerate(graph.tasks)}
    # y of a node = mean row of the tasks passing through it, nudged apart when two prefixes collide
    used: set[tuple[int, float]] = set()
    for i, n in enumerate(nodes):
        y = float(np.mean([order[t] for t in n.tasks]))
        while (n.layer, round(y, 2)) in used:
            y += 0.3
        used.add((n.layer, round(y, 2)))
        rows[i] = y
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * graph.num_layers, 0.8 + 0.5 * graph.num_tasks))
    else:
        fig = ax.figure
    colors = plt.get_cmap("tab10")
    for i, n in enumerate(nodes):
        x, y = n.layer, rows[i]
        px, py = (n.layer - 1, rows[n.parent]) if n.parent >= 0 else (-1, float(np.mean(list(order.values()))))
        ax.plot([px, x], [py, y], color="0.6", lw=1, zorder=1)
        if n.copy == SKIP:
            ax.scatter([x], [y], s=40, facecolors="white", edgecolors="0.4", zorder=2)
        else:
            ax.scatter([x], [y], s=160, marker="s", color=colors(n.copy % 10), zorder=2)
            ax.text(x, y, str(n.copy), ha="center", va="center", fontsize=7, color="white", zorder=3)
    for n in leaf_tasks:
        for t in n.tasks:
            ax.text(graph.num_layers - 0.6, order[t], t, va="center", fontsize=8)
            ax.plot([n.layer, graph.num_layers - 0.65], [rows[nodes.index(n)], order[t]], color="0.8", lw=0.8)
    ax.scatter([-1], [float(np.mean(list(order.values())))], s=60, color="black")
    ax.set_xticks(range(graph.num_layers), graph.layers, rotation=45, ha="right", fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(-1.5, graph.num_layers + 0.8)
    ax.invert_yaxis()
    ax.set_title(title or "sharing graph")
    return _finish(fig, path) if path is not None or ax is None else fig


def pareto_plot(
    points: Sequence[tuple[str, float, float]],
    xlabel: str = "parameters",
    ylabel: str = "Δm (%)",
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Scatter of (label, x = cost, y = Δm) with the non-dominated front (lower x, higher y) drawn."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, x, y in points:
        ax.scatter([x], [y], s=30)
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front([(x, y) for _, x, y in points])
    if front:
        fx, fy = zip(*sorted(front))
        ax.step(fx, fy, where="post", color="0.3", lw=1, ls="--", label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower or equal x and higher or equal y, one strictly)."""
    return [
        p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1]) for q in points)
    ]


def history_plot(
    complete: Sequence[tuple[int, float]],
    pruned: Sequence[tuple[int, float]] = (),
    ylabel: str = "Δm (%)",
    title: str = "",
    path: str | Path | None = None,
) -> Figure:
    """Search history: objective per finished trial, last reported value of pruned ones, best so far.

    Args:
        complete: ``(trial number, value)`` of finished trials (higher is better).
        pruned: ``(trial number, last intermediate value)`` of pruned trials.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if pruned:
        px, py = zip(*sorted(pruned))
        ax.scatter(px, py, marker="x", s=20, color="0.6", label="pruned (last report)")
    if complete:
        cx, cy = zip(*sorted(complete))
        ax.scatter(cx, cy, s=20, label="finished")
        ax.step(cx, np.maximum.accumulate(cy), where="post", color="C3", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(fontsize=7)
    return _finish(fig, path)
