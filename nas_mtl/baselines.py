"""Baselines every search is compared against: single-task networks, hard sharing, independent nets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .balancing import Balancer
from .data import MultiTaskData
from .graph import SharingGraph
from .network import MultiTaskNetwork
from .runs import check_name, run_path
from .soft import Coupling
from .space import SearchSpace
from .train import StepHook, TrainConfig, TrainResult, seed_everything, train

ARMS = ("single", "hard", "independent", "soft-l2", "cross-stitch")
SOFT_ARMS = {"soft-l2": "l2", "cross-stitch": "cross-stitch"}
"""Soft-sharing baselines: the independent pattern with a coupling of this kind (options in the study's [arms])."""


def train_graph(
    graph: SharingGraph,
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    balancer: Balancer | None = None,
    run_dir: str | Path | None = None,
    inherit: MultiTaskNetwork | None = None,
    step_hooks: Sequence[StepHook] = (),
    coupling: Coupling | None = None,
) -> tuple[MultiTaskNetwork, TrainResult]:
    """Build ``graph`` on the space's backbone (seeded) and train it (``step_hooks``: see :func:`train`).

    A ``run_dir`` whose checkpoint is at the last epoch is not retrained, only re-evaluated. ``coupling`` ties
    the task copies of an independent graph (soft sharing, :mod:`nas_mtl.soft`).
    """
    space.check_graph(graph)
    seed_everything(config.seed)
    network = MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks, inherit=inherit, coupling=coupling)
    result = train(
        network, data, config, balancer, run_dir, desc=graph.meta.get("name", "train"), step_hooks=step_hooks
    )
    return network, result


def primary_directions(data: MultiTaskData, tasks: Sequence[str] | None = None) -> dict[str, dict[str, bool]]:
    """``{task: {primary metric: higher is better}}``: what Δm averages over."""
    tasks = data.task_names if tasks is None else tasks
    by_name = {t.name: t for t in data.tasks}
    return {t: {by_name[t].primary_metric: by_name[t].metric_directions[by_name[t].primary_metric]} for t in tasks}


def train_single_tasks(
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    run_dir: str | Path,
    balancer: Balancer | None = None,
) -> dict[str, tuple[MultiTaskNetwork, TrainResult]]:
    """One network per task (``run_dir/TASK``), the reference of Δm; finished runs are reused.

    ``result.val[task]`` / ``result.test[task]`` give the single-task metrics searches compare against.
    """
    out = {}
    for t in data.task_names:
        graph = SharingGraph.hard_sharing([t], space.layers, space.skippable).with_meta(name=f"single:{t}")
        out[t] = train_graph(graph, data, space, config, balancer, run_path(run_dir, check_name(t, "task name")))
    return out


__all__ = [
    "ARMS",
    "SOFT_ARMS",
    "primary_directions",
    "train_graph",
    "train_single_tasks",
]
