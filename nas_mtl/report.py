"""Study reports: Δm per run, statistics over seeds, paired comparisons and a verdict (Markdown, HTML, CSV, figures).

What is computed (every number that ranks arms carries its seeds):

- Δm of every run (Maninis et al. 2019, Eq. 5) against the single-task reference **averaged over all
  seeds**. A per-seed reference would add that seed's single-task noise to every Δm of the seed; the
  average has that noise shrunk by √(seeds), and the single-task arm's own rows get a Δm whose spread
  shows the noise (their mean is 0: Δm is linear in the metrics).
- Per (arm, balancer) over its training seeds: n, mean, sample std (ddof 1) and the 95 % Student-t
  interval mean ± t₀.₉₇₅,ₙ₋₁ · std / √n (none at n = 1).
- Paired differences of Δm on the seeds two rows share, against the best row (highest mean Δm), hard
  sharing and the single-task nets, with the paired-t 95 % interval (the one ``scipy.stats.ttest_rel``
  gives). An interval above 0 is "better with confidence", below 0 "worse", containing 0 a tie.
  Intervals are per comparison: no multiplicity correction.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .graph import SharingGraph
from .metrics import delta_m
from .plots import curves_plot, draw_topology, pareto_front, pareto_plot
from .runs import read_json, read_row, replace_atomic
from .search.proxy import graph_key
from .study import GRID_RECORD, ROW, load_rows, slug
from .train import CURVE_COLUMNS, CURVES, read_curves
from .units import count, mmacs
from .units import seconds as duration

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
ID_COLUMNS = ("arm", "balancer", "seed", "search_seed", "graph")
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
def _directions(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    primary: dict[str, list] = {}
    for r in rows:
        primary.update(r["primary"])
    return {t: {m: bool(hib)} for t, (m, hib) in primary.items()}


def single_task_reference(
    rows: Sequence[Mapping[str, Any]], directions: Mapping[str, Mapping[str, bool]]
) -> dict[str, dict[str, float]]:
    """The Δm reference: each task's single-task test metrics averaged over all seeds.

    Uses the single-task rows trained with equal weights when there are any (else all single-task rows).
    """
    singles = [r for r in rows if r["arm"] == SINGLE]
    if not singles:
        raise ValueError("report: no single-task runs; Δm needs them (keep 'single' in arms.baselines)")
    if any(r["balancer"] == EQUAL for r in singles):
        singles = [r for r in singles if r["balancer"] == EQUAL]
    reference = {}
    for task, metrics in directions.items():
        values = [r["test"][task] for r in singles if r["task"] == task]
        if not values:
            raise ValueError(f"report: no single-task run of task {task!r}; Δm needs one per task")
        reference[task] = {m: float(np.mean([v[m] for v in values])) for m in metrics}
    return reference


def _merge_runs(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Rows keyed by (arm, balancer, seed); the single-task nets of one seed merged (costs and times add up)."""
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        entry = merged.setdefault(
            (r["arm"], r["balancer"], r["seed"]),
            {"test": {}, "params": 0, "macs": 0, "train_seconds": 0.0, "search_seconds": 0.0},
        )
        single = r["arm"] == SINGLE
        entry["test"].update({r["task"]: r["test"][r["task"]]} if single else r["test"])
        entry["params"] += r["params"]
        entry["macs"] += r["macs"]
        entry["train_seconds"] += r["train_seconds"]
        entry["search_seconds"] = r["search_seconds"]
        entry["search_seed"] = r.get("search_seed")
        entry["graph"] = None if single else graph_key(SharingGraph.from_dict(r["graph"]))
    return merged


def runs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (arm, balancer, seed): primary test metric per task, Δm, cost, times, search seed, graph.

    Δm (Maninis et al. 2019) is taken against the single-task nets' metrics averaged over all seeds
    (:func:`single_task_reference`), not against the same seed's: a per-seed reference adds its own
    seed noise to every Δm. The single-task arm gets a Δm too (one row per seed, its per-task nets
    merged: params, MACs and times add up); their spread is the seed noise. ``graph`` is the
    canonical :func:`~nas_mtl.search.proxy.graph_key` of the trained graph; ``search_seed`` the seed of
    the search that found it (missing for baselines and rows written before search seeds).
    """
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
        records.append(rec)
    runs = pd.DataFrame.from_records(records).sort_values(["arm", "balancer", "seed"]).reset_index(drop=True)
    runs["search_seed"] = runs["search_seed"].astype("Int64")
    return runs


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, balancer), best mean Δm first: ``n`` (seeds), and per metric and Δm the mean ``X``,
    ``X std`` (ddof 1), ``X ci_low`` / ``X ci_high`` (95 % Student t, :func:`seed_stats`); costs and
    times as their mean. std and interval are NaN at n = 1.
    """
    quality = [c for c in runs.columns if c not in ID_COLUMNS + COST_COLUMNS]
    records = []
    for (arm, balancer), g in runs.groupby(["arm", "balancer"], sort=False):
        rec: dict[str, Any] = {"arm": arm, "balancer": balancer, "n": len(g)}
        for c in quality:
            s = seed_stats(g[c])
            rec.update({c: s.mean, f"{c} std": s.std, f"{c} ci_low": s.ci_low, f"{c} ci_high": s.ci_high})
        rec.update({c: float(g[c].mean()) for c in COST_COLUMNS})
        records.append(rec)
    summary = pd.DataFrame.from_records(records).set_index(["arm", "balancer"])
    return summary.sort_values("delta_m", ascending=False, kind="stable", na_position="last")


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _per_seed(runs: pd.DataFrame) -> dict[Key, pd.Series]:
    """Δm by seed of every (arm, balancer), in table order."""
    return {key: g.set_index("seed")["delta_m"].dropna() for key, g in runs.groupby(["arm", "balancer"], sort=False)}


def _best(per_seed: Mapping[Key, pd.Series]) -> Key | None:
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
    per_seed = _per_seed(runs)
    best = _best(per_seed)
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
            head = {"versus": versus, "arm": key[0], "balancer": key[1], "reference": _name(ref)}
            records.append({**head, **dataclasses.asdict(s), "outcome": outcome(s)})
    columns = ["versus", "arm", "balancer", "reference", *SeedStats.__dataclass_fields__, "outcome"]
    return pd.DataFrame.from_records(records, columns=columns)


# ------------------------------------------------------------------ formatting


def _signed(x: float, digits: int = 2) -> str:
    """``+1.23``; no "-0.00" for tiny negatives."""
    return "—" if not np.isfinite(x) else f"{round(x, digits) + 0.0:+.{digits}f}"


def _interval(low: float, high: float, digits: int = 2) -> str:
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
    shown["Δm 95 % CI"] = [_interval(lo, hi) for lo, hi in zip(summary["delta_m ci_low"], summary["delta_m ci_high"])]
    metrics = [c for c in summary.columns if c.endswith(" std") and c != "delta_m std"]
    for c in (m.removesuffix(" std") for m in metrics):
        shown[c] = [_mean_std(m, s, ".4f") for m, s in zip(summary[c], summary[f"{c} std"])]
    _costs(shown, summary)
    shown["search"] = summary["search_seconds"].map(lambda s: duration(s) if s > 0 else "—")
    return shown.reset_index()


def _costs(shown: pd.DataFrame, table: pd.DataFrame) -> None:
    shown["params"] = table["params"].map(count)
    shown["MMACs"] = table["macs"].map(mmacs)
    shown["retrain"] = table["train_seconds"].map(duration)


def format_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per run of :func:`runs_table` as strings (metrics to 4 decimals, Δm to 2, costs with units)."""
    shown = runs[["arm", "balancer", "seed"]].copy()
    shown["search seed"] = runs["search_seed"].map(lambda s: "—" if pd.isna(s) else str(s))
    shown["Δm %"] = runs["delta_m"].map(_signed)
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
            "Δm difference": paired["mean"].map(_signed),
            "95 % CI": [_interval(lo, hi) for lo, hi in zip(paired["ci_low"], paired["ci_high"])],
            "outcome": paired["outcome"],
        }
    )


# ------------------------------------------------------------------ verdict
@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a study concludes, in plain words; every claim is a paired interval of :func:`paired_table`.

    Args:
        best: ``arm/balancer`` with the highest mean Δm (None when no row has a Δm).
        outcomes: ``{versus: {outcome: names}}`` for the references of :data:`VERSUS` and :data:`OUTCOMES`.
        noise_floor: seed-to-seed std of Δm pooled over rows with n ≥ 2 (:func:`pooled_std`).
        warnings: what keeps the verdict from being a conclusion (too few seeds, runs that disagree).
        lines: the verdict's sentences, in report order.
    """

    best: str | None
    outcomes: Mapping[str, Mapping[str, tuple[str, ...]]]
    noise_floor: float
    warnings: tuple[str, ...]
    lines: tuple[str, ...]


_PHRASES = {
    "better": "Beats {ref} with confidence (paired 95 % interval of the Δm difference above 0)",
    "tie": "Tied with {ref} (indistinguishable: paired 95 % interval of the Δm difference contains 0)",
    "worse": "Worse than {ref} with confidence (paired 95 % interval of the Δm difference below 0)",
    "untested": "Not compared with {ref} (fewer than 2 shared seeds, no interval)",
}


def verdict(runs: pd.DataFrame, rows: Sequence[Mapping[str, Any]] = ()) -> Verdict:
    """The verdict of a study from its :func:`runs_table` (and rows, for their recorded environment).

    Rules: the best row has the highest mean Δm; every other row is tied with it when the paired
    interval of Δm − Δm(best) contains 0, worse when it lies below 0. Likewise against hard sharing
    and the single-task nets (:func:`paired_table`): "beats ... with confidence" = interval above 0.
    Then, per cost (:data:`COSTS`), the Pareto front of mean Δm against mean cost (:func:`cost_front`) and, for
    every row off it, the best row at or under its cost (:func:`best_at_or_under`) with their paired interval.
    Also states the noise floor (:func:`pooled_std`), each search's cost in hard-sharing trainings and
    how often repeated searches returned the same graph.
    """
    summary = summary_table(runs)
    paired = paired_table(runs)
    best_key = _best(_per_seed(runs))
    lines = [] if best_key is None else [_best_line(best_key, summary.loc[best_key])]
    outcomes: dict[str, dict[str, tuple[str, ...]]] = {}
    for versus in VERSUS:
        table = paired[paired["versus"] == versus]
        names = table["arm"] + "/" + table["balancer"]
        outcomes[versus] = {o: tuple(names[table["outcome"] == o]) for o in OUTCOMES}
        items = [
            f"{n} {_signed(m)}{_bracket(lo, hi)}"
            for n, m, lo, hi in zip(names, table["mean"], table["ci_low"], table["ci_high"])
        ]
        for o in OUTCOMES:
            chosen = [item for item, x in zip(items, table["outcome"]) if x == o]
            if chosen:
                lines.append(f"{_PHRASES[o].format(ref=versus)}: {'; '.join(chosen)}.")
    lines += _cost_lines(summary, _per_seed(runs))
    floor, dof = pooled_std(summary)
    lines.append(_noise_line(summary, floor, dof))
    lines += _search_lines(runs)
    tested = int((paired["outcome"] != "untested").sum())
    if tested:
        lines.append(
            f"Intervals are per comparison (no multiplicity correction): of the {tested} paired comparisons, "
            f"about {tested * (1 - LEVEL):.1f} may exclude 0 by chance alone."
        )
    warnings = _seed_warnings(summary) + _environment(rows)[1]
    return Verdict(None if best_key is None else _name(best_key), outcomes, floor, tuple(warnings), tuple(lines))


def _best_line(key: Key, line: pd.Series) -> str:
    low, high = line["delta_m ci_low"], line["delta_m ci_high"]
    interval = f", 95 % CI{_bracket(low, high)}" if np.isfinite(low) else ""
    return f"Best by mean Δm: {_name(key)} (Δm {_signed(line['delta_m'])} %{interval}, n = {int(line['n'])})."


def _bracket(low: float, high: float) -> str:
    """`` [low, high]`` after a difference, nothing when there is no interval."""
    return f" {_interval(low, high)}" if np.isfinite(low) else ""


def cost_front(summary: pd.DataFrame, cost: str) -> list[Key]:
    """The rows of :func:`summary_table` on the Pareto front of (mean Δm up, mean ``cost`` down), cheapest first:
    no other row has at most their cost and at least their Δm, one of them strictly. Rows without Δm are left out."""
    rows = summary[np.isfinite(summary["delta_m"]) & np.isfinite(summary[cost])]
    points = {key: (float(line[cost]), float(line["delta_m"])) for key, line in rows.iterrows()}
    front = set(pareto_front(list(points.values())))
    return sorted((key for key, p in points.items() if p in front), key=lambda key: (points[key][0], -points[key][1]))


def best_at_or_under(summary: pd.DataFrame, key: Key, cost: str) -> Key | None:
    """The row of :func:`summary_table` other than ``key`` with the highest mean Δm among those whose mean ``cost``
    is at most ``key``'s (the cheapest of equal ones); None when there is none."""
    rows = summary[np.isfinite(summary["delta_m"]) & (summary[cost] <= summary.loc[key, cost])].drop(index=[key])
    if rows.empty:
        return None
    return max(rows.index, key=lambda k: (rows.loc[k, "delta_m"], -rows.loc[k, cost]))


def _cost_shown(cost: str, value: float) -> str:
    """``1.5K params``, ``2.3 MMACs``: a cost as the report's tables show it."""
    return f"{mmacs(value)} MMACs" if cost == "macs" else f"{count(value)} {COSTS[cost]}"


_COST_OUTCOMES = {
    "better": "better with confidence",
    "tie": "a tie (the interval contains 0)",
    "worse": "worse on the seeds both have",
    "untested": "untested (fewer than 2 shared seeds)",
}


def _cost_lines(summary: pd.DataFrame, per_seed: Mapping[Key, pd.Series]) -> list[str]:
    """Per cost: the Pareto front, and for every row off it the best row at or under its cost."""
    lines = []
    for cost, label in COSTS.items():
        rows = summary[np.isfinite(summary["delta_m"]) & np.isfinite(summary[cost])]
        front = cost_front(rows, cost)
        if len(rows) < 2:
            continue
        items = ", ".join(
            f"{_name(k)} ({_cost_shown(cost, rows.loc[k, cost])}, Δm {_signed(rows.loc[k, 'delta_m'])})" for k in front
        )
        lines.append(f"Pareto front in {label} (higher mean Δm at lower mean {label}, cheapest first): {items}.")
        others = [_at_or_under(rows, per_seed, key, cost) for key in rows.index if key not in front]
        if others:
            lines.append(f"Cost in {label}: {'; '.join(others)}.")
    return lines


def _at_or_under(rows: pd.DataFrame, per_seed: Mapping[Key, pd.Series], key: Key, cost: str) -> str:
    """The best of ``rows`` at or under ``key``'s cost (a row off the front has one), in words."""
    best = best_at_or_under(rows, key, cost)
    s = seed_stats((per_seed[best] - per_seed[key]).dropna())
    x, y = rows.loc[key], rows.loc[best]
    ratio = " (the same)" if y[cost] == x[cost] else f" ({y[cost] / x[cost]:.2g}× the {COSTS[cost]})"
    return (
        f"at or under {_name(key)}'s {_cost_shown(cost, x[cost])} (Δm {_signed(x['delta_m'])}), {_name(best)} is best "
        f"with Δm {_signed(y['delta_m'])} at {_cost_shown(cost, y[cost])}{ratio}, paired difference "
        f"{_signed(s.mean)}{_bracket(s.ci_low, s.ci_high)}: {_COST_OUTCOMES[outcome(s)]}"
    )


def _noise_line(summary: pd.DataFrame, floor: float, dof: int) -> str:
    if dof == 0:
        return "Noise floor: unknown (no arm has 2 seeds)."
    stds = summary.loc[summary["n"] >= 2, "delta_m std"]
    return (
        f"Noise floor: the seed-to-seed std of Δm is {floor:.2f} points, pooled over {len(stds)} arm/balancer "
        f"rows with ≥ 2 seeds ({dof} degrees of freedom; per-row stds {stds.min():.2f} to {stds.max():.2f})."
    )


def _seed_warnings(summary: pd.DataFrame) -> list[str]:
    few = summary[summary["n"] < MIN_SEEDS]
    if few.empty:
        return []
    if len(few) == len(summary):
        lo, hi = few["n"].min(), few["n"].max()
        which = f"this study has {lo if lo == hi else f'{lo} to {hi}'} seed{'s' if hi > 1 else ''} per arm"
    else:
        which = "these have fewer: " + ", ".join(f"{_name(k)} (n = {n})" for k, n in few["n"].items())
    return [
        f"A ranking needs ≥ {MIN_SEEDS} seeds per arm; {which}. With 1 seed there is no interval, with 2 "
        "the interval is very wide: orderings among them are not conclusions."
    ]


def _hard_training_seconds(runs: pd.DataFrame) -> float:
    """The mean seconds of one hard/equal training: the unit searches and the grid are costed in (NaN: none)."""
    hard = runs[(runs["arm"] == HARD) & (runs["balancer"] == EQUAL)]["train_seconds"]
    return float(hard.mean()) if len(hard) else math.nan


def _search_facts(runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Per searched arm: (its cost per search, in hard/equal trainings and time; how often its search seeds
    found the same graph)."""
    unit = _hard_training_seconds(runs)
    facts = {}
    for arm, g in runs[runs["search_seconds"] > 0].groupby("arm", sort=False):
        seconds = float(g.groupby("search_seed", dropna=False)["search_seconds"].first().mean())
        times = f"{seconds / unit:.1f}× (" if np.isfinite(unit) and unit > 0 else "("
        graphs = g.dropna(subset=["search_seed"]).groupby("search_seed")["graph"].first()
        if len(graphs) < 2:
            repeat = "one search seed, not measured"
        elif graphs.nunique() == 1:
            repeat = f"the same graph from all {len(graphs)} search seeds"
        else:
            same = int(graphs.value_counts().iloc[0])
            repeat = (
                f"{graphs.nunique()} distinct graphs from {len(graphs)} search seeds "
                f"(the most common one {same} of {len(graphs)} times)"
            )
        facts[arm] = (f"{times}{duration(seconds)} per search)", repeat)
    return facts


def _cost_unit(runs: pd.DataFrame) -> str:
    unit = _hard_training_seconds(runs)
    if not np.isfinite(unit):
        return "no hard/equal runs to measure it against"
    return f"in units of one hard/equal training, {duration(unit)} on average"


def _search_lines(runs: pd.DataFrame) -> list[str]:
    """Each search's cost in hard-sharing trainings and, over search seeds, how often it found the same graph."""
    facts = _search_facts(runs)
    if not facts:
        return []
    costs = "; ".join(f"{arm} {cost}" for arm, (cost, _) in facts.items())
    repeats = "; ".join(f"{arm}: {repeat}" for arm, (_, repeat) in facts.items())
    return [f"Search cost ({_cost_unit(runs)}): {costs}.", f"Search repeatability: {repeats}."]


# ------------------------------------------------------------------ reproducibility
_ENV_ORDER = ("python", "torch", "numpy", "threads", "device", "cpu", "gpu", "cuda", "cudnn", "platform")
_ENV_LABELS = {"python": "Python", "torch": "torch", "numpy": "numpy", "cuda": "CUDA", "cudnn": "cuDNN"}
"""How a recorded environment key is named in a report; keys not here (device, cpu, gpu, ...) show bare values."""


def _env_value(key: str, value: Any) -> str:
    if key == "threads":
        return f"{value} thread{'s' if str(value) != '1' else ''}"
    if key in ("device", "cpu", "gpu", "platform"):
        return str(value)
    return f"{_ENV_LABELS.get(key, key)} {value}"


def _environment(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(facts, disagreements) of the ``env`` the rows recorded: distinct values per key with their run counts."""
    recorded = [r["env"] for r in rows if isinstance(r.get("env"), Mapping)]
    values: dict[str, Counter] = {}
    for env in recorded:
        for k, v in env.items():
            values.setdefault(k, Counter())[str(v)] += 1
    keys = [k for k in _ENV_ORDER if k in values] + [k for k in values if k not in _ENV_ORDER]
    agreed = [_env_value(k, next(iter(values[k]))) for k in keys if len(values[k]) == 1]
    facts = [f"{len(recorded)} of {len(rows)} run files record their environment: {', '.join(agreed) or '—'}."]
    disagreements = []
    for k in (k for k in keys if len(values[k]) > 1 or sum(values[k].values()) < len(recorded)):
        counts = ", ".join(f"{_env_value(k, v)} ({n} run files)" for v, n in values[k].most_common())
        missing = len(recorded) - sum(values[k].values())
        disagreements.append(
            f"Runs disagree on {k}: {counts}{f', not recorded ({missing} run files)' if missing else ''}."
        )
    if len(recorded) < len(rows):
        facts.append(f"{len(rows) - len(recorded)} run files (written before environments were recorded) have none.")
    return facts + disagreements, disagreements


# ------------------------------------------------------------------ documents
@dataclasses.dataclass(frozen=True)
class _Figure:
    caption: str
    name: str


@dataclasses.dataclass(frozen=True)
class _Warning:
    text: str


Block = str | list[str] | pd.DataFrame | _Figure | _Warning
"""A paragraph, a bullet list, a table, a figure or a warning of a report section."""


@dataclasses.dataclass(frozen=True)
class _Section:
    heading: str
    blocks: Sequence[Block]
    children: Sequence[_Section] = ()
    anchor: str = ""

    @property
    def id(self) -> str:
        """The HTML id: lower case, every run of other characters than letters and digits one ``-``."""
        return re.sub(r"[^a-z0-9]+", "-", (self.anchor or self.heading).lower()).strip("-")


_TEXT_COLUMNS = frozenset({"arm", "balancer", "reference", "outcome", "versus", "task", "metric", "graph"})
"""Table columns shown left-aligned and sorted as text."""


def _block(block: Block, figures: Path, embed: bool) -> dict[str, Any]:
    """What a template needs of a block (``embed``: figures as data: URIs, read from ``figures``)."""
    if isinstance(block, pd.DataFrame):
        table = block.astype(str)
        return {
            "kind": "table",
            "caption": "",
            "columns": list(table.columns),
            "rows": table.values.tolist(),
            "text": [c in _TEXT_COLUMNS for c in table.columns],
            "markdown": block.to_markdown(index=False, disable_numparse=True),
        }
    if isinstance(block, _Figure):
        out = {"kind": "figure", "caption": block.caption, "name": block.name}
        if embed:
            data = (figures / block.name).read_bytes()
            width, height = struct.unpack(">II", data[16:24])  # the PNG IHDR chunk
            out |= {"src": "data:image/png;base64," + base64.b64encode(data).decode(), "width": width, "height": height}
        return out
    if isinstance(block, _Warning):
        return {"kind": "warning", "text": block.text}
    if isinstance(block, list):
        return {"kind": "list", "lines": block}
    return {"kind": "p", "text": block}


def _render(template: str, title: str, subtitle: str, sections: Sequence[_Section], figures: Path, embed: bool) -> str:
    """The report page from ``nas_mtl/templates/TEMPLATE`` (HTML escaped; Markdown as is)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nas_mtl", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )

    def section(s: _Section) -> dict[str, Any]:
        return {
            "heading": s.heading,
            "id": s.id,
            "blocks": [_block(b, figures, embed) for b in s.blocks],
            "children": [section(c) for c in s.children],
        }

    return env.get_template(template).render(
        title=title, subtitle=subtitle, sections=[section(s) for s in sections], version=_version()
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nas_mtl")
    except PackageNotFoundError:
        return "(not installed)"


_METHOD = (
    "Δm (Maninis et al. 2019): mean relative change of each task's primary test metric vs the single-task "
    "nets, in %, positive = better. The single-task reference is averaged over all seeds (a per-seed "
    "reference adds its own seed noise to every Δm); the single-task nets' own Δm shows the seed noise. "
    "Per arm and balancer: n seeds, the mean and, from 2 seeds on, the std (ddof 1) and the 95 % Student-t "
    "interval of the mean. Paired differences use the training seeds both rows share (paired t, 95 %); hard "
    "sharing is paired with the same balancer when it was trained with it, else hard/equal. Intervals are per "
    "comparison (no multiplicity correction). A searched arm's seeds may retrain graphs from different search "
    "seeds, so its spread includes the search's."
)


@dataclasses.dataclass(frozen=True)
class _Figures:
    """The figures of a report: the Pareto plot, topologies per arm, search figures per method, curves."""

    pareto: _Figure
    topologies: Mapping[str, Sequence[_Figure]]
    searches: Mapping[str, Sequence[_Figure]]
    curves: Sequence[_Figure]


def _sections(
    runs: pd.DataFrame,
    rows: Sequence[Mapping[str, Any]],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    figures: _Figures,
    grid: Mapping[str, Any] | None = None,
    improving: pd.DataFrame | None = None,
) -> list[_Section]:
    """The report in reading order: verdict and main table, each search, then the details."""
    v = verdict(runs, rows)
    paired = format_paired(paired)
    warnings = [_Warning(w) for w in v.warnings]
    if improving is not None and len(improving):
        names = ", ".join(dict.fromkeys(f"{a}/{b}" for a, b in zip(improving["arm"], improving["balancer"])))
        warnings.append(
            _Warning(
                f"still improving at the last epoch: {names} (see Training curves); "
                "their numbers may rise with more epochs"
            )
        )
    sections = [
        _Section("Verdict", [*warnings, list(v.lines)]),
        _Section(
            "Summary (mean over seeds)",
            [
                "Per arm and balancer, best mean Δm first: n seeds, Δm vs the single-task nets (%, mean, std and "
                "95 % interval), each task's primary test metric (mean and std), parameters, multiply-accumulates "
                "per sample, and the mean time of one retraining and of one search.",
                format_table(summary),
                figures.pareto,
            ],
        ),
    ]
    searches = _search_sections(runs, rows, figures)
    if searches:
        sections.append(
            _Section("Searches", [f"What each search found and what it cost ({_cost_unit(runs)})."], searches)
        )
    comparisons = [
        _Section(f"vs {versus}", [paired[paired["versus"] == versus].drop(columns="versus")], anchor=f"vs {versus}")
        for versus in VERSUS
        if (paired["versus"] == versus).any()
    ]
    if comparisons:
        sections.append(_Section("Paired differences", [_PAIRED], comparisons))
    if grid is not None:
        sections.append(_Section("Grid search over static task weights", _grid_blocks(grid, runs)))
    if improving is not None:
        sections.append(_Section("Training curves", [*_curve_blocks(improving), *figures.curves]))
    searched = {c.heading for c in searches}
    baselines = [f for arm, shown in figures.topologies.items() if arm not in searched for f in shown]
    if baselines:
        sections.append(_Section("Baseline graphs", baselines))
    sections.append(
        _Section("Runs", ["Every training run (Δm against the seed-averaged single-task nets).", format_runs(runs)])
    )
    sections.append(_Section("Method", [_METHOD]))
    sections.append(_Section("Reproducibility", [_environment(rows)[0]]))
    return sections


_PAIRED = (
    "Δm(row) − Δm(reference) on the training seeds both share, with the paired-t 95 % interval: an interval "
    "above 0 means better, below 0 worse, containing 0 a tie."
)


def _graphs(rows: Sequence[Mapping[str, Any]]) -> dict[str, SharingGraph]:
    """Every multi-task graph the rows trained, by its canonical key (what ``runs_table``'s graph column holds)."""
    return {graph_key(g := SharingGraph.from_dict(r["graph"])): g for r in rows if r["arm"] != SINGLE}


def _search_sections(runs: pd.DataFrame, rows: Sequence[Mapping[str, Any]], figures: _Figures) -> list[_Section]:
    """Per search method: the graphs it found (in words, with the search seeds), its cost and its figures."""
    facts = _search_facts(runs)
    graphs = _graphs(rows)
    out = []
    for arm in dict.fromkeys([*facts, *figures.searches]):
        lines = []
        found = runs[runs["arm"] == arm]
        keys = list(dict.fromkeys(found["graph"].dropna()))
        for i, key in enumerate(keys):
            seeds = sorted({int(s) for s in found.loc[found["graph"] == key, "search_seed"].dropna()})
            which = f"Graph {i + 1} of {len(keys)}" if len(keys) > 1 else "Graph"
            lines.append(f"{which}{f' (search seeds {seeds})' if seeds else ''}: {graphs[key].describe()}.")
        if arm in facts:
            cost, repeat = facts[arm]
            lines += [f"Cost: {cost}.", f"Repeatability: {repeat}."]
        else:
            lines.append("No retrained arm uses this search yet.")
        out.append(
            _Section(
                arm,
                [lines, *figures.topologies.get(arm, ()), *figures.searches.get(arm, ())],
                anchor=f"search {arm}",
            )
        )
    return out


def _curve_blocks(improving: pd.DataFrame) -> list[Block]:
    rule = (
        "Each run keeps its per-epoch training and validation losses and validation primary metric "
        "(curves.csv in its folder; all runs in this report's curves.csv; figures below). Still improving: the "
        "mean over seeds is best at the last epoch and rose over the last quarter of the epochs by more than "
        "the seed-to-seed std of the final value."
    )
    if not len(improving):
        return [rule, "No arm was still improving at the end of training by that rule."]
    table = improving.assign(
        gain=improving["gain"].map(lambda v: f"{v:+.3g}"), final_std=improving["final_std"].map(lambda v: f"{v:.3g}")
    )
    return [rule, table.rename(columns={"gain": "gain (last quarter)", "final_std": "final std"})]


def _grid_blocks(grid: Mapping[str, Any], runs: pd.DataFrame) -> list[Block]:
    """What the grid tried (validation Δm of each weight vector at one seed), what it chose and what it cost."""
    unit = _hard_training_seconds(runs)
    cost = f"{grid['train_seconds']:.1f} s"
    if np.isfinite(unit) and unit > 0:
        cost += f", {grid['train_seconds'] / unit:.1f}× one hard/equal training"
    line = (
        f"{grid['runs']} weight vectors (step {grid['step']} of the simplex, weights summing to T) trained on the "
        f"{grid['arm']} graph at seed {grid['seed']} and scored by validation Δm; the best, {grid['best']}, is "
        f"retrained over every seed above (balancer {grid['best']}). Cost of the grid: {cost}."
    )
    table = pd.DataFrame(
        [
            {**{f"w {t}": f"{w:g}" for t, w in p["weights"].items()}, "val Δm %": _signed(p["val_delta_m"])}
            for p in grid["points"]
        ]
    )
    return [line, table]


def load_curves(run_dir: str | Path) -> pd.DataFrame:
    """Every arm run's ``curves.csv`` with its arm, balancer and seed (empty when no run kept curves)."""
    frames = []
    for path in sorted(Path(run_dir).glob(f"arms/**/{ROW}")):
        if not (path.parent / CURVES).is_file():
            continue
        row = read_row(path, f"delete {path.parent} to retrain that run (nas-mtl study)")
        frame = pd.DataFrame(read_curves(path.parent / CURVES), columns=CURVE_COLUMNS)
        frame = frame.astype({c: float for c in ("train_loss", "val_loss", "val_metric", "seconds")})
        directions = {t: bool(hib) for t, (_, hib) in row.get("primary", {}).items()}
        frame = frame.assign(
            arm=row["arm"],
            balancer=row["balancer"],
            seed=row["seed"],
            higher_is_better=frame["task"].map(lambda t, d=directions: d.get(t, True)),
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def still_improving(curves: pd.DataFrame) -> pd.DataFrame:
    """Arms whose validation primary metric still rose at the end of training, per (arm, balancer, task).

    The rule: over the seeds, the mean curve is best at the last epoch and its gain over the last quarter of
    the epochs (from epoch ⌊3E/4⌋) is larger than the seed-to-seed std of the final value (with one seed: any
    gain). Columns: arm, balancer, task, metric, gain (in the metric's units, signed so that > 0 is better),
    final_std, seeds.
    """
    out = []
    if curves.empty:
        return pd.DataFrame(columns=["arm", "balancer", "task", "metric", "gain", "final_std", "seeds"])
    for (arm, balancer, task), g in curves.dropna(subset=["val_metric"]).groupby(["arm", "balancer", "task"]):
        table = g.pivot_table(index="epoch", columns="seed", values="val_metric")
        last = int(table.index.max())
        start = max(int(table.index.min()), (3 * last) // 4)
        if last <= start or start not in table.index:
            continue
        sign = 1.0 if bool(g["higher_is_better"].iloc[0]) else -1.0
        mean = table.mean(axis=1) * sign
        gain = float(mean.loc[last] - mean.loc[start])
        final_std = float(table.loc[last].std()) if table.shape[1] > 1 else 0.0
        if mean.idxmax() == last and gain > final_std:
            out.append((arm, balancer, task, g["metric"].iloc[0], gain, final_std, table.shape[1]))
    return pd.DataFrame(out, columns=["arm", "balancer", "task", "metric", "gain", "final_std", "seeds"])


def _curve_figures(curves: pd.DataFrame, figures: Path) -> list[_Figure]:
    """Per arm, the validation primary metric of each task by epoch: mean over seeds, band from min to max."""
    out = []
    if curves.empty:
        return out
    for arm, g in curves.dropna(subset=["val_metric"]).groupby("arm", sort=False):
        panels, labels = {}, {}
        for (task, balancer), h in g.groupby(["task", "balancer"], sort=False):
            table = h.pivot_table(index="epoch", columns="seed", values="val_metric")
            panels.setdefault(task, {})[balancer] = list(
                zip(table.index, table.mean(axis=1), table.min(axis=1), table.max(axis=1))
            )
            labels[task] = f"val {h['metric'].iloc[0]}"
        name = f"curves_{slug(arm)}.png"
        seeds = g["seed"].nunique()
        curves_plot(
            panels, labels, f"{arm}: validation by epoch (mean over {seeds} seeds, band: min-max)", figures / name
        )
        out.append(_Figure(f"training curves: {arm}", name))
    return out


def _topologies(runs: pd.DataFrame, rows: Sequence[Mapping[str, Any]], figures: Path) -> dict[str, list[_Figure]]:
    """Per arm, one topology figure per distinct graph (searches repeated over seeds may find several)."""
    graphs = _graphs(rows)
    out: dict[str, list[_Figure]] = {}
    for arm, g in runs[runs["arm"] != SINGLE].groupby("arm", sort=False):
        keys = list(dict.fromkeys(g["graph"]))
        for i, key in enumerate(keys):
            seeds = sorted({int(s) for s in g.loc[g["graph"] == key, "search_seed"].dropna()})
            caption = f"topology: {arm}" + (f", graph {i + 1} of {len(keys)}" if len(keys) > 1 else "")
            caption += f" (search seeds {seeds})" if seeds else ""
            name = f"topology_{slug(arm)}{f'_{i + 1}' if i else ''}.png"
            draw_topology(graphs[key], caption.removeprefix("topology: "), figures / name)
            out.setdefault(arm, []).append(_Figure(caption, name))
    return out


def _search_figures(run_dir: Path, figures: Path) -> dict[str, list[_Figure]]:
    """Per search method, the figures its searches left under ``search/``, copied to
    ``figures/search_METHOD_NAME.png``; their folders (e.g. ``seed5``) join the name only where two figures of
    one method share a name."""
    pngs = sorted(run_dir.glob("search/*/**/*.png"))
    where = [png.relative_to(run_dir / "search").parts for png in pngs]
    short = Counter(f"{parts[0]}_{parts[-1]}" for parts in where)
    out: dict[str, list[_Figure]] = {}
    for png, parts in zip(pngs, where):
        shown = parts if short[f"{parts[0]}_{parts[-1]}"] > 1 else (parts[0], parts[-1])
        target = figures / ("search_" + "_".join(map(slug, shown)))
        replace_atomic(target, lambda tmp, png=png: shutil.copyfile(png, tmp))
        out.setdefault(parts[0], []).append(_Figure(f"{' '.join(shown[:-1])}: {png.stem}", target.name))
    return out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Verdict, tables and figures for the study in ``run_dir``; returns the files written.

    Writes ``report.md`` and ``report.html`` (verdict and main table first, then one section per search, then
    the details; the HTML is one self-contained file with its figures embedded), ``runs.csv`` (:func:`runs_table`),
    ``summary.csv`` (:func:`summary_table`: n, mean, std, ci_low, ci_high), ``paired.csv``
    (:func:`paired_table`), ``curves.csv`` (every run's per-epoch curves, :func:`load_curves`) and ``figures/``
    (Pareto front Δm vs params with 95 % intervals, one topology per graph, the figures the searches left in
    their folders, and per arm its validation curves with arms still improving flagged).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    figures = out_dir / "figures"
    rows = load_rows(run_dir)
    curves = load_curves(run_dir)  # every record is read (and checked) before anything is written
    figures.mkdir(parents=True, exist_ok=True)
    runs = runs_table(rows)
    summary = summary_table(runs)
    files = {name: out_dir / name for name in ("runs.csv", "summary.csv", "paired.csv", "report.md", "report.html")}
    replace_atomic(files["runs.csv"], lambda tmp: runs.to_csv(tmp, index=False))
    replace_atomic(files["summary.csv"], lambda tmp: summary.to_csv(tmp))
    paired = paired_table(runs)
    replace_atomic(files["paired.csv"], lambda tmp: paired.to_csv(tmp, index=False))

    points = [(_name(k), float(r["params"]), float(r["delta_m"])) for k, r in summary.iterrows()]
    intervals = list(zip(summary["delta_m ci_low"], summary["delta_m ci_high"]))
    title = "arms: mean over seeds, 95 % interval"
    pareto_plot(points, "parameters", "Δm vs single-task (%)", title, figures / "pareto_params.png", intervals)
    if not curves.empty:
        replace_atomic(out_dir / "curves.csv", lambda tmp: curves.to_csv(tmp, index=False))
        files["curves.csv"] = out_dir / "curves.csv"
    shown = _Figures(
        pareto=_Figure("Δm vs parameters (bars: 95 % interval over seeds)", "pareto_params.png"),
        topologies=_topologies(runs, rows, figures),
        searches=_search_figures(run_dir, figures),
        curves=_curve_figures(curves, figures),
    )

    title = _study_title(run_dir)
    grid_file = run_dir / GRID_RECORD
    grid = read_json(grid_file, "grid search record", ("points", "best")) if grid_file.is_file() else None
    sections = _sections(runs, rows, summary, paired, shown, grid, still_improving(curves))
    seeds = sorted(runs["seed"].unique())
    subtitle = (
        f"{len(summary)} arm/balancer rows, {len(runs)} training runs over seeds {', '.join(map(str, seeds))}; "
        f"written {time.strftime('%Y-%m-%d %H:%M')}."
    )
    markdown = _render("report.md.j2", title, subtitle, sections, figures, embed=False)
    page = _render("report.html.j2", title, subtitle, sections, figures, embed=True)
    replace_atomic(files["report.md"], lambda tmp: tmp.write_text(markdown))
    replace_atomic(files["report.html"], lambda tmp: tmp.write_text(page))
    return files


def _study_title(run_dir: Path) -> str:
    toml = run_dir / "study.toml"
    if toml.is_file():
        import tomllib

        name = tomllib.loads(toml.read_text()).get("name")
        if name:
            return f"Study: {name}"
    return f"Study: {run_dir.name}"


__all__ = [
    "COSTS",
    "LEVEL",
    "MIN_SEEDS",
    "SeedStats",
    "Verdict",
    "best_at_or_under",
    "cost_front",
    "format_paired",
    "format_runs",
    "format_table",
    "outcome",
    "paired_table",
    "pooled_std",
    "runs_table",
    "seed_stats",
    "single_task_reference",
    "summary_table",
    "verdict",
    "write_report",
]
