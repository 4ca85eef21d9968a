"""Doing one unit of the plan, the same for both executors: decide it (:func:`resolve`), read back what its folder
already holds (:func:`finished`), or run it (:func:`execute`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..balancing import create_balancer, parse_balancer
from ..balancing.weighting import StaticWeights
from ..baselines import primary_directions, selection_networks, train_graph, train_selection
from ..config import to_options
from ..data import MultiTaskData
from ..layout import (
    CHECKPOINT,
    GRID_RECORD,
    ROW,
    SEARCH_DONE,
    RunRow,
    check_row_place,
    folder,
    read_row,
    read_search_record,
    slug,
)
from ..metrics import delta_m
from ..runs import INTEGER, load_checkpoint, read_json, write_json_atomic
from ..search import SEARCH_METHODS, SearchResult
from ..space import SearchSpace
from ..tracking import mirror_study
from .plan import GRID_BEST, Arm, ArmRun, GridPick, SearchRun, Unit, balancers_for, baseline_arms
from .spec import StudySpec, search_config, seeds_of_search


@dataclass(frozen=True)
class Context:
    """What every unit of one study runs with: the study, its run folder, data and search space."""

    spec: StudySpec
    run_dir: Path
    data: MultiTaskData
    space: SearchSpace

    def folder(self, unit: Unit) -> Path:
        return folder(self.run_dir, unit.key)


def resolve(ctx: Context, unit: Unit) -> Unit | str:
    """``unit`` as it runs now that its needs are done: the grid's best weights filled in; or, as a string, why it
    is not needed (a balancer that trains a searched arm's graphs exactly as equal weighting does, or grid
    weights one of the study's balancers already trains)."""
    if not isinstance(unit, ArmRun):
        return unit
    if unit.search_seed is not None:
        group = searched_group(ctx, unit.arm)
        if unit.balancer not in balancers_for(group, ctx.spec.balancers):
            return f"{unit.balancer} trains {unit.arm}'s graphs exactly as equal weighting does"
    if unit.balancer == GRID_BEST:
        record = read_json(ctx.run_dir / GRID_RECORD, "grid record", ("best",), "delete it to choose again")
        arm = arm_of(ctx, unit)
        if record["best"] in balancers_for([arm], ctx.spec.balancers):
            return f"the grid's best weights {record['best']} are one of the study's balancers"
        return ArmRun(unit.arm, unit.task, record["best"], unit.seed, needs=unit.needs)
    return unit


def finished(ctx: Context, unit: Unit) -> RunRow | SearchResult | None:
    """What the run folder already holds of ``unit`` (a resolved one): a search's result or an arm run's row;
    None when it has to run (the grid choice always does: it only reads rows). A record that another method,
    seed or graph wrote is refused."""
    if isinstance(unit, SearchRun):
        return finished_search(ctx.folder(unit), unit.method, unit.seed)
    if isinstance(unit, ArmRun):
        return finished_row(ctx.folder(unit), arm_of(ctx, unit))
    return None


def execute(ctx: Context, unit: Unit, progress: bool) -> RunRow | SearchResult | None:
    """Run ``unit`` (a resolved one) and write its record; returns the row or search result."""
    if isinstance(unit, SearchRun):
        return run_search(ctx, unit, progress)
    if isinstance(unit, ArmRun):
        return run_arm(ctx, arm_of(ctx, unit), unit, progress)
    pick_grid(ctx, unit)
    return None


def resumed_from(ctx: Context, unit: Unit) -> int | None:
    """The epoch an interrupted training run of ``unit`` continues from (its checkpoint), or None."""
    path = ctx.folder(unit) / CHECKPOINT
    if isinstance(unit, ArmRun) and path.is_file():
        return load_checkpoint(path, "cpu", {"epoch": INTEGER})["epoch"]
    return None


# ------------------------------------------------------------------ searches
def finished_search(out: Path, method: str, seed: int) -> SearchResult | None:
    """The search finished earlier in ``out`` (its ``search.json``), or None; refused when it records another
    method or seed than the study's search of that folder (a file copied from another folder)."""
    done = out / SEARCH_DONE
    if not done.is_file():
        return None
    summary = read_search_record(done, f"delete {out} to rerun that search")
    unit = summary.get("study")  # written by a study since it records the unit; a search run alone has none
    if isinstance(unit, dict):
        for key, value, want in (("method", unit.get("method"), method), ("seed", unit.get("seed"), seed)):
            if value != want:
                where = f"seed{seed}" if key == "seed" else method
                raise ValueError(
                    f"{done}: {key} {value!r} does not match its folder ({where}); delete {out} to rerun it"
                )
    return SearchResult.load(out)


def run_search(ctx: Context, unit: SearchRun, progress: bool) -> SearchResult:
    runner = SEARCH_METHODS.create(unit.method)
    config = search_config(ctx.spec, unit.method, unit.seed, progress)
    out = ctx.folder(unit)
    t0 = time.perf_counter()
    result = runner.run(ctx.data, ctx.space, config, out)
    if result.seconds <= 0:
        result = SearchResult(result.method, result.graph, time.perf_counter() - t0, result.candidates, result.info)
    result.save(out, runner.device(config), study={"method": unit.method, "seed": to_options(config).get("seed", 0)})
    return result


def searched_group(ctx: Context, method: str) -> list[Arm]:
    """The arms of ``method``'s graphs, one per search seed (every search of it must have finished)."""
    group = []
    for s in seeds_of_search(ctx.spec, method):
        search = SearchRun(method, s)
        result = finished_search(ctx.folder(search), method, s)
        if result is None:  # a searched arm runs only after its searches
            raise RuntimeError(f"search {method} seed {s} has no result in {ctx.run_dir}")
        group.append(Arm(method, result.graph.with_meta(name=method), result.seconds, search_seed=s))
    return group


# ------------------------------------------------------------------ arm runs
def arm_of(ctx: Context, unit: ArmRun) -> Arm:
    """The arm ``unit`` trains: a baseline, or the graph its search seed found."""
    if unit.search_seed is not None:
        return next(a for a in searched_group(ctx, unit.arm) if a.search_seed == unit.search_seed)
    return next(
        a for a in baseline_arms(ctx.spec, ctx.data, ctx.space) if (a.name, a.single_task) == (unit.arm, unit.task)
    )


def finished_row(out: Path, arm: Arm) -> RunRow | None:
    """The row of the arm run finished earlier in ``out``, or None; refused when it trained another graph."""
    if not (out / ROW).is_file():
        return None
    row = read_row(out / ROW, f"delete {out} to retrain that run")
    check_row_place(row, out / ROW, slug(arm.label))
    coupling = arm.coupling.to_dict() if arm.coupling is not None else None
    if (dict(row.coupling) if row.coupling is not None else None) != coupling:
        raise ValueError(
            f"{out / ROW}: this run was trained with coupling {row.coupling}, the study's {arm.name!r} now "
            f"has {coupling}; use a new run folder or the same [arms.{arm.name}] options"
        )
    if row.graph != arm.graph or selection_networks(row.graph) != selection_networks(arm.graph):  # meta aside
        searched = f" (search seed {arm.search_seed})" if arm.search_seed is not None else ""
        raise ValueError(
            f"{out / ROW}: this run trained another graph than the study's {arm.name!r}{searched} now has "
            "(changed search_seeds, seeds or search settings?); use a new run folder or the same settings"
        )
    return row


def run_arm(ctx: Context, arm: Arm, unit: ArmRun, progress: bool) -> RunRow:
    """Train ``arm`` as ``unit`` says and write its row."""
    config = dataclasses.replace(ctx.spec.train, seed=unit.seed, progress=progress)
    out = ctx.folder(unit)
    if selection_networks(arm.graph):  # a set of networks, each trained on its tasks, served as one graph
        net, result = train_selection(arm.graph, ctx.data, ctx.space, config, unit.balancer, out)
    else:
        balancer = create_balancer(unit.balancer)
        net, result = train_graph(arm.graph, ctx.data, ctx.space, config, balancer, out, coupling=arm.coupling)
    cost = net.cost()
    row = RunRow(
        arm=arm.name,
        task=arm.single_task,
        balancer=unit.balancer,
        seed=unit.seed,
        graph=arm.graph,
        coupling=arm.coupling.to_dict() if arm.coupling is not None else None,
        test=result.test,
        val=result.val,
        params=cost.params,
        macs=cost.macs,
        train_seconds=result.train_seconds,
        search_seconds=arm.search_seconds,
        search_seed=arm.search_seed,
        env=result.env,
        primary={t: (m, hib) for t, d in primary_directions(ctx.data).items() for m, hib in d.items()},
    )
    write_json_atomic(row.to_dict(), out / ROW)
    return row


# ------------------------------------------------------------------ the grid
def pick_grid(ctx: Context, unit: GridPick) -> str:
    """The grid's best weights by validation Δm against the single-task nets at its seed, recorded with every
    point's score and the grid's cost in ``RUN_DIR/grid.json``; returns the best balancer spec."""
    from .plan import grid_points

    spec = ctx.spec
    assert spec.grid is not None
    singles = [a for a in baseline_arms(spec, ctx.data, ctx.space) if a.single_task is not None]
    single = {}
    for arm in singles:
        row = finished_row(ctx.folder(ArmRun(arm.name, arm.single_task, "equal", unit.seed)), arm)
        assert row is not None, f"grid: the single-task net of {arm.single_task} at seed {unit.seed} is missing"
        single[row.task] = row.val[row.task]
    target = arm_of(ctx, ArmRun(spec.grid.arm, None, "equal", unit.seed))
    results = []
    for point in grid_points(spec, ctx.data):
        row = finished_row(ctx.folder(point), target)
        assert row is not None, f"grid: {point.key} is missing"
        results.append(
            {
                "balancer": point.balancer,
                "weights": StaticWeights(**parse_balancer(point.balancer)[1]).weights,
                "val_delta_m": delta_m(row.val, single, row.directions),
                "train_seconds": row.train_seconds,
            }
        )
    best = max(results, key=lambda r: r["val_delta_m"])  # Δm: positive = better than single-task
    record = {
        "arm": spec.grid.arm,
        "step": spec.grid.step,
        "seed": unit.seed,
        "points": results,
        "best": best["balancer"],
        "runs": len(results),
        "train_seconds": sum(r["train_seconds"] for r in results),
    }
    write_json_atomic(record, ctx.run_dir / GRID_RECORD)
    return best["balancer"]


def run_attrs(ctx: Context, unit: Unit) -> dict[str, Any]:
    """Do ``unit`` as a queued job does (resolve, read back or run, without progress output); returns attributes for
    its record: ``skipped`` (why it was not needed), ``read_back`` (its folder held its result already) or
    ``resumed_from_epoch`` (the checkpoint it continued); the grid choice: ``chosen`` (the best weights)."""
    ready = resolve(ctx, unit)
    if isinstance(ready, str):
        return {"skipped": ready}
    if finished(ctx, ready) is not None:
        return {"read_back": True}
    if isinstance(ready, GridPick):  # not a run's time
        return {"chosen": pick_grid(ctx, ready)}
    epoch = resumed_from(ctx, ready)
    execute(ctx, ready, progress=False)
    return {} if epoch is None else {"resumed_from_epoch": epoch}


def track_finished(ctx: Context, key: str) -> None:
    """With MLflow tracking, log the run just finished in folder ``key``: a running study's runs appear in MLflow as
    they finish, not at its end (:func:`~nas_mtl.tracking.mirror_study`, idempotent; a failure is a warning and the
    study goes on; the study's end checks every run once more)."""
    if ctx.spec.tracking.mlflow is not None and (ctx.run_dir / key).is_dir():
        mirror_study(ctx.run_dir, ctx.spec.name, ctx.spec.tracking.mlflow, False, only=key)


__all__ = [
    "track_finished",
    "Context",
    "arm_of",
    "execute",
    "finished",
    "finished_row",
    "finished_search",
    "pick_grid",
    "resolve",
    "resumed_from",
    "run_arm",
    "run_attrs",
    "run_search",
    "searched_group",
]
