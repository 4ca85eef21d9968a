"""Figures for task affinity: T x T heatmaps, the task dendrogram, per-layer heatmap grids.

Each function returns a matplotlib Figure and saves (and closes) it as PNG when given ``path``, like the
shared figures of :mod:`nas_mtl.plots`, whose :func:`~nas_mtl.plots.heatmap` draws the cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from ..plots import heatmap, save_figure
from .grouping import check_affinity, task_distance


def _color_range(matrix: np.ndarray) -> tuple[float, float]:
    """Colour limits symmetric about 0 from the off-diagonal entries (the diagonal, self-affinity, would wash
    them out): a diverging scale where 0 is "no effect" whatever the values."""
    off = matrix[~np.eye(len(matrix), dtype=bool)] if len(matrix) > 1 else matrix.ravel()
    bound = float(np.abs(off).max()) or 1.0
    return -bound, bound


def plot_affinity(
    matrix: np.ndarray, tasks: Sequence[str], title: str = "task affinity", path: str | Path | None = None
) -> Figure:
    """Heatmap of a (T, T) affinity with task labels and values (rows: source task i, columns: j)."""
    matrix = check_affinity(matrix, tasks)
    vmin, vmax = _color_range(matrix)
    return heatmap(
        matrix,
        tasks,
        tasks,
        title,
        path,
        cmap="RdBu",
        fmt="{:.2g}",
        vmin=vmin,
        vmax=vmax,
        axis_titles=("target task j", "source task i (its step)"),
    )


def plot_dendrogram(
    affinity: np.ndarray, tasks: Sequence[str], title: str = "task dendrogram", path: str | Path | None = None
) -> Figure:
    """Average-linkage dendrogram of the tasks on :func:`~nas_mtl.search.grouping.task_distance`
    (the clustering behind ``group_tasks(method="agglomerative")``)."""
    if len(tasks) < 3:  # with two tasks the shifted distance is 0 by construction
        raise ValueError(f"dendrogram: need at least 3 tasks, got {list(tasks)}")
    distance = task_distance(check_affinity(affinity, tasks))
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(tasks), 3.5))
    dendrogram(linkage(squareform(distance), "average"), labels=list(tasks), ax=ax, leaf_rotation=45)
    ax.set_ylabel("max(affinity) - affinity")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_layer_affinities(
    layers: np.ndarray,
    layer_names: Sequence[str],
    tasks: Sequence[str],
    title: str = "task similarity per layer",
    path: str | Path | None = None,
) -> Figure:
    """Grid of (T, T) heatmaps, one per layer, from an (L, T, T) array (e.g. RSA or CKA similarity)."""
    layers = np.asarray(layers, dtype=float)
    if layers.shape != (len(layer_names), len(tasks), len(tasks)):
        raise ValueError(f"layers: expected shape ({len(layer_names)}, {len(tasks)}, {len(tasks)}), got {layers.shape}")
    cols = min(4, len(layer_names))
    rows = math.ceil(len(layer_names) / cols)
    size = 1.5 + 0.45 * len(tasks)
    fig = plt.figure(figsize=(cols * (size + 0.8), rows * size + 0.5))
    fig.suptitle(title)
    for n, name in enumerate(layer_names):
        vmin, vmax = _color_range(layers[n])
        heatmap(
            layers[n], tasks, tasks, name, fmt="{:.1f}", vmin=vmin, vmax=vmax, ax=fig.add_subplot(rows, cols, n + 1)
        )
    return save_figure(fig, path)


__all__ = [
    "plot_affinity",
    "plot_dendrogram",
    "plot_layer_affinities",
]
