"""Every figure kind the report and the searches draw, at 2 and 6 tasks: sized to its content, and no text drawn over
other text (matplotlib's rendered text extents, tick labels outside the axes' range left out as never drawn)."""

import itertools

import matplotlib
import numpy as np
import pytest

from nas_mtl.graph import SKIP, SharingGraph
from nas_mtl.plots import curves_plot, draw_topology, history_plot, pareto_plot
from nas_mtl.search.affinity_plots import plot_affinity, plot_dendrogram

LAYERS = ["stem", "s0.b0", "s0.b1", "s1.b0"]


def _drawn_texts(fig) -> list[tuple[str, object]]:
    """(text, window extent) of every visible text the figure draws (tick labels outside the axes' range are
    never drawn, and left out)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if not lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                    hidden.update((tick.label1, tick.label2))
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible() and t.get_text().strip() and t not in hidden
    ]


def _overlapping_text(fig) -> list[tuple[str, str]]:
    bad = []
    for (a, box_a), (b, box_b) in itertools.combinations(_drawn_texts(fig), 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > 1 and height > 1:  # more than a pixel each way: drawn over each other
            bad.append((a, b))
    return bad


def _outside_the_page(fig) -> list[str]:
    """The texts drawn (partly) outside the figure: cut off in the saved image."""
    width, height = fig.canvas.get_width_height()
    return [
        text
        for text, box in _drawn_texts(fig)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1
    ]


def _figures(n: int):
    rng = np.random.default_rng(n)
    tasks = [f"task_{i}" for i in range(n)]
    policy = SharingGraph(
        tuple(tasks),
        tuple(LAYERS),
        tuple(tuple(SKIP if (layer in (1, 2) and i % 2) else 0 for i in range(n)) for layer in range(4)),
        frozenset({"s0.b0", "s0.b1"}),
    )
    tree = SharingGraph.branched(
        tasks, LAYERS, [[tasks], [tasks[: n // 2], tasks[n // 2 :]], [[t] for t in tasks], [[t] for t in tasks]]
    )
    points = [(f"arm{i}/equal", 1000.0 * (i + 1), float(rng.normal())) for i in range(n)]
    curves = {t: {b: [(e, 0.5 + 0.01 * e, 0.4, 0.7) for e in range(1, 9)] for b in ("equal", "mgda")} for t in tasks}
    yield "affinity heatmap", plot_affinity(rng.normal(size=(n, n)), tasks, "lookahead affinity")
    if n > 2:
        yield "dendrogram", plot_dendrogram(rng.normal(size=(n, n)), tasks)
    yield "tree", draw_topology(tree, "tree")
    yield "hard sharing", draw_topology(SharingGraph.hard_sharing(tasks, LAYERS), "hard sharing")
    yield "policy", draw_topology(policy, "AdaShare policy")
    yield "pareto", pareto_plot(points, "parameters", "Δm (%)", "arms", None, [(y - 1, y + 1) for _, _, y in points])
    yield "curves", curves_plot(curves, {t: "val accuracy" for t in tasks}, "validation curves")
    yield "history", history_plot([(i, float(v)) for i, v in enumerate(rng.normal(size=20))], [], "proxy Δm (%)", "t")


@pytest.mark.parametrize("tasks", [2, 6])
def test_no_figure_draws_text_over_text_and_each_fits_a_page(tasks):
    """Also: no figure warns (matplotlib's "Tight layout not applied" says something is drawn outside the page)."""
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = list(_figures(tasks))
    for kind, fig in figures:
        width, height = fig.get_size_inches()
        assert 2.5 <= width <= 16 and 1.5 <= height <= 12, (kind, width, height)
        assert not _overlapping_text(fig), (kind, _overlapping_text(fig))
        assert not _outside_the_page(fig), (kind, _outside_the_page(fig))
        plt.close(fig)


def test_the_overlap_check_sees_text_drawn_over_text():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another label")
    assert _overlapping_text(fig) == [("one label", "another label")]
    plt.close(fig)


def test_a_policy_that_shares_weights_across_paths_is_drawn_as_a_grid_and_a_tree_as_a_tree():
    """AdaShare policies (one copy of a block run by tasks that skipped different blocks before it) are drawn as the
    task x block policy grid (one row per task, whose tick label is the task), trees as the executor's prefix tree
    (no task tick labels: tasks are written at the leaves)."""
    import matplotlib.pyplot as plt

    figures = dict(_figures(6))
    policy, tree = figures["policy"], figures["tree"]
    assert [t.get_text() for t in policy.axes[0].get_yticklabels()] == [f"task_{i}" for i in range(6)]
    assert not tree.axes[0].get_yticklabels()
    tasks = ("a", "b")
    hard = SharingGraph.branched(tasks, LAYERS, [[tasks]] * 4)
    skip_then_share = SharingGraph(tasks, tuple(LAYERS), ((0, 0), (0, SKIP), (0, 0), (0, 0)), frozenset({"s0.b0"}))
    split = SharingGraph(tasks, tuple(LAYERS), ((0, 0), (0, 1), (0, 1), (0, 1)), frozenset())
    assert [g.is_tree() for g in (hard, skip_then_share, split)] == [True, False, True]
    assert skip_then_share.describe() == "shared weights, per block: stem–s1.b0: all tasks shared; b skips s0.b0"
    for fig in figures.values():
        plt.close(fig)
