"""Figures shared by searches and reports (matplotlib, Agg backend; each returns the Figure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from .graph import SKIP, SharingGraph  # noqa: E402
from .runs import replace_atomic  # noqa: E402
from .units import count  # noqa: E402


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Tight layout; written to ``path`` (folders made, 120 dpi) and closed when a path is given."""
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
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
    axis_titles: tuple[str, str] | None = None,
) -> Figure:
    """A labelled matrix with its values written in the cells (``cell_text``: what to write instead), at least
    3.5 x 2.8 inches; ``axis_titles``: (columns, rows)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap: matrix shape {matrix.shape} vs {len(row_labels)} x {len(col_labels)} labels")
    if cell_text is not None and [len(row) for row in cell_text] != [matrix.shape[1]] * matrix.shape[0]:
        raise ValueError(f"heatmap: cell_text must be {matrix.shape[0]} rows of {matrix.shape[1]} strings")
    own = ax is None  # a figure of its own: laid out (and saved) here
    if ax is None:
        size = (max(3.5, 1.6 + 0.6 * len(col_labels)), max(2.8, 1.2 + 0.45 * len(row_labels)))
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    if axis_titles is not None:
        ax.set_xlabel(axis_titles[0], fontsize=8)
        ax.set_ylabel(axis_titles[1], fontsize=8)
    norm = im.norm
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            r, g, b, _ = im.cmap(norm(matrix[i, j]))
            # white text on a dark cell; a NaN cell is left blank (the map's "bad" colour): black text
            light = bool(np.isfinite(matrix[i, j])) and 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            text = fmt.format(matrix[i, j]) if cell_text is None else cell_text[i][j]
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if light else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path) if path is not None or own else fig


def draw_topology(graph: SharingGraph, title: str = "", path: str | Path | None = None, ax=None) -> Figure:
    """The sharing pattern: a tree (one box per unique path prefix the executor runs, layer x, tasks at the right),
    or, where one block copy serves tasks that reached it by different paths (AdaShare policies), the policy grid
    of :func:`draw_policy` (a tree drawing would show those shared weights as branches).

    Skipped blocks are drawn as hollow dots; boxes are labelled ``copy`` and coloured by copy.
    """
    if not graph.is_tree():
        return draw_policy(graph, title, path, ax)
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
    # the tasks' names are written at rows 0..T-1 at the right: the drawing spans them and every node
    top, bottom = min(0.0, *rows.values()), max(graph.num_tasks - 1.0, *rows.values())
    span = bottom - top
    own = ax is None  # a figure of its own: laid out (and saved) here
    if ax is None:  # sized to the graph: a column per block, a row per task (plus room for labels and title)
        label = max((len(t) for t in graph.tasks), default=4)
        fig, ax = plt.subplots(figsize=(1.6 + 0.9 * graph.num_layers + 0.07 * label, 1.5 + 0.5 * max(span, 1.0)))
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
            ax.plot([n.layer, graph.num_layers - 0.65], [rows[nodes.index(n)], order[t]], color="0.8", lw=0.8, zorder=1)
    ax.scatter([-1], [float(np.mean(list(order.values())))], s=60, color="black")
    ax.set_xticks(range(graph.num_layers), graph.layers, rotation=45, ha="right", fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(-1.5, graph.num_layers - 0.5 + 0.1 * max(len(t) for t in graph.tasks))
    # top to bottom in task order, with half a row of room so no box or label touches the frame
    ax.set_ylim(bottom + 0.6, top - 0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or "sharing graph")
    _topology_legend(ax, any(n.copy == SKIP for n in nodes))
    return save_figure(fig, path) if path is not None or own else fig


def draw_policy(graph: SharingGraph, title: str = "", path: str | Path | None = None, ax=None) -> Figure:
    """A select-or-skip policy as AdaShare draws it: a row per task, a column per block; a square where the task
    runs the block (numbered and coloured by copy), a hollow dot where it skips it; a vertical bar joins the
    neighbouring tasks that run one copy; every square with one number in a column is one set of weights, whatever
    its tasks skipped before."""
    tasks, layers = graph.tasks, graph.layers
    own = ax is None  # a figure of its own: laid out (and saved) here
    if ax is None:
        label = max((len(t) for t in tasks), default=4)
        fig, ax = plt.subplots(figsize=(1.8 + 0.07 * label + 0.6 * len(layers), 1.7 + 0.35 * len(tasks)))
    else:
        fig = ax.figure
    colors = plt.get_cmap("tab10")
    for t in range(len(tasks)):
        ax.plot([-0.5, len(layers) - 0.5], [t, t], color="0.85", lw=0.8, zorder=1)
    for x, row in enumerate(graph.assignment):
        for t in range(len(tasks) - 1):  # neighbours running one copy: a bar (never through a task that skips)
            if row[t] != SKIP and row[t] == row[t + 1]:
                ax.plot([x, x], [t, t + 1], color=colors(row[t] % 10), lw=3, alpha=0.45, zorder=1)
        for t, copy in enumerate(row):
            if copy == SKIP:
                ax.scatter([x], [t], s=40, facecolors="white", edgecolors="0.4", zorder=2)
            else:
                ax.scatter([x], [t], s=160, marker="s", color=colors(copy % 10), zorder=2)
                ax.text(x, t, str(copy), ha="center", va="center", fontsize=7, color="white", zorder=3)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(len(tasks) - 0.4, -0.6)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_title(title or "select-or-skip policy")
    _topology_legend(ax, any(c == SKIP for row in graph.assignment for c in row), policy=True)
    return save_figure(fig, path) if path is not None or own else fig


def _topology_legend(ax, skips: bool, policy: bool = False) -> None:
    """What the marks of :func:`draw_topology` mean, below the block names (never over the drawing)."""
    from matplotlib.lines import Line2D

    handles = [] if policy else [Line2D([], [], marker="o", color="black", lw=0, markersize=5, label="input")]
    handles.append(Line2D([], [], marker="s", color=plt.get_cmap("tab10")(0), lw=0, markersize=7, label="block copy N"))
    if skips:
        handles.append(Line2D([], [], marker="o", mfc="white", mec="0.4", lw=0, markersize=5, label="skipped"))
    note = "bar or same number in a column: one set of weights" if policy else "same number and colour: shared weights"
    # anchored below the block names, which are rotated 45°: their height in inches is known from the longest
    labels = max((len(t.get_text()) for t in ax.get_xticklabels()), default=4)
    drop = (0.6 * 7 * labels * 0.71 + 7) / 72 + 0.12
    below = ax.transAxes + ScaledTranslation(0.0, -drop, ax.figure.dpi_scale_trans)
    ax.legend(
        handles=handles,
        title=note,
        title_fontsize=6,
        fontsize=6,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=below,
        ncol=len(handles),
        frameon=False,
    )


def pareto_plot(
    points: Sequence[tuple[str, float, float]],
    xlabel: str = "parameters",
    ylabel: str = "Δm (%)",
    title: str = "",
    path: str | Path | None = None,
    intervals: Sequence[tuple[float, float]] | None = None,
) -> Figure:
    """Scatter of (label, x = cost, y = Δm) with the non-dominated front (lower x, higher y) drawn.

    Points are numbered on the plot and named in a key beside it; points that would cover each
    other (:func:`_clusters`) are dodged sideways by a few points and share one label ("3,4,5"), and
    labels are nudged apart (:func:`_label_offsets`). x is in K/M/G (:func:`nas_mtl.units.count`). ``intervals``:
    (low, high) of y per point (e.g. a 95 % interval over seeds), drawn as vertical bars where finite.
    """
    if intervals is not None and len(intervals) != len(points):
        raise ValueError(f"pareto_plot: {len(intervals)} intervals for {len(points)} points")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
    artists = []
    for i, (label, x, y) in enumerate(points):
        low, high = intervals[i] if intervals is not None else (np.nan, np.nan)
        drawn = [ax.scatter([x], [y], s=30, color=colors(i), zorder=3, label=f"{i + 1}  {label}")]
        if np.isfinite(low) and np.isfinite(high):
            bar = ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="none", ecolor=colors(i), lw=1, capsize=3)
            drawn += [*bar.lines[1], *bar.lines[2]]
        artists.append(drawn)
    front = pareto_front([(x, y) for _, x, y in points])
    if front:
        fx, fy = zip(*sorted(front))
        ax.step(fx, fy, where="post", color="0.3", lw=1, ls="--", label="Pareto front")
    ax.axhline(0.0, color="0.75", lw=0.8, zorder=0)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: count(x)))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())  # frozen: dodging below must not rescale the axes
    pts = ax.transData.transform(np.array([(x, y) for _, x, y in points], dtype=float).reshape(-1, 2))
    pts *= 72.0 / fig.dpi
    groups = _clusters(pts)
    anchors, texts, starts = [], [], []
    for group in groups:
        for k, i in enumerate(group):
            dx = _DODGE * (k - (len(group) - 1) / 2)
            shift = ax.transData + ScaledTranslation(dx / 72.0, 0.0, fig.dpi_scale_trans)
            for artist in artists[i]:
                if isinstance(artist, PathCollection):  # the marker: drawn at an offset
                    artist.set_offset_transform(shift)
                else:
                    artist.set_transform(shift)
        anchors.append(pts[group[0]])
        texts.append(",".join(str(i + 1) for i in group))
        starts.append(_DODGE * (len(group) - 1) / 2 + 3.0)
    for group, text, offset in zip(groups, texts, _label_offsets(anchors, texts, starts)):
        ax.annotate(
            text, (points[group[0]][1], points[group[0]][2]), xytext=offset, textcoords="offset points", fontsize=7
        )
    return save_figure(fig, path)


_DODGE = 7.0
"""Sideways step (points) between markers of :func:`pareto_plot` that would cover each other."""


def _clusters(pts: np.ndarray, radius: float = 6.0) -> list[list[int]]:
    """Indices of display points (in points) grouped with the first point of a group within ``radius``."""
    groups: list[list[int]] = []
    for i, p in enumerate(pts):
        group = next((g for g in groups if np.hypot(*(p - pts[g[0]])) < radius), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    return groups


def _label_offsets(
    anchors: Sequence[Sequence[float]], texts: Sequence[str], starts: Sequence[float], fontsize: float = 7.0
) -> list[tuple[float, float]]:
    """Offsets (points) putting each text right of its anchor (display points) clear of earlier texts.

    A text starts ``starts[i]`` points right of its anchor and 2 points up; its box is estimated as
    0.6·fontsize per character wide and 1.2·fontsize tall, and moved up one box height at a time
    until it overlaps no earlier one.
    """
    placed: list[tuple[float, float, float, float]] = []  # (x0, y0, x1, y1)
    offsets = []
    for (px, py), text, dx in zip(anchors, texts, starts):
        width, height = 0.6 * fontsize * len(text), 1.2 * fontsize
        dy = 2.0
        while any(
            px + dx < x1 and x0 < px + dx + width and py + dy < y1 and y0 < py + dy + height
            for x0, y0, x1, y1 in placed
        ):
            dy += height
        placed.append((px + dx, py + dy, px + dx + width, py + dy + height))
        offsets.append((dx, dy))
    return offsets


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
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


__all__ = [
    "draw_policy",
    "draw_topology",
    "heatmap",
    "history_plot",
    "pareto_front",
    "pareto_plot",
    "save_figure",
]


def curves_plot(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]],
    ylabels: Mapping[str, str],
    title: str = "",
    path: str | Path | None = None,
    xlabel: str = "epoch",
) -> Figure:
    """One panel per task: a line per series (e.g. balancer) of (epoch, mean, low, high) with the band shaded.

    Args:
        curves: ``{task: {series: [(epoch, mean, low, high), ...]}}``.
        ylabels: the y label of each task's panel (e.g. "val accuracy").
    """
    tasks = list(curves)
    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.4), squeeze=False)
    colors = plt.get_cmap("tab10" if max(len(s) for s in curves.values()) <= 10 else "tab20")
    names = list(dict.fromkeys(n for s in curves.values() for n in s))
    for ax, task in zip(axes.flat, tasks):
        for name, points in curves[task].items():
            epoch, mean, low, high = (np.array(v, dtype=float) for v in zip(*points))
            color = colors(names.index(name))
            ax.plot(epoch, mean, color=color, lw=1.2, label=name)
            ax.fill_between(epoch, low, high, color=color, alpha=0.2, lw=0)
        ax.set(title=task, xlabel=xlabel, ylabel=ylabels.get(task, ""))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best", framealpha=0.7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
