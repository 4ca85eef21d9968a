"""The study's plan: every run it needs as a typed unit, in the order they run, with what each one needs first.

``plan(spec, data, space)`` is the one list both executors work through: the local one (:mod:`.local`: in this
process or a pool of worker processes) and the distributed one (:mod:`.distributed`: an Optuna job queue that
workers on any machine claim from). Each unit is named by its ``key`` (its folder under the run folder, or a
name for a step without a folder of its own) and waits for the units of its ``needs``.

Order: the searches; the ``[grid]`` points and the choice of the best weights; then seed by seed every arm
(baselines, then searched arms) with each balancer, so a study stopped early still compares every arm on the
seeds it finished. Some units are decided only once their needs are done (:func:`~.units.resolve`): a searched
arm's run with a balancer that trains its graphs exactly as equal weighting does is skipped, and the run with
the grid's best weights learns which weights (and folder) that is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..balancing import create_balancer
from ..baselines import selection_networks
from ..data import MultiTaskData
from ..graph import SharingGraph
from ..layout import arm_key, arm_label, grid_key, search_key, slug
from ..soft import Coupling
from ..space import SearchSpace
from .spec import StudySpec, seeds_of_search

GRID_BEST = "@grid"
"""The balancer of an arm run that retrains with the ``[grid]``'s best weights (decided when the grid is done)."""
GRID_PICK = "grid/best"
"""The key of the step that chooses the grid's best weights (``RUN_DIR/grid.json``)."""


@dataclass(frozen=True)
class Arm:
    """One graph to retrain: a baseline, or what one run of a search found."""

    name: str
    graph: SharingGraph
    search_seconds: float = 0.0
    single_task: str | None = None  # set for the per-task nets of the single-task arm
    search_seed: int | None = None  # set for a searched arm: the seed of the search that found ``graph``
    coupling: Coupling | None = None  # set for a soft-sharing arm

    @property
    def label(self) -> str:
        return arm_label(self.name, self.single_task)


@dataclass(frozen=True)
class SearchRun:
    """One search: ``method`` with search seed ``seed`` (folder ``search/METHOD/seedS``)."""

    method: str
    seed: int
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return search_key(self.method, self.seed)

    @property
    def label(self) -> str:
        return f"search {self.method} seed {self.seed}"


@dataclass(frozen=True)
class ArmRun:
    """One training run: arm ``arm`` (and ``task`` for a single-task net) with ``balancer`` at training seed ``seed``.

    A searched arm's run (``search_seed`` set) retrains the graph its search found with that seed; a ``[grid]``
    point (``grid_point``) trains in ``grid/BALANCER/seedS``; ``balancer`` :data:`GRID_BEST` stands for the grid's
    best weights until they are known."""

    arm: str
    task: str | None
    balancer: str
    seed: int
    search_seed: int | None = None
    grid_point: bool = False
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        if self.grid_point:
            return grid_key(self.balancer, self.seed)
        if self.balancer == GRID_BEST:
            return f"arms/{slug(arm_label(self.arm, self.task))}/{GRID_BEST}/seed{self.seed}"
        return arm_key(self.arm, self.task, self.balancer, self.seed)

    @property
    def label(self) -> str:
        where = "grid" if self.grid_point else arm_label(self.arm, self.task)
        return f"{where} {self.balancer} seed {self.seed}"


@dataclass(frozen=True)
class GridPick:
    """Choose the ``[grid]``'s best static weights by validation Δm, once its points and the single-task nets at
    its seed are trained; writes ``RUN_DIR/grid.json``."""

    seed: int
    needs: tuple[str, ...] = ()
    key: str = GRID_PICK

    @property
    def label(self) -> str:
        return f"grid best seed {self.seed}"


Unit = SearchRun | ArmRun | GridPick
UNIT_TYPES: dict[str, type] = {"search": SearchRun, "arm": ArmRun, "grid-pick": GridPick}
"""Each unit type by the ``kind`` a queued job records."""


def unit_args(unit: Unit) -> dict[str, Any]:
    """What a queued job records of ``unit`` (its fields but ``needs``, and its ``kind``)."""
    kind = next(k for k, t in UNIT_TYPES.items() if isinstance(unit, t))
    return {"kind": kind, **{f.name: getattr(unit, f.name) for f in dataclasses.fields(unit) if f.name != "needs"}}


def plan(spec: StudySpec, data: MultiTaskData, space: SearchSpace) -> list[Unit]:
    """Every unit of ``spec``, in the order they run (see the module docstring)."""
    units: list[Unit] = []
    searches: dict[str, tuple[str, ...]] = {}
    for method in spec.search:
        runs = [SearchRun(method, seed) for seed in seeds_of_search(spec, method)]
        units += runs
        searches[method] = tuple(r.key for r in runs)
    baselines = baseline_arms(spec, data, space)
    pick = None
    if spec.grid is not None:
        points = grid_points(spec, data)
        singles = [ArmRun(a.name, a.single_task, "equal", spec.grid.seed) for a in baselines if a.single_task]
        pick = GridPick(spec.grid.seed, needs=tuple(u.key for u in (*points, *singles)))
        units += [*points, pick]
    for i, seed in enumerate(spec.seeds):
        for arm in baselines:
            for b in balancers_for([arm], spec.balancers):
                units.append(ArmRun(arm.name, arm.single_task, b, seed))
            if pick is not None and arm.name == spec.grid.arm:
                units.append(ArmRun(arm.name, None, GRID_BEST, seed, needs=(pick.key,)))
        for method in spec.search:
            seeds = seeds_of_search(spec, method)
            for b in spec.balancers:
                units.append(ArmRun(method, None, b, seed, search_seed=seeds[i % len(seeds)], needs=searches[method]))
    return units


def grid_points(spec: StudySpec, data: MultiTaskData) -> list[ArmRun]:
    """The ``[grid]``'s runs: its arm with every static weight vector of the simplex grid, at the grid seed."""
    from ..balancing.weighting import StaticWeights, simplex_grid

    grid = spec.grid
    assert grid is not None
    points = simplex_grid(list(data.task_names), grid.step)
    if len(points) > 200:
        raise ValueError(f"{spec.source}: grid.step: {len(points)} weight vectors (over 200); use a larger step")
    return [ArmRun(grid.arm, None, StaticWeights(**w).spec, grid.seed, grid_point=True) for w in points]


def baseline_arms(spec: StudySpec, data: MultiTaskData, space: SearchSpace) -> list[Arm]:
    """The baseline arms of ``spec`` (one per task for the single-task nets)."""
    arms = []
    for b in spec.baselines:
        if b == "single":
            for t in data.task_names:
                graph = SharingGraph.hard_sharing([t], space.layers, space.skippable).with_meta(name=f"single:{t}")
                arms.append(Arm("single-task", graph, single_task=t))
        else:
            tasks = data.task_names
            graph = space.hard_sharing(tasks) if b == "hard" else space.independent(tasks)
            arms.append(Arm(b, graph.with_meta(name=b), coupling=spec.couplings.get(b)))
    return arms


def balancers_for(group: Sequence[Arm], balancers: Sequence[str]) -> tuple[str, ...]:
    """``balancers``, less those that train ``group``'s graphs exactly as equal weighting does (equal stays).

    Gradient-combining balancers only change the update of parameters shared by several tasks, so a graph
    without any (single-task nets, independent nets) trains identically with each; on single-task nets most
    loss weightings are equal weighting too (their one weight is always 1)."""
    if any(shares_parameters(arm.graph) or _mixes(arm) or _trains_together(arm) for arm in group):
        return tuple(balancers)
    one_task = all(len(arm.graph.tasks) == 1 for arm in group)
    differ = []
    for b in balancers:
        balancer = create_balancer(b)
        if not balancer.shared_only and not (one_task and balancer.one_task_is_equal):
            differ.append(b)
    return tuple(dict.fromkeys(["equal", *differ]))


def _trains_together(arm: Arm) -> bool:
    """A selection whose networks train several tasks (served by them or not): balancers matter there."""
    return any(len(trains) > 1 for trains, _ in selection_networks(arm.graph))


def _mixes(arm: Arm) -> bool:
    """Cross-stitch units: parameters every task's loss reaches, so gradient-combining balancers matter."""
    return arm.coupling is not None and arm.coupling.kind == "cross-stitch"


def shares_parameters(graph: SharingGraph) -> bool:
    """Whether some block copy is used by two or more tasks."""
    return any(
        len(graph.copy_tasks(layer, c)) > 1 for layer in range(graph.num_layers) for c in range(graph.copies(layer))
    )


__all__ = [
    "GRID_BEST",
    "GRID_PICK",
    "UNIT_TYPES",
    "Arm",
    "ArmRun",
    "GridPick",
    "SearchRun",
    "Unit",
    "balancers_for",
    "baseline_arms",
    "grid_points",
    "plan",
    "shares_parameters",
    "unit_args",
]
