"""``run_baselines``: the baseline arms at one seed, tabulated (``nas-mtl baselines``), run as a study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..balancing import Balancer, EqualWeights
from ..baselines import ARMS as BASELINE_ARMS
from ..baselines import primary_directions
from ..data import MultiTaskData
from ..layout import Metrics, RunRow
from ..metrics import delta_m
from ..runs import replace_atomic, write_json_atomic
from ..space import SearchSpace
from ..train import TrainConfig
from .local import run_study
from .spec import DataSpec, StudySpec


def run_baselines(
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    run_dir: str | Path,
    arms: Sequence[str] = ("single", "hard"),
    balancer: Balancer | None = None,
) -> pd.DataFrame:
    """Train the baseline arms (one seed: ``config.seed``) and tabulate test metrics, Δm vs single-task, params
    and MACs; also written to ``run_dir/baselines.csv`` and ``.json``.

    The arms run as a study of baselines only (:func:`~nas_mtl.study.run_study`, the same executor and folder
    layout ``arms/ARM/BALANCER/seedS``), so a killed run resumes where it stopped, finished arms are read
    back, and ``nas-mtl report RUN_DIR`` works on the folder. Single-task networks are always trained: they
    are the reference of Δm.
    """
    unknown = sorted(set(arms) - set(BASELINE_ARMS))
    if unknown:
        raise ValueError(f"arms: unknown {unknown}; allowed: {list(BASELINE_ARMS)}")
    spec = StudySpec(
        name="baselines",
        data=DataSpec(data.origin["dataset"], dict(data.origin["kwargs"])) if data.origin else DataSpec(data.name),
        space=space.source,
        train=config,
        seeds=(config.seed,),
        balancers=((balancer or EqualWeights()).spec,),
        baselines=tuple(dict.fromkeys(["single", *arms])),
    )
    rows = run_study(spec, run_dir, progress=config.progress, data=data, space=space)
    # one row per arm (and task): graphs without shared parameters also train with "equal" (identical for the
    # built-in balancers); keep the requested balancer's row where there is one
    chosen: dict[tuple, RunRow] = {}
    for r in rows:
        key = (r.arm, r.task)
        if key not in chosen or r.balancer == spec.balancers[0]:
            chosen[key] = r
    rows = list(chosen.values())
    single_rows = [r for r in rows if r.arm == "single-task"]
    single: Metrics = {r.task: r.test[r.task] for r in single_rows if r.task is not None}
    table = []
    if "single" in arms:
        params, macs = sum(r.params for r in single_rows), sum(r.macs for r in single_rows)
        seconds = sum(r.train_seconds for r in single_rows)
        table.append(_baseline_row("single-task", single, single, data, params, macs, seconds))
    for r in rows:
        if r.arm != "single-task":
            table.append(_baseline_row(r.arm, r.test, single, data, r.params, r.macs, r.train_seconds))
    frame = pd.DataFrame(table).set_index("arm")
    replace_atomic(Path(run_dir) / "baselines.csv", lambda tmp: frame.to_csv(tmp))
    write_json_atomic(frame.reset_index().to_dict(orient="records"), Path(run_dir) / "baselines.json")
    return frame


def _baseline_row(
    arm: str, test: Metrics, single: Metrics, data: MultiTaskData, params: int, macs: int, seconds: float
) -> dict:
    directions = primary_directions(data)
    row: dict = {"arm": arm}
    for t, d in directions.items():
        metric = next(iter(d))
        row[f"{t}.{metric}"] = test[t][metric]
    row["delta_m_%"] = delta_m(test, single, directions)
    row["params"], row["MMACs"], row["train_s"] = params, macs / 1e6, seconds
    return row


__all__ = ["run_baselines"]
