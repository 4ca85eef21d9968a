"""From task affinities to task groups, and from layer-wise task dissimilarities to a branched tree.

- :func:`group_tasks`: partition T tasks into k groups maximising TAG's within-group affinity score,
  exactly (enumeration of set partitions, the non-overlapping variant of TAG's group selection;
  Fifty et al. 2021, Sec. 3.2) or by clustering (scikit-learn agglomerative / spectral) for many tasks.
- :func:`layerwise_tree`: the branched tree of Vandenhende et al. ("Branched Multi-Task Networks:
  Deciding What Layers To Share", BMVC 2020, Sec. 3.3) minimising the summed task-clustering cost over
  layers under a parameter budget.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..graph import SharingGraph, set_partitions
from ..space import SearchSpace

GROUPING_METHODS = ("auto", "exact", "agglomerative", "spectral")
EXACT_MAX_TASKS = 10
"""``group_tasks(method="auto")`` enumerates partitions up to this many tasks (Bell(10) = 115,975)."""
TREE_EXACT_MAX_TASKS = 7
"""``layerwise_tree`` considers every refinement of every branch up to this many tasks."""

Groups = tuple[tuple[str, ...], ...]
Partition = tuple[tuple[int, ...], ...]
_Entry = tuple[int, float, tuple[Partition, ...]]
"""A partial tree: (backbone params so far, clustering cost so far, partition per layer so far)."""


# ---------------------------------------------------------------------- T x T affinity -> groups
def check_affinity(affinity: np.ndarray | Sequence[Sequence[float]], tasks: Sequence[str]) -> np.ndarray:
    """``affinity`` as a finite (T, T) float array; errors name the expected shape."""
    a = np.asarray(affinity, dtype=float)
    t = len(tasks)
    if a.shape != (t, t):
        raise ValueError(f"affinity: expected a {t}x{t} matrix (one row per task {list(tasks)}), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("affinity: matrix has non-finite entries")
    return a


def task_distance(affinity: np.ndarray) -> np.ndarray:
    """Symmetric task dissimilarity for clustering: max(S) - S off the diagonal, 0 on it, where
    S = (A + Aᵀ) / 2 (average linkage and dendrogram shapes do not depend on the shift)."""
    s = (affinity + affinity.T) / 2
    off = ~np.eye(len(s), dtype=bool)
    distance = (s[off].max() if off.any() else 0.0) - s
    distance[~off] = 0.0
    return distance


def partition_score(affinity: np.ndarray, partition: Partition) -> float:
    """TAG's grouping score restricted to partitions (Fifty et al. 2021, Sec. 3.2): Σ over tasks i of the
    mean affinity ``affinity[j, i]`` onto i from the other members j of its group (0 for a task alone).

    The mean (not the sum) keeps large groups from winning just by having more pairs.
    """
    return sum(_group_score(affinity, g) for g in partition)


def _group_score(affinity: np.ndarray, group: tuple[int, ...]) -> float:
    if len(group) < 2:
        return 0.0
    block = affinity[np.ix_(group, group)]
    return float((block.sum() - np.trace(block)) / (len(group) - 1))


def check_grouping_args(num_tasks: int, k: int | None, method: str) -> None:
    """ValueError naming ``k`` or ``method`` unless :func:`group_tasks` accepts them for ``num_tasks`` tasks."""
    if method not in GROUPING_METHODS:
        raise ValueError(f"grouping: method must be one of {list(GROUPING_METHODS)}, got {method!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_tasks):
        raise ValueError(f"grouping: k must be an integer in 1..{num_tasks} (number of tasks) or None, got {k!r}")


def check_params_budget(params_budget: float) -> None:
    """ValueError naming ``params_budget`` unless :func:`layerwise_tree` accepts it."""
    if isinstance(params_budget, bool) or not isinstance(params_budget, (int, float)) or params_budget < 1:
        raise ValueError(
            f"params_budget: expected a number >= 1 (backbone size in units of one backbone), got {params_budget!r}"
        )


def group_tasks(
    affinity: np.ndarray | Sequence[Sequence[float]],
    tasks: Sequence[str],
    k: int | None = None,
    method: str = "auto",
) -> Groups:
    """Partition ``tasks`` into ``k`` groups with the best TAG score (:func:`partition_score`).

    This is the non-overlapping variant of TAG's network selection (TAG also allows a task in several
    groups, each task then served by its best group); the diagonal (self-affinity) is ignored.

    Args:
        affinity: (T, T) task affinity, ``affinity[i, j]`` = effect of i on j, higher = better together.
        k: number of groups; None picks the number of groups with the best score.
        method: "exact" scores every set partition (T <= EXACT_MAX_TASKS); "agglomerative" (average
            linkage on :func:`task_distance`) and "spectral" (on the shifted symmetric affinity) are
            scikit-learn clusterings for many tasks, with k=None scoring k = 1..T; "auto" = exact when
            T <= EXACT_MAX_TASKS, else agglomerative.

    Returns:
        groups of task names, each in task order, groups ordered by their first task.
    """
    tasks = tuple(tasks)
    check_grouping_args(len(tasks), k, method)
    a = check_affinity(affinity, tasks)
    if method == "auto":
        method = "exact" if len(tasks) <= EXACT_MAX_TASKS else "agglomerative"
    if method == "exact":
        if len(tasks) > EXACT_MAX_TASKS:
            raise ValueError(
                f"grouping: exact search is limited to {EXACT_MAX_TASKS} tasks, got {len(tasks)}; "
                "use method='agglomerative' or 'spectral'"
            )
        candidates: Iterator[Partition] = (p for p in _partitions(range(len(tasks))) if k is None or len(p) == k)
    else:
        cluster = _CLUSTERINGS[method]
        candidates = (cluster(a, n) for n in ([k] if k is not None else range(1, len(tasks) + 1)))
    group_score = functools.cache(functools.partial(_group_score, a))  # groups recur across partitions
    best = max(candidates, key=lambda p: sum(group_score(g) for g in p))
    return tuple(tuple(tasks[i] for i in g) for g in best)


def _partitions(items: Sequence[int]) -> Iterator[Partition]:
    for p in set_partitions(list(items)):
        yield _canonical(p)


def _canonical(groups: Sequence[Sequence[int]]) -> Partition:
    return tuple(sorted((tuple(sorted(g)) for g in groups if len(g)), key=lambda g: g[0]))


def _from_labels(labels: Sequence[int]) -> Partition:
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(int(lab), []).append(i)
    return _canonical(list(by_label.values()))


def _agglomerative(affinity: np.ndarray, k: int) -> Partition:
    if k in (1, len(affinity)):
        return _canonical([list(range(len(affinity)))] if k == 1 else [[i] for i in range(len(affinity))])
    from sklearn.cluster import AgglomerativeClustering  # here: scikit-learn takes half a second to import

    model = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average")
    return _from_labels(model.fit_predict(task_distance(affinity)))


def _spectral(affinity: np.ndarray, k: int) -> Partition:
    if k in (1, len(affinity)):
        return _agglomerative(affinity, k)
    distance = task_distance(affinity)
    similarity = distance.max() - distance  # the symmetric affinity shifted to >= 0
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=0)
    return _from_labels(model.fit_predict(similarity))


_CLUSTERINGS: dict[str, Callable[[np.ndarray, int], Partition]] = {
    "agglomerative": _agglomerative,
    "spectral": _spectral,
}


# ---------------------------------------------------------------------- L x T x T dissimilarity -> tree
def clustering_cost(dissimilarity: np.ndarray, partition: Partition) -> float:
    """Vandenhende et al. (2020, Sec. 3.3) clustering cost at one layer: the mean over groups of the
    largest dissimilarity between two tasks of the group (0 for a single task)."""
    worst = [dissimilarity[np.ix_(g, g)].max() if len(g) > 1 else 0.0 for g in partition]
    return float(np.mean(worst))


def layerwise_tree(
    dissimilarity: np.ndarray,
    tasks: Sequence[str],
    space: SearchSpace,
    params_budget: float = 2.0,
    min_split: float = 0.0,
) -> SharingGraph:
    """The branched tree with the lowest total clustering cost Σ_l C_l (Vandenhende et al. 2020, Sec. 3.3)
    whose backbone fits the parameter budget.

    Tasks start in one branch; at each branchable layer a branch may split into sub-branches, never
    merge. A branch may split at layer l only if two of its tasks are more than ``min_split`` apart
    there. The search is a dynamic programme over layers keeping, per partition in force, the Pareto
    front of (parameters, cost): exact over all refinements for up to TREE_EXACT_MAX_TASKS tasks
    (equivalent to scoring every tree of :func:`nas_mtl.graph.enumerate_trees`), otherwise over the
    refinements proposed by cutting each layer's average-linkage clustering (a beam). Ties go to
    fewer parameters.

    Args:
        dissimilarity: (L, T, T) task dissimilarity per backbone layer (e.g. 1 - RSA similarity).
        params_budget: largest backbone size as a multiple of one backbone (1 = hard sharing,
            T = independent networks); heads are the same for every tree and not counted.
        min_split: smallest within-branch dissimilarity that justifies a split.
    """
    tasks, layers = tuple(tasks), space.layers
    d = np.asarray(dissimilarity, dtype=float)
    if d.shape != (len(layers), len(tasks), len(tasks)):
        raise ValueError(
            f"dissimilarity: expected shape ({len(layers)}, {len(tasks)}, {len(tasks)}) (layers of space "
            f"{space.name!r} x tasks x tasks), got {d.shape}"
        )
    check_params_budget(params_budget)
    layer_params = space.backbone.layer_costs().params
    limit = params_budget * sum(layer_params)
    propose = _all_refinements if len(tasks) <= TREE_EXACT_MAX_TASKS else _clustering_refinements
    fronts: dict[Partition, list[_Entry]] = {(tuple(range(len(tasks))),): [(0, 0.0, ())]}  # by partition in force
    for layer, name in enumerate(layers):
        grown: dict[Partition, list[_Entry]] = {}
        for parent, entries in fronts.items():
            options = propose(parent, d[layer]) if name in space.branchable else [parent]
            for child in options:
                if not _split_allowed(parent, child, d[layer], min_split):
                    continue
                params = len(child) * int(layer_params[layer])
                cost = clustering_cost(d[layer], child)
                grown.setdefault(child, []).extend(
                    (p + params, c + cost, chain + (child,)) for p, c, chain in entries if p + params <= limit
                )
        fronts = {part: _pareto(entries) for part, entries in grown.items() if entries}
    _, cost, chain = min((e for entries in fronts.values() for e in entries), key=lambda e: (round(e[1], 9), e[0]))
    partitions = [[[tasks[i] for i in g] for g in part] for part in chain]
    return SharingGraph.branched(tasks, layers, partitions, space.skippable).with_meta(
        tree_cost=cost, params_budget=params_budget, min_split=min_split
    )


def _pareto(entries: list[_Entry]) -> list[_Entry]:
    """Entries not dominated in (params, cost), cheapest first."""
    front, best = [], float("inf")
    for e in sorted(entries, key=lambda e: (e[0], e[1])):
        if e[1] < best - 1e-12:
            front.append(e)
            best = e[1]
    return front


def _split_allowed(parent: Partition, child: Partition, dissimilarity: np.ndarray, min_split: float) -> bool:
    split = [g for g in parent if g not in child]
    return all(dissimilarity[np.ix_(g, g)].max() > min_split for g in split)


def _all_refinements(parent: Partition, _dissimilarity: np.ndarray) -> list[Partition]:
    per_group = [list(set_partitions(list(g))) for g in parent]
    return [_canonical([g for split in combo for g in split]) for combo in itertools.product(*per_group)]


def _clustering_refinements(parent: Partition, dissimilarity: np.ndarray) -> list[Partition]:
    """Meets of ``parent`` with the k-cluster cuts of the layer's average-linkage clustering, k = 1..T."""
    options = {parent}
    for k in range(2, len(dissimilarity) + 1):
        label = {i: n for n, g in enumerate(_agglomerative(-dissimilarity, k)) for i in g}
        options.add(_canonical([[i for i in g if label[i] == n] for g in parent for n in range(k)]))
    return sorted(options)


__all__ = [
    "EXACT_MAX_TASKS",
    "GROUPING_METHODS",
    "Groups",
    "Partition",
    "TREE_EXACT_MAX_TASKS",
    "check_affinity",
    "check_grouping_args",
    "check_params_budget",
    "clustering_cost",
    "group_tasks",
    "layerwise_tree",
    "partition_score",
    "task_distance",
]
