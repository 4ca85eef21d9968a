"""Baselines every search is compared against: single-task networks, hard sharing, independent nets."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .balancing import Balancer, create_balancer
from .data import MultiTaskData
from .environment import environment
from .evaluation import evaluate
from .export import network_manifest
from .graph import SharingGraph
from .layout import CHECKPOINT, MODEL_MANIFEST, RESULT
from .network import MultiTaskNetwork
from .runs import check_name, run_path, save_atomic, write_json_atomic
from .soft import Coupling
from .space import SearchSpace
from .train import StepHook, TrainConfig, TrainResult, resolve_device, seed_everything, train

SELECTION_NETWORKS = "networks"
"""A selection's run folder: ``networks/A+B`` holds the training of its network over tasks A and B."""

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


def network_folder(run_dir: str | Path, group: Sequence[str]) -> Path:
    """Where the network trained on ``group`` lives in a selection's folder: ``networks/A+B``, or
    ``networks/group-HASH`` where the names are long or hold a ``+`` themselves (no two groups share a folder)."""
    name = "+".join(group)
    if len(name) > 100 or any("+" in t for t in group):
        name = "group-" + hashlib.sha256("\n".join(group).encode()).hexdigest()[:16]
    return run_path(run_dir, SELECTION_NETWORKS, check_name(name, "network folder"))


def selection_networks(graph: SharingGraph) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(tasks it trains, tasks it serves)`` of each network of a selection's served ``graph`` (meta
    ``networks``, see :mod:`nas_mtl.search.network_selection`); empty for any other graph. A graph read back is
    data: every name must be one of its tasks, and each task served by exactly one network, on its own path."""
    listed = graph.meta.get("networks")
    if listed is None:
        return []
    where = f"graph {graph.meta.get('name', '')!r}: meta networks"
    if not isinstance(listed, list) or not listed:
        raise ValueError(f"{where}: expected a non-empty list of {{'tasks': [...], 'serves': [...]}}")
    out = []
    for i, entry in enumerate(listed):
        ok = isinstance(entry, Mapping) and all(isinstance(entry.get(k), list) for k in ("tasks", "serves"))
        trains, serves = (tuple(entry["tasks"]), tuple(entry["serves"])) if ok else ((), ())
        if not ok or not serves or not set(serves) <= set(trains) or not set(trains) <= set(graph.tasks):
            raise ValueError(f"{where}[{i}]: expected tasks among {list(graph.tasks)} serving a non-empty subset")
        out.append((trains, serves))
    served = [t for _, serves in out for t in serves]
    paths = {serves: {graph.path(t) for t in serves} for _, serves in out}
    if sorted(served) != sorted(graph.tasks) or any(len(p) != 1 for p in paths.values()):
        raise ValueError(f"{where}: each task must be served by one network, on that network's own branch")
    if len({next(iter(p)) for p in paths.values()}) != len(out) or graph.copies(0) != len(out):
        raise ValueError(f"{where}: each network must have its own branch from the input")
    return out


def train_selection(
    graph: SharingGraph,
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    balancer: str = "equal",
    run_dir: str | Path | None = None,
) -> tuple[MultiTaskNetwork, TrainResult]:
    """Train a selection (Standley et al. 2020): each network of ``graph``'s meta ``networks`` on its own tasks
    (``run_dir/networks/A+B``, resumable, each with a fresh ``balancer``), then assemble the served ``graph`` from
    their weights (:func:`assemble_selection`) and evaluate it: the network a user exports, served tasks only.

    ``run_dir`` also gets the assembled network's ``model.json`` and ``checkpoint.pt`` (``nas-mtl export`` reads
    them) and ``result.json``; ``train_seconds`` is the sum over the networks.
    """
    networks = selection_networks(graph)
    if not networks:
        raise ValueError(f"graph {graph.meta.get('name', '')!r}: not a selection (no meta networks)")
    members, seconds = [], 0.0
    for trains, serves in networks:
        member = SharingGraph.hard_sharing(list(trains), space.layers, space.skippable)
        folder = None if run_dir is None else network_folder(run_dir, trains)
        net, result = train_graph(
            member.with_meta(name="+".join(trains)), data, space, config, create_balancer(balancer), folder
        )
        members.append((net, serves))
        seconds += result.train_seconds
    network = assemble_selection(graph, members, space, data.tasks)
    device = resolve_device(config.device)
    network.to(device)
    val = evaluate(network, data.val, data.tasks, config.eval_batch_size, device)
    test = evaluate(network, data.test, data.tasks, config.eval_batch_size, device)
    result = TrainResult(val, test, (), seconds, env=environment(device))
    if run_dir is not None:
        run_dir = Path(run_dir)
        graph.save(run_dir / "graph.json")
        # "epoch" as a trainer's checkpoint has it: a study killed before the row reads it as a finished training
        save_atomic({"model": network.state_dict(), "epoch": config.epochs}, run_dir / CHECKPOINT)
        write_json_atomic(network_manifest(network, data.tasks, data.info, test), run_dir / MODEL_MANIFEST)
        write_json_atomic(result.to_dict(), run_dir / RESULT)
    return network, result


def assemble_selection(
    graph: SharingGraph,
    members: Sequence[tuple[MultiTaskNetwork, Sequence[str]]],
    space: SearchSpace,
    tasks: Sequence[Any],
) -> MultiTaskNetwork:
    """The served ``graph`` with each branch's blocks and each served task's head taken from the trained network
    that serves it (``members``: (network, tasks it serves)); its outputs equal those networks' outputs."""
    network = MultiTaskNetwork.from_tasks(graph, space.backbone, tasks)
    for member, serves in members:
        path = graph.path(serves[0])
        for layer, copy in enumerate(path):
            if copy >= 0:
                network.blocks[layer][copy].load_state_dict(
                    member.blocks[layer][member.graph.path(serves[0])[layer]].state_dict()
                )
        for t in serves:
            network.heads[graph.tasks.index(t)].load_state_dict(member.heads[member.tasks.index(t)].state_dict())
    return network


__all__ = [
    "ARMS",
    "SELECTION_NETWORKS",
    "assemble_selection",
    "network_folder",
    "SOFT_ARMS",
    "primary_directions",
    "selection_networks",
    "train_graph",
    "train_selection",
    "train_single_tasks",
]
