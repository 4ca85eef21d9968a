"""The trees of a branch search as Optuna parameters (:func:`suggest_tree` and its inverse :func:`tree_params`),
and the warm-start trees a new study enqueues first, with what computing them costs. See
:mod:`nas_mtl.search.branching` for the encoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import Trial

from ..data import MultiTaskData
from ..graph import SharingGraph
from ..space import SearchSpace
from .branch_config import BranchSearchConfig
from .budget import CostModel
from .proxy import graph_key


def suggest_tree(trial: Trial, tasks: Sequence[str], layers: Sequence[str], branchable: Sequence[str]) -> SharingGraph:
    """Sample a branched tree through ``trial`` (the encoding: :mod:`nas_mtl.search.branching`); every tree is
    reachable exactly once."""
    allowed = set(branchable)
    partition: list[tuple[str, ...]] = [tuple(tasks)]
    partitions = []
    for layer in layers:
        if layer in allowed:
            partition = [block for group in partition for block in _split(trial, layer, group)]
        partitions.append(partition)
    return SharingGraph.branched(tasks, layers, partitions)


def _split(trial: Trial, layer: str, group: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A set partition of ``group`` as a restricted-growth string of categorical choices."""
    labels = [0]
    for task in group[1:]:
        name = f"{layer}:{'+'.join(group)}:{task}@{'.'.join(map(str, labels))}"
        labels.append(trial.suggest_categorical(name, list(range(max(labels) + 2))))
    return _blocks(group, labels)


def _blocks(group: Sequence[str], labels: Sequence[int]) -> list[tuple[str, ...]]:
    """The blocks of a restricted-growth string, in the order of their first task."""
    blocks: dict[int, list[str]] = {}
    for task, label in zip(group, labels):
        blocks.setdefault(label, []).append(task)
    return [tuple(b) for b in blocks.values()]


def tree_params(graph: SharingGraph, layers: Sequence[str], branchable: Sequence[str]) -> dict[str, int]:
    """The parameters under which :func:`suggest_tree` draws ``graph`` (its inverse), e.g. to enqueue a known tree
    as a trial (``optuna.Study.enqueue_trial``); ValueError when ``graph`` is not a tree of these layers that
    splits only at ``branchable`` ones."""
    allowed, params = set(branchable), {}
    partition: list[tuple[str, ...]] = [tuple(graph.tasks)]
    for i, layer in enumerate(layers):
        if layer not in allowed:
            continue
        block_of = {t: k for k, block in enumerate(graph.partition(i)) for t in block}
        refined = []
        for group in partition:
            labels, seen = [0], {block_of[group[0]]: 0}
            for task in group[1:]:
                params[f"{layer}:{'+'.join(group)}:{task}@{'.'.join(map(str, labels))}"] = label = seen.setdefault(
                    block_of[task], len(seen)
                )
                labels.append(label)
            refined += _blocks(group, labels)
        partition = refined
    drawn = suggest_tree(optuna.trial.FixedTrial(params), graph.tasks, layers, branchable)
    if graph_key(drawn) != graph_key(graph):
        raise ValueError(
            f"warm start: {graph.meta.get('name', 'the graph')} is not a tree of this space that branches only at "
            f"{list(branchable)} ({graph.describe()})"
        )
    return params


def warm_start_trees(
    data: MultiTaskData, space: SearchSpace, config: BranchSearchConfig, run_dir: Path
) -> dict[str, SharingGraph]:
    """The trees of ``config.warm_start`` by name (see :class:`BranchSearchConfig`; ``rsa`` gives ``rsa@LAYER``
    per branchable layer); ``affinity`` runs the affinity search in ``run_dir/affinity``, ``rsa`` in
    ``run_dir/rsa`` (both resumable)."""
    tasks, trees = data.task_names, {}
    if not space.branchable and any(w in ("independent", "affinity", "rsa") for w in config.warm_start):
        raise ValueError(f"warm_start: search space {space.name!r} has no branchable layer")
    for name in config.warm_start:
        if name == "hard":
            trees[name] = space.hard_sharing(tasks)
        elif name == "independent":
            at = space.layers.index(space.branchable[0])
            trees[name] = SharingGraph.from_groups(tasks, space.layers, [[t] for t in tasks], at, space.skippable)
        elif name == "affinity":
            from .affinity import AffinityConfig, affinity_search

            affinity = AffinityConfig(train=config.proxy.warmstart, branch_at=space.branchable[0], plots=False)
            trees[name] = affinity_search(data, space, affinity, run_dir / "affinity").graph
        elif name == "rsa":
            from .affinity import AffinityConfig, affinity_search

            rsa = AffinityConfig(train=config.proxy.warmstart, measures=("rsa",), plots=False)
            groups = affinity_search(data, space, rsa, run_dir / "rsa").info["measures"]["rsa"]["groups"]
            for layer in space.branchable:
                at = space.layers.index(layer)
                trees[f"rsa@{layer}"] = SharingGraph.from_groups(tasks, space.layers, groups, at, space.skippable)
        else:
            trees[name] = SharingGraph.load(name)
    return trees


def warm_start_cost(costs: CostModel, config: BranchSearchConfig) -> float:
    """Units the warm start's affinity runs spend: ``rsa`` trains each task alone, ``affinity`` one hard-sharing
    network whose every step also takes a lookahead step and loss per task (counted as one more training per
    task, an upper bound)."""
    epochs = config.proxy.warmstart.epochs
    hard = costs.space.hard_sharing(costs.data.task_names)
    cost = costs.singles(epochs) if "rsa" in config.warm_start else 0.0
    if "affinity" in config.warm_start:
        cost += costs.training(hard, epochs) * (1 + len(costs.data.task_names))
    return cost


__all__ = ["suggest_tree", "tree_params", "warm_start_cost", "warm_start_trees"]
