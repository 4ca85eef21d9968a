"""Study tables: Δm per run against the seed-averaged single-task nets, statistics over seeds, paired comparisons."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..graph import graph_key
from ..layout import RunRow, as_rows
from ..metrics import delta_m
from ..units import count, mmacs, seconds_in, seconds_unit

SINGLE = "single-task"
"""Arm name of the per-task networks (the Δm reference)."""
HARD = "hard"
"""Arm name of hard sharing (the multi-task baseline every arm is paired with)."""
EQUAL = "equal"
"""The balancer preferred for reference rows (single-task nets, hard sharing of arms without its balancer)."""
LEVEL = 0.95
"""Confidence level of every interval in a report."""
MIN_SEEDS = 3
"""Seeds per arm below which a report warns that it cannot rank."""
ID_COLUMNS = ("arm", "balancer", "seed", "search_seed", "graph", "run_dir")
"""Columns of :func:`runs_table` that identify a run (not averaged)."""
COST_COLUMNS = ("params", "macs", "train_seconds", "search_seconds")
"""Columns of :func:`runs_table` summarised by their mean only."""
VERSUS = ("the best", "hard sharing", "single-task nets")
"""The references of :func:`paired_table`, in report order."""
OUTCOMES = ("better", "tie", "worse", "untested")
"""Outcome of a paired comparison (see :func:`outcome`)."""
COSTS = {"params": "params", "macs": "MACs"}
"""Cost columns of :func:`runs_table` the verdict weighs Δm against, with their names in words."""

Key = tuple[str, str]  # (arm, balancer)


# ------------------------------------------------------------------ statistics
@dataclasses.dataclass(frozen=True)
class SeedStats:
    """Mean over seeds with its spread and 95 % interval; ``std`` and the interval are NaN when n < 2."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def seed_stats(values: Sequence[float] | pd.Series, level: float = LEVEL) -> SeedStats:
    """n, mean, sample std (ddof 1) and Student-t interval mean ± t_{(1+level)/2, n−1} · std/√n of the finite values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return SeedStats(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return SeedStats(len(x), mean, std, mean - half, mean + half)


def outcome(s: SeedStats) -> str:
    """``better`` when the interval of a difference lies above 0, ``worse`` below, ``tie`` when it contains 0.

    ``untested`` when there is no interval (fewer than 2 paired seeds).
    """
    if s.n < 2:
        return "untested"
    if s.ci_low > 0:
        return "better"
    return "worse" if s.ci_high < 0 else "tie"


def pooled_std(summary: pd.DataFrame, column: str = "delta_m") -> tuple[float, int]:
    """Seed-to-seed std pooled over the rows with n ≥ 2: √(Σ (nᵢ−1) sᵢ² / Σ (nᵢ−1)).

    Returns:
        (std, degrees of freedom Σ (nᵢ−1)); (NaN, 0) when no row has two seeds.
    """
    ok = summary[summary["n"] >= 2]
    dof = int((ok["n"] - 1).sum())
    if dof == 0:
        return math.nan, 0
    return float(np.sqrt(((ok["n"] - 1) * ok[f"{column} std"] ** 2).sum() / dof)), dof


# ------------------------------------------------------------------ tables
def _directions(rows: Sequence[RunRow]) -> dict[str, dict[str, bool]]:
    primary: dict[str, dict[str, bool]] = {}
    for r in rows:
        primary.update(r.directions)
    return primary


def single_task_reference(
    rows: Sequence[RunRow | Mapping[str, Any]], directions: Mapping[str, Mapping[str, bool]]
) -> dict[str, dict[str, float]]:
    """The Δm reference: each task's single-task test metrics averaged over all seeds.

    Uses the single-task rows trained with equal weights when there are any (else all single-task rows).
    """
    singles = [r for r in as_rows(rows) if r.arm == SINGLE]
    if not singles:
        raise ValueError("report: no single-task runs; Δm needs them (keep 'single' in arms.baselines)")
    if any(r.balancer == EQUAL for r in singles):
        singles = [r for r in singles if r.balancer == EQUAL]
    reference = {}
    for task, metrics in directions.items():
        values = [r.test[task] for r in singles if r.task == task]
        if not values:
            raise ValueError(f"report: no single-task run of task {task!r}; Δm needs one per task")
        reference[task] = {m: float(np.mean([v[m] for v in values])) for m in metrics}
    return reference


def _merge_runs(rows: Sequence[RunRow]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Rows keyed by (arm, balancer, seed); the single-task nets of one seed merged (costs and times add up)."""
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        entry = merged.setdefault(
            (r.arm, r.balancer, r.seed),
            {"test": {}, "params": 0, "macs": 0, "train_seconds": 0.0, "search_seconds": 0.0},
        )
        single = r.arm == SINGLE
        entry["test"].update({r.task: r.test[r.task]} if single and r.task is not None else r.test)
        entry["params"] += r.params
        entry["macs"] += r.macs
        entry["train_seconds"] += r.train_seconds
        entry["search_seconds"] = r.search_seconds
        entry["search_seed"] = r.search_seed
        entry["graph"] = None if single else graph_key(r.graph)
        entry.setdefault("folders", []).append(r.folder)
    return merged


def runs_table(rows: Sequence[RunRow | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (arm, balancer, seed): primary test metric per task, Δm, cost, times, search seed, graph.

    Δm (Maninis et al. 2019) is taken against the single-task nets' metrics averaged over all seeds
    (:func:`single_task_reference`), not against the same seed's: a per-seed reference adds its own
    seed noise to every Δm. The single-task arm gets a Δm too (one row per seed, its per-task nets
    merged: params, MACs and times add up); their spread is the seed noise. ``graph`` is the
    canonical :func:`~nas_mtl.search.proxy.graph_key` of the trained graph; ``search_seed`` the seed of
    the search that found it (missing for baselines); ``run_dir`` the run's folder in the study's (the single-task
    nets' folders joined by ``;``; missing for rows not read by :func:`~nas_mtl.layout.load_rows`). ``rows``:
    :class:`~nas_mtl.layout.RunRow` or their dicts.
    """
    rows = as_rows(rows)
    directions = _directions(rows)
    reference = single_task_reference(rows, directions)
    records = []
    for (arm, balancer, seed), e in _merge_runs(rows).items():
        rec: dict[str, Any] = {"arm": arm, "balancer": balancer, "seed": seed, "search_seed": e["search_seed"]}
        rec["graph"] = e["graph"]
        for t, d in directions.items():
            metric = next(iter(d))
            rec[f"{t}.{metric}"] = e["test"].get(t, {}).get(metric, np.nan)
        complete = all(t in e["test"] for t in directions)
        rec["delta_m"] = delta_m(e["test"], reference, directions) if complete else np.nan
        rec.update({c: e[c] for c in COST_COLUMNS})
        known = [f for f in e["folders"] if f is not None]
        rec["run_dir"] = ";".join(known) if len(known) == len(e["folders"]) else None
        records.append(rec)
    runs = pd.DataFrame.from_records(records).sort_values(["arm", "balancer", "seed"]).reset_index(drop=True)
    runs["search_seed"] = runs["search_seed"].astype("Int64")
    return runs


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, balancer), best mean Δm first: ``n`` (seeds), and per metric and Δm the mean ``X``,
    ``X std`` (ddof 1), ``X ci_low`` / ``X ci_high`` (95 % Student t, :func:`seed_stats`); costs and
    times as their mean, and ``params`` / ``macs`` also as ``min`` and ``max`` (they differ where a searched arm's
    seeds retrained different graphs). std and interval are NaN at n = 1.
    """
    quality = [c for c in runs.columns if c not in ID_COLUMNS + COST_COLUMNS]
    records = []
    for (arm, balancer), g in runs.groupby(["arm", "balancer"], sort=False):
        rec: dict[str, Any] = {"arm": arm, "balancer": balancer, "n": len(g)}
        for c in quality:
            s = seed_stats(g[c])
            rec.update({c: s.mean, f"{c} std": s.std, f"{c} ci_low": s.ci_low, f"{c} ci_high": s.ci_high})
        rec.update({c: float(g[c].mean()) for c in COST_COLUMNS})
        for c in ("params", "macs"):  # a searched arm's seeds may retrain different graphs
            rec.update({f"{c} min": float(g[c].min()), f"{c} max": float(g[c].max())})
        records.append(rec)
    summary = pd.DataFrame.from_records(records).set_index(["arm", "balancer"])
    return summary.sort_values("delta_m", ascending=False, kind="stable", na_position="last")


def row_name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def seed_deltas(runs: pd.DataFrame) -> dict[Key, pd.Series]:
    """Δm by seed of every (arm, balancer), in table order."""
    return {key: g.set_index("seed")["delta_m"].dropna() for key, g in runs.groupby(["arm", "balancer"], sort=False)}


def best_of(per_seed: Mapping[Key, pd.Series]) -> Key | None:
    """The row with the highest mean Δm (the first of equal ones, as :func:`summary_table` orders them)."""
    means = {key: dm.mean() for key, dm in per_seed.items() if len(dm)}
    return max(means, key=lambda k: means[k]) if means else None


def _hard_reference(key: Key, per_seed: Mapping[Key, pd.Series]) -> Key | None:
    """Hard sharing with ``key``'s balancer when there is one (and ``key`` is not hard sharing), else hard/equal.

    Falls back to hard sharing's first balancer when it was never trained with equal weights.
    """
    hard = [k for k in per_seed if k[0] == HARD]
    if key[0] != HARD and (HARD, key[1]) in per_seed:
        return (HARD, key[1])
    if (HARD, EQUAL) in per_seed:
        return (HARD, EQUAL)
    return hard[0] if hard else None


def _single_reference(per_seed: Mapping[Key, pd.Series]) -> Key | None:
    singles = [k for k in per_seed if k[0] == SINGLE]
    return (SINGLE, EQUAL) if (SINGLE, EQUAL) in per_seed else (singles[0] if singles else None)


def paired_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Paired differences Δm(row) − Δm(reference) on the seeds both have, for every (arm, balancer).

    References (``versus``): ``the best`` (highest mean Δm), ``hard sharing`` (same balancer when hard
    sharing was trained with it, else hard/equal; hard sharing's other balancers are paired with
    hard/equal) and ``single-task nets`` (their rows' own Δm). Columns: versus, arm, balancer,
    reference, n (paired seeds), mean, std, ci_low, ci_high (paired t, 95 %), outcome (:func:`outcome`).
    A row is not compared with itself.
    """
    per_seed = seed_deltas(runs)
    best = best_of(per_seed)
    refs: dict[str, Callable[[Key], Key | None]] = {
        "the best": lambda key: best,
        "hard sharing": lambda key: _hard_reference(key, per_seed),
        "single-task nets": lambda key: _single_reference(per_seed),
    }
    records = []
    for versus in VERSUS:
        for key, dm in per_seed.items():
            ref = refs[versus](key)
            if ref is None or ref == key:
                continue
            s = seed_stats((dm - per_seed[ref]).dropna())
            head = {"versus": versus, "arm": key[0], "balancer": key[1], "reference": row_name(ref)}
            records.append({**head, **dataclasses.asdict(s), "outcome": outcome(s)})
    columns = ["versus", "arm", "balancer", "reference", *SeedStats.__dataclass_fields__, "outcome"]
    return pd.DataFrame.from_records(records, columns=columns)


# ------------------------------------------------------------------ formatting


def signed_text(x: float, digits: int = 2) -> str:
    """``+1.23``; no "-0.00" for tiny negatives."""
    return "—" if not np.isfinite(x) else f"{round(x, digits) + 0.0:+.{digits}f}"


def interval_text(low: float, high: float, digits: int = 2) -> str:
    return "—" if not np.isfinite(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _mean_std(mean: float, std: float, fmt: str) -> str:
    """``mean ± std``, or the mean alone when there is no std (one seed)."""
    if not np.isfinite(mean):
        return "—"
    return f"{mean:{fmt}} ± {std:{fmt[1:] if fmt.startswith('+') else fmt}}" if np.isfinite(std) else f"{mean:{fmt}}"


def format_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings: "mean ± std" (mean alone at n = 1), Δm with its 95 % interval, params in K/M,
    MACs per sample in millions, times in s/min/h."""
    shown = pd.DataFrame(index=summary.index)
    shown["n"] = summary["n"]
    shown["Δm %"] = [_mean_std(m, s, "+.2f") for m, s in zip(summary["delta_m"], summary["delta_m std"])]
    shown["Δm 95 % CI"] = [
        interval_text(lo, hi) for lo, hi in zip(summary["delta_m ci_low"], summary["delta_m ci_high"])
    ]
    metrics = [c for c in summary.columns if c.endswith(" std") and c != "delta_m std"]
    for c in (m.removesuffix(" std") for m in metrics):
        shown[c] = [_mean_std(m, s, ".4f") for m, s in zip(summary[c], summary[f"{c} std"])]
    _costs(shown, summary)
    unit = seconds_unit([s for s in summary["search_seconds"] if s > 0])
    shown[f"search ({unit[0]})"] = summary["search_seconds"].map(lambda s: seconds_in(s, unit) if s > 0 else "—")
    return shown.reset_index()


def _costs(shown: pd.DataFrame, table: pd.DataFrame) -> None:
    """Cost columns; a row whose seeds differ in cost (several graphs) shows the mean and the range."""

    def cell(name: str, shown_as: Callable[[float], str]) -> list[str]:
        low = table.get(f"{name} min", table[name])
        high = table.get(f"{name} max", table[name])
        return [
            shown_as(m) if lo == hi else f"{shown_as(m)} ({shown_as(lo)}–{shown_as(hi)})"
            for m, lo, hi in zip(table[name], low, high)
        ]

    shown["params"] = cell("params", count)
    shown["MMACs"] = cell("macs", mmacs)
    unit = seconds_unit(list(table["train_seconds"]))
    shown[f"retrain ({unit[0]})"] = table["train_seconds"].map(lambda x: seconds_in(x, unit))


def format_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per run of :func:`runs_table` as strings (metrics to 4 decimals, Δm to 2, costs with units)."""
    shown = runs[["arm", "balancer", "seed"]].copy()
    shown["search seed"] = runs["search_seed"].map(lambda s: "—" if pd.isna(s) else str(s))
    shown["Δm %"] = runs["delta_m"].map(signed_text)
    for c in (c for c in runs.columns if c not in ID_COLUMNS + COST_COLUMNS + ("delta_m",)):
        shown[c] = runs[c].map(lambda v: "—" if not np.isfinite(v) else f"{v:.4f}")
    _costs(shown, runs)
    return shown


def format_paired(paired: pd.DataFrame) -> pd.DataFrame:
    """Paired differences as strings, one row per comparison (``versus`` kept for grouping)."""
    return pd.DataFrame(
        {
            "versus": paired["versus"],
            "arm": paired["arm"],
            "balancer": paired["balancer"],
            "reference": paired["reference"],
            "n": paired["n"],
            "Δm difference": paired["mean"].map(signed_text),
            "95 % CI": [interval_text(lo, hi) for lo, hi in zip(paired["ci_low"], paired["ci_high"])],
            "outcome": paired["outcome"],
        }
    )


__all__ = [
    "COSTS",
    "COST_COLUMNS",
    "EQUAL",
    "HARD",
    "ID_COLUMNS",
    "Key",
    "LEVEL",
    "MIN_SEEDS",
    "OUTCOMES",
    "SINGLE",
    "SeedStats",
    "VERSUS",
    "best_of",
    "format_paired",
    "format_runs",
    "format_table",
    "interval_text",
    "outcome",
    "paired_table",
    "pooled_std",
    "row_name",
    "runs_table",
    "seed_deltas",
    "seed_stats",
    "signed_text",
    "single_task_reference",
    "summary_table",
]
