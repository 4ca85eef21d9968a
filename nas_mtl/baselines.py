"""Baselines every search is compared against: single-task networks, hard sharing, independent nets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .balancing import Balancer
from .data import MultiTaskData
from .graph import SharingGraph
from .metrics import delta_m
from .network import MultiTaskNetwork
from .space import SearchSpace
from .train import Metrics, StepHook, TrainConfig, TrainResult, seed_everything, train

ARMS = ("single", "hard", "independent")


def train_graph(
    graph: SharingGraph,
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    balancer: Balancer | None = None,
    run_dir: str | Path | None = None,
    inherit: MultiTaskNetwork | None = None,
    step_hooks: Sequence[StepHook] = (),
) -> tuple[MultiTaskNetwork, TrainResult]:
    """Build ``graph`` on the space's backbone (seeded) and train it (``step_hooks``: see :func:`train`).

    A ``run_dir`` whose checkpoint is at the last epoch is not retrained, only re-evaluated.
    """
    space.check_graph(graph)
    seed_everything(config.seed)
    network = MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks, inherit=inherit)
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
        out[t] = train_graph(graph, data, space, config, balancer, Path(run_dir) / t)
    return out


def run_baselines(
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    run_dir: str | Path,
    arms: Sequence[str] = ("single", "hard"),
    balancer: Balancer | None = None,
) -> pd.DataFrame:
    """Train the baseline arms and tabulate test metrics, Δm vs single-task, params and MACs.

    Each arm (and each single-task net) lives in its own folder under ``run_dir`` with a checkpoint,
    so a killed run resumes where it stopped and finished arms are not retrained.
    """
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"arms: unknown {unknown}; allowed: {list(ARMS)}")
    run_dir = Path(run_dir)
    tasks = data.task_names
    rows = []
    # single-task networks are always trained: they are the reference of Δm
    singles = train_single_tasks(data, space, config, run_dir / "single", balancer)
    single: Metrics = {t: res.test[t] for t, (_, res) in singles.items()}
    if "single" in arms:
        costs = [net.cost() for net, _ in singles.values()]
        seconds = sum(res.train_seconds for _, res in singles.values())
        params, macs = sum(c.params for c in costs), sum(c.macs for c in costs)
        rows.append(_row("single-task", single, single, data, params, macs, seconds))
    for arm in arms:
        if arm == "single":
            continue
        graph = (space.hard_sharing(tasks) if arm == "hard" else space.independent(tasks)).with_meta(name=arm)
        net, res = train_graph(graph, data, space, config, balancer, run_dir / arm)
        cost = net.cost()
        rows.append(_row(arm, res.test, single, data, cost.params, cost.macs, res.train_seconds))
    table = pd.DataFrame(rows).set_index("arm")
    table.to_csv(run_dir / "baselines.csv")
    (run_dir / "baselines.json").write_text(json.dumps(table.reset_index().to_dict(orient="records"), indent=1))
    return table


def _row(arm: str, test: Metrics, single: Metrics, data: MultiTaskData, params: int, macs: int, seconds: float) -> dict:
    directions = primary_directions(data)
    row: dict = {"arm": arm}
    for t, d in directions.items():
        metric = next(iter(d))
        row[f"{t}.{metric}"] = test[t][metric]
    row["delta_m_%"] = delta_m(test, single, directions)
    row["params"], row["MMACs"], row["train_s"] = params, macs / 1e6, seconds
    return row
