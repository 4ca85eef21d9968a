"""Network selection as a search (Standley et al., ICML 2020; TAG, Fifty et al., NeurIPS 2021, Sec. 3.2): train
small networks, predict the others, select a set of networks under an inference budget.

What it trains, each a hard-shared network over a group of tasks, from scratch with the trainer, in
``RUN_DIR/networks/GROUP`` (resumable): every single-task network and every pair (``measure = "pairs"``, the
setting of Standley's higher-order approximation), or every group of tasks (``"all"``, up to
:data:`MAX_ALL_TASKS` tasks), and the all-task network, with TAG's lookahead recorder on (its affinity is TAG's
measurement; the network is the all-in-one choice of the table).

A network's *score* of a task is the relative change of the task's primary validation metric against the
single-task network (in %, higher is better: Δm's terms, Maninis et al. 2019), not Standley's loss: tasks with
different losses then add up as Δm does, and a selection's total over the T tasks is T x its Δm. Every network
costs 1 (one backbone; the space has one width, so no half-size networks).

Predictors (:mod:`nas_mtl.selection`): ``exact`` selects on the measured table (needs ``measure = "all"``),
``hoa`` on Standley's prediction from the pairs, ``tag`` on TAG's from the affinity (a task alone scores
``alone``). The result serves each task from its selected network: one hard-shared branch from the input per
selected network, its graph's meta ``networks`` listing each selected network's tasks, those it trains but does
not serve included. Retraining trains every selected network on its own tasks and assembles the served graph from
their weights (:func:`~nas_mtl.baselines.train_selection`): one trainer, one executor.

``info`` records the measured tables (validation and test), and per budget (1 to the number of tasks, and
``budget``) each predictor's selection scored on the measured test table (select on validation, score on test, as
the paper does; ``None`` where it picks a network that was not measured), the expected random selection
(Standley's baseline), the all-in-one network and the independent networks (0 by construction): the budget curve
of the paper's Figure 3 in Δm terms, which the report draws with intervals over search seeds.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ..balancing import create_balancer
from ..baselines import network_folder, primary_directions, train_graph
from ..config import nested, option
from ..data import MultiTaskData
from ..graph import SharingGraph
from ..metrics import delta_m
from ..runs import read_json, write_json_atomic
from ..selection import TAG_ALONE, Network, NetworkTable, Selection, best_total, hoa, random_selection, select, tag
from ..space import SearchSpace
from ..train import TrainConfig
from . import SearchMethod, SearchResult, register_search_method
from .affinity_measures import AffinityRecorder

PREDICTORS = ("exact", "hoa", "tag")
MEASURES = ("pairs", "all")
MAX_ALL_TASKS = 6
"""``measure = "all"`` trains 2^T - 1 networks, and HOA's and TAG's tables list as many: at most 63 (the exact
selection on them at every budget of the curve stays in seconds; at 8 tasks a budget of 4 takes hours)."""
AFFINITY_FILE = "affinity.json"
CURVE_METHODS = ("optimal", "hoa", "tag", "random", "all-in-one", "independent")
"""The lines of the budget curve (``optimal``: the measured table's best; with ``measure = "pairs"`` only where
every network it picks was measured)."""


@dataclass(frozen=True)
class SelectionConfig:
    """Settings of a network-selection search.

    Args:
        train: how every measured network is trained.
        budget: the inference budget, in backbones (1 = one network for every task).
        predictor: the table the selection is made on: exact (measured, needs measure all), hoa or tag.
        measure: which networks to train: pairs (singles, pairs and the all-task network) or all (every group).
        alone: tag: the score of a task in a network of its own (TAG's released code: -1e6).
        lookahead_lr: tag: the lookahead SGD step (none: the training lr).
        every: tag: measure the affinity every N training steps.
        balancer: loss balancer of the measured networks (a name, or NAME:KEY=VALUE,...).
        random_draws: random selections averaged for the curve's random line.
    """

    train: TrainConfig = nested(TrainConfig(epochs=5))
    budget: float = 2.0
    predictor: str = option("hoa", choices=PREDICTORS)
    measure: str = option("pairs", choices=MEASURES)
    alone: float = TAG_ALONE
    lookahead_lr: float | None = None
    every: int = 1
    balancer: str = "equal"
    random_draws: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"selection: train must be a TrainConfig, got {type(self.train).__name__}")
        if not (isinstance(self.budget, int | float) and math.isfinite(self.budget) and self.budget >= 1):
            raise ValueError(f"selection: budget must be a number >= 1 (backbones), got {self.budget!r}")
        if self.predictor == "exact" and self.measure != "all":
            raise ValueError("selection: predictor 'exact' selects on measured networks only: set measure = 'all'")
        if not math.isfinite(self.alone):
            raise ValueError(f"selection: alone must be finite, got {self.alone!r}")
        for name in ("every", "random_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"selection: {name} must be an integer >= 1, got {value!r}")
        try:
            create_balancer(self.balancer)
        except (TypeError, ValueError) as err:
            raise ValueError(f"selection: balancer: {err}") from None


def measured_groups(tasks: Sequence[str], measure: str) -> list[tuple[str, ...]]:
    """The groups of ``tasks`` the search trains, in table order (by size, then task order); the all-task group
    last."""
    sizes = range(1, len(tasks) + 1) if measure == "all" else (1, 2, len(tasks))
    groups = [g for size in dict.fromkeys(s for s in sizes if s <= len(tasks)) for g in combinations(tasks, size)]
    return list(dict.fromkeys(groups))


def check_selection_search(data: MultiTaskData, space: SearchSpace, config: SelectionConfig) -> None:
    """ValueError if ``config`` cannot run on ``data`` (checked before a study trains anything)."""
    n = len(data.task_names)
    if n > MAX_ALL_TASKS:
        raise ValueError(
            f"selection: {n} tasks; the selection lists every group of tasks (2^T - 1 networks) and is exact up to "
            f"{MAX_ALL_TASKS} tasks (select among fewer tasks, e.g. the tasks option of the dataset)"
        )
    steps = config.train.epochs * (len(data.train) // config.train.batch_size)
    if n > 1 and config.every > steps:
        raise ValueError(f"selection: every = {config.every} exceeds the {steps} steps TAG's affinity is measured in")
    if len(data.train) < config.train.batch_size:
        raise ValueError(
            f"selection: batch_size {config.train.batch_size} exceeds the {len(data.train)} training samples"
        )


def _train_network(
    data: MultiTaskData, space: SearchSpace, config: SelectionConfig, run_dir: Path, group: tuple[str, ...]
) -> tuple[Mapping[str, Any], Mapping[str, Any], float, np.ndarray | None]:
    """Train (or read back) the network of ``group``: its validation and test metrics, its training seconds and,
    for the all-task network, TAG's lookahead affinity (recorded while it trains)."""
    out = network_folder(run_dir, group)
    graph = SharingGraph.hard_sharing(list(group), space.layers, space.skippable).with_meta(name="+".join(group))
    everything = len(group) == len(data.task_names) and len(group) > 1
    hooks: list[AffinityRecorder] = []
    lr = config.train.lr if config.lookahead_lr is None else config.lookahead_lr
    settings = {"tasks": list(group), "lookahead_lr": lr, "every": config.every}
    if everything:
        recorded = (
            read_json(out / AFFINITY_FILE, "selection affinity", (), f"delete {out}")
            if (out / AFFINITY_FILE).is_file()
            else None
        )
        if out.is_dir() and (recorded is None or recorded.get("settings") != settings):
            shutil.rmtree(out)  # no affinity recorded (killed in between) or other lookahead settings: again
        hooks.append(AffinityRecorder(data.tasks, lr, config.every))
    _, result = train_graph(graph, data, space, config.train, create_balancer(config.balancer), out, step_hooks=hooks)
    affinity = None
    if everything:
        if hooks[0].steps:
            matrix = hooks[0].matrix("lookahead").tolist()
            write_json_atomic({"tasks": list(group), "lookahead": matrix, "settings": settings}, out / AFFINITY_FILE)
        elif not (out / AFFINITY_FILE).is_file():
            raise ValueError(
                f"selection: TAG's recorder measured no step of {out} (no batch labelled every task, or every = "
                f"{config.every} too large); lower every, or use predictor hoa"
            )
        record = read_json(out / AFFINITY_FILE, "selection affinity", ("tasks", "lookahead"), f"delete {out}")
        affinity = np.asarray(record["lookahead"], dtype=float)
        if affinity.shape != (len(group), len(group)) or list(record["tasks"]) != list(group):
            raise ValueError(f"{out / AFFINITY_FILE}: not the affinity of tasks {list(group)}; delete {out}")
    return result.val, result.test, result.train_seconds, affinity


def _scores(metrics: Mapping[str, Any], single: Mapping[str, Any], group: Sequence[str], directions: Any) -> dict:
    return {t: delta_m({t: metrics[t]}, {t: single[t]}, {t: directions[t]}) for t in group}


def tables_of(
    measured: Mapping[tuple[str, ...], tuple[Mapping[str, Any], Mapping[str, Any]]],
    tasks: Sequence[str],
    directions: Mapping[str, Mapping[str, bool]],
) -> tuple[NetworkTable, NetworkTable]:
    """The validation and test tables of ``measured`` (group -> (val, test) metrics): each task's score the
    relative change (%) of its primary metric against its single-task network on the same split."""
    tables = []
    for split, name in ((0, "validation"), (1, "test")):
        single = {t: measured[(t,)][split][t] for t in tasks}
        nets = tuple(Network(g, 1.0, _scores(m[split], single, g, directions)) for g, m in measured.items())
        tables.append(NetworkTable(tuple(tasks), nets, dict.fromkeys(tasks, True), f"selection ({name})"))
    return tables[0], tables[1]


def _measured_total(networks: Sequence[Network], test: NetworkTable) -> float | None:
    """The test total of ``networks`` (each task served by the best of them on test, as the paper scores its
    curves); None when one of them was not measured."""
    by_tasks = {n.tasks: n for n in test.networks}
    if any(n.tasks not in by_tasks for n in networks):
        return None
    return best_total(test, [by_tasks[n.tasks] for n in networks])


def budget_curve(
    val: NetworkTable, test: NetworkTable, affinity: np.ndarray, config: SelectionConfig, seed: int
) -> dict[str, Any]:
    """Per budget: each predictor's selection scored on ``test`` as Δm (total / T, %), the expected random
    selection, the all-in-one and the independent networks (see the module docstring)."""
    n = len(val.tasks)
    tables = {"optimal": val, "hoa": hoa(val) if n > 2 else val, "tag": tag(affinity, val.tasks, config.alone)}
    budgets = sorted({float(b) for b in range(1, n + 1)} | {float(config.budget)})
    rng = random.Random(seed)
    all_in_one = _measured_total([next(x for x in val.networks if len(x.tasks) == n)], test)
    curve: dict[str, Any] = {"budgets": budgets, **{m: [] for m in CURVE_METHODS}}
    for b in budgets:
        for method, table in tables.items():
            total = _measured_total(select(table, b).networks, test)
            curve[method].append(None if total is None else total / n)
        draws = [best_total(test, _on(test, random_selection(val, b, rng))) for _ in range(config.random_draws)]
        curve["random"].append(math.fsum(draws) / len(draws) / n)
        curve["all-in-one"].append(None if all_in_one is None else all_in_one / n)
        curve["independent"].append(0.0)
    return curve


def _on(table: NetworkTable, networks: Sequence[Network]) -> list[Network]:
    by_tasks = {n.tasks: n for n in table.networks}
    return [by_tasks[n.tasks] for n in networks]


def served_graph(selection: Selection, tasks: Sequence[str], space: SearchSpace) -> SharingGraph:
    """The graph serving each task from its network in ``selection``: one hard-shared branch from the input per
    network that serves a task; meta ``networks`` lists every selected network's tasks and the ones it serves."""
    serving = [n for n in selection.networks if any(selection.serves[t] is n for t in tasks)]
    groups = [tuple(t for t in tasks if selection.serves[t] is n) for n in serving]
    networks = [{"tasks": list(n.tasks), "serves": list(g)} for n, g in zip(serving, groups)]
    graph = SharingGraph.from_groups(tasks, space.layers, groups, 0, space.skippable)
    return graph.with_meta(networks=networks)


def selection_search(
    data: MultiTaskData, space: SearchSpace, config: SelectionConfig, run_dir: str | Path
) -> SearchResult:
    """Train the networks of ``config.measure``, predict with ``config.predictor``, select within
    ``config.budget`` and return the served graph (see the module docstring); ``info`` holds the tables, the
    selection and the budget curve."""
    check_selection_search(data, space, config)
    run_dir = Path(run_dir)
    tasks = data.task_names
    directions = primary_directions(data)
    t0 = time.perf_counter()
    measured, seconds, affinity = {}, 0.0, None
    for group in measured_groups(tasks, config.measure):
        val, test, spent, found = _train_network(data, space, config, run_dir, group)
        measured[group] = (val, test)
        seconds += spent
        affinity = found if found is not None else affinity
    if affinity is None:  # one task: its network is the only choice
        affinity = np.zeros((len(tasks), len(tasks)))
    val, test = tables_of(measured, tasks, directions)
    predicted = {"exact": val, "hoa": hoa(val) if len(tasks) > 2 else val, "tag": tag(affinity, tasks, config.alone)}
    chosen = select(predicted[config.predictor], config.budget)
    graph = served_graph(chosen, tasks, space).with_meta(name=f"selection:{config.predictor}")
    info = {
        "predictor": config.predictor,
        "budget": config.budget,
        "measure": config.measure,
        "networks": [
            {"tasks": list(n.tasks), "serves": [t for t in tasks if chosen.serves[t] is n]} for n in chosen.networks
        ],
        "predicted_delta_m": chosen.total / len(tasks) if config.predictor != "tag" else None,
        "tables": {
            name: [{"tasks": list(n.tasks), "scores": dict(n.scores)} for n in table.networks]
            for name, table in (("val", val), ("test", test))
        },
        "affinity": affinity.tolist(),
        "curve": budget_curve(val, test, affinity, config, config.train.seed),
        "trained_seconds": seconds,
    }
    return SearchResult("selection", graph, max(seconds, time.perf_counter() - t0), info=info)


@register_search_method("selection")
def _selection_method() -> SearchMethod:
    return SearchMethod(
        SelectionConfig,
        selection_search,
        check=check_selection_search,
        help="network selection under a budget: singles and pairs trained, HOA / TAG predicted (Standley et al.)",
    )


__all__ = [
    "CURVE_METHODS",
    "MAX_ALL_TASKS",
    "PREDICTORS",
    "SelectionConfig",
    "budget_curve",
    "check_selection_search",
    "measured_groups",
    "selection_search",
    "served_graph",
    "tables_of",
]
