"""Markers: procedural RGB images with a planted split -- two tasks that need depth and one that conflicts with them.

Each image is a grey background (level 0.4-0.6, a nuisance) with a colour cast, Gaussian pixel noise, and two
square markers (side ``round(3 size / 16)``, at least 2 px): a red one and a blue one, at random rows and at
two different random columns (the blue one is painted last where they overlap). Two latent factors are
drawn per image:

- layout -- where the markers are. Tasks: ``order`` (2 classes: the red marker left or right of the blue one)
  and ``offset`` (the red marker's column minus the blue one's, in image sides). Both relate two objects
  anywhere in the image: a network needs a receptive field spanning the image, that is, depth.
- cast -- a shift of the whole background along the yellow-blue axis :data:`CAST_AXIS` (up to
  :data:`MAX_CAST`). Task: ``tint`` (its amount). A global colour statistic: the stem's per-pixel colour
  features, averaged by the pooled head, already give it.

The planted answer (:data:`PLANTED_GROUPS`, ``info["planted_groups"]``): ``tint`` leaves the other two right
after the stem -- it branches off at the first branchable block (:func:`planted_tree`, in which ``order`` and
``offset`` share every block; :func:`splits_as_planted` also accepts them apart, which changes their error little),
and in an AdaShare policy it skips every skippable block while the relational tasks run them (:func:`planted_policy`,
scored by :func:`skips_as_planted`). The cast moves the background towards or away from the blue marker's colour,
and the relational tasks' blocks, which find the markers against the background, serve ``tint`` badly: in a
hard-shared network ``tint``'s gradient on the shared blocks points against theirs (gradient cosine of ``tint``
with ``order`` and ``offset`` below zero), and retrained from scratch hard sharing has about twice the planted
tree's ``tint`` error and 1.15-1.5 x its ``offset`` error. Unlike shapes, whose planted answer is a grouping of
independent families, the answer here is where to split: sharing itself is harmful from a known block on. The
measured sizes of these effects and each search method's hit rates are in tests/test_data_markers.py and
``benchmarks/planted.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np

from ..graph import SharingGraph
from ..space import SearchSpace
from ..tasks import ClassificationTask, RegressionTask, TaskSpec
from .base import MultiTaskData, check_ints, procedural_splits, register_dataset, select_tasks

SPLITS = ("train", "val", "test")
TASKS: tuple[TaskSpec, ...] = (
    ClassificationTask("order", 2),
    RegressionTask("offset"),
    RegressionTask("tint"),
)
PLANTED_GROUPS = (("order", "offset"), ("tint",))
"""The tasks that share every block, and the one that branches off after the stem."""
SHALLOW = ("tint",)
"""Tasks the stem serves: they branch off at the first branchable block and skip every skippable one."""
SMALL_BUDGET_ADASHARE = MappingProxyType(
    dict(
        warmup_epochs=2,
        curriculum=False,
        policy_lr=0.05,
        tau_decay=0.8,
        weight_steps=8,
        policy_steps=8,
        sharing=0.0,
        sparsity=0.05,
        final="argmax",
    )
)
"""AdaShareConfig options that find the planted skips at a small budget (train: 10 epochs, batch 64, lr 3e-3 on
1024 images): 2 warm-up epochs, then 10 rounds of 8 weight + 8 policy steps; measured 5 of seeds 0-4
(tests/test_data_markers.py, benchmarks/planted.py).

Against the reference: λ_sharing 0 (its sharing term pulls every task's decisions towards the others', the
opposite of what a planted split needs: at 0.05 every task took the same decisions, 0 of 5 seeds in
benchmarks/results/planted.json), no curriculum and a faster policy (lr 0.05, temperature x0.8 per round: 10
rounds, not hundreds), and the argmax policy (the learned decision itself rather than the best of 8 draws)."""
STANDARDIZED = ("offset", "tint")
"""Regression targets standardised with train statistics (``info["target_scaling"]`` undoes it)."""
CLASS_NAMES = {"order": ("red left", "red right")}
CAST_AXIS = np.array([1.0, 1.0, -1.0], dtype=np.float32)
"""RGB direction of the colour cast (towards yellow for a positive ``tint``, towards blue for a negative one)."""
MAX_CAST = 0.2
"""The cast is uniform in [-MAX_CAST, MAX_CAST] (pixel values in [0, 1] before standardisation)."""
NOISE_STD = 0.05
"""Std of the Gaussian pixel noise."""
RED = np.array([1.0, 0.0, 0.0], dtype=np.float32)
BLUE = np.array([0.0, 0.0, 1.0], dtype=np.float32)


def marker_side(size: int) -> int:
    """Side in pixels of the square markers of ``size``-pixel images."""
    return max(2, round(3 * size / 16))


def _generate(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (N, 3, S, S) in [0, 1] and their raw targets."""
    side = marker_side(size)
    grid = np.arange(size)
    grey = rng.uniform(0.4, 0.6, n).astype(np.float32)  # nuisance
    cast = rng.uniform(-MAX_CAST, MAX_CAST, n).astype(np.float32)
    image = (grey[:, None] + cast[:, None] * CAST_AXIS)[:, :, None, None] + NOISE_STD * rng.standard_normal(
        (n, 3, size, size), dtype=np.float32
    )
    # two different columns (red, blue) out of the size - side + 1 a marker fits in; rows independent
    columns = np.argsort(rng.random((n, size - side + 1)), axis=1)[:, :2]
    rows = rng.integers(0, size - side + 1, (n, 2))
    for k, colour in enumerate((RED, BLUE)):
        inside_x = (grid >= columns[:, k, None]) & (grid < columns[:, k, None] + side)
        inside_y = (grid >= rows[:, k, None]) & (grid < rows[:, k, None] + side)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        image = np.where(inside[:, None], colour[None, :, None, None], image)
    dx = columns[:, 0] - columns[:, 1]
    targets = {
        "order": (dx > 0).astype(np.int64),
        "offset": (dx / size).astype(np.float64)[:, None],
        "tint": cast.astype(np.float64)[:, None],
    }
    return np.clip(image, 0, 1).astype(np.float32), targets


@register_dataset("markers")
def markers(
    n_train: int = 2000,
    n_val: int = 500,
    n_test: int = 500,
    size: int = 16,
    seed: int = 0,
    tasks: str | Sequence[str] | None = None,
) -> MultiTaskData:
    """Procedural multi-task images (3, size, size) with a planted split (see the module doc).

    Args:
        tasks: a subset of task names (list or comma-separated string); None = all three.

    Images are standardised per channel with train statistics, and so are ``offset`` (raw: column difference
    in image sides) and ``tint`` (raw: the cast amount); ``info["target_scaling"]`` holds their mean / std.
    """
    check_ints("markers", n_train=(n_train, 2), n_val=(n_val, 1), n_test=(n_test, 1), size=(size, 8))
    specs = select_tasks("markers", TASKS, tasks)
    made = [_generate(n, size, np.random.default_rng([seed, k])) for k, n in enumerate((n_train, n_val, n_test))]
    splits, scaling, normalization = procedural_splits(made, specs, STANDARDIZED)
    chosen = [t.name for t in specs]
    return MultiTaskData(
        name="markers",
        tasks=specs,
        input_shape=(3, size, size),
        **splits,
        info={
            "planted_groups": planted_groups(chosen),
            "shallow_tasks": [t for t in SHALLOW if t in chosen],
            "class_names": {k: list(v) for k, v in CLASS_NAMES.items() if k in chosen},
            "target_scaling": scaling,
            "normalization": normalization,
        },
    )


# ---------------------------------------------------------------------- the planted answer
def planted_groups(tasks: Sequence[str]) -> list[list[str]]:
    """:data:`PLANTED_GROUPS` restricted to ``tasks`` (empty groups dropped)."""
    return [[t for t in g if t in tasks] for g in PLANTED_GROUPS if set(tasks).intersection(g)]


def _check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in {s.name for s in TASKS}]
    if unknown:
        raise ValueError(f"markers: unknown task(s) {unknown}; known: {[s.name for s in TASKS]}")


def first_branchable(space: SearchSpace) -> int:
    """Index of the layer where the planted split happens: the space's first branchable layer."""
    if not space.branchable:
        raise ValueError(f"search space {space.name!r} has no branchable layer: the planted split has no place")
    return space.layers.index(space.branchable[0])


def planted_tree(tasks: Sequence[str], space: SearchSpace) -> SharingGraph:
    """The planted tree of ``space``: every task shares the layers before the first branchable one; from there
    on each of :func:`planted_groups` has its own branch."""
    _check_tasks(tasks)
    return SharingGraph.from_groups(
        tasks, space.layers, planted_groups(tasks), first_branchable(space), space.skippable
    ).with_meta(name="markers:planted-tree")


def planted_policy(tasks: Sequence[str], space: SearchSpace) -> SharingGraph:
    """The planted AdaShare policy of ``space``: the :data:`SHALLOW` tasks skip every skippable block, the
    others run every block."""
    _check_tasks(tasks)
    if not space.skippable:
        raise ValueError(f"search space {space.name!r} has no skippable layer: the planted skips have no place")
    select = [[layer not in space.skippable or t not in SHALLOW for t in tasks] for layer in space.layers]
    return SharingGraph.from_policy(tasks, space.layers, select, space.skippable).with_meta(
        name="markers:planted-policy"
    )


def splits_as_planted(graph: SharingGraph, space: SearchSpace) -> bool:
    """True when every :data:`SHALLOW` task of ``graph`` computes apart from all other tasks from the first
    branchable layer of ``space`` on: the planted split, whether or not the relational tasks share."""
    alone = {g[0] for g in graph.partition(first_branchable(space)) if len(g) == 1}
    return all(t in alone for t in graph.tasks if t in SHALLOW) and len(graph.tasks) > 1


def skips_as_planted(graph: SharingGraph) -> bool:
    """True when every :data:`SHALLOW` task of ``graph`` skips every skippable block and every other task runs
    at least one of them (a policy in which every task skips everything is no answer)."""
    skippable = [i for i, name in enumerate(graph.layers) if name in graph.skippable]
    if not skippable:
        return False
    skips = {t: [graph.path(t)[i] < 0 for i in skippable] for t in graph.tasks}
    return all(all(s) if t in SHALLOW else not all(s) for t, s in skips.items())


__all__ = [
    "BLUE",
    "SMALL_BUDGET_ADASHARE",
    "CAST_AXIS",
    "CLASS_NAMES",
    "MAX_CAST",
    "NOISE_STD",
    "PLANTED_GROUPS",
    "RED",
    "SHALLOW",
    "SPLITS",
    "STANDARDIZED",
    "TASKS",
    "first_branchable",
    "marker_side",
    "markers",
    "planted_groups",
    "planted_policy",
    "planted_tree",
    "skips_as_planted",
    "splits_as_planted",
]
