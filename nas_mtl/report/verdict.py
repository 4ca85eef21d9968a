"""The verdict of a study: best row, ties and wins with their intervals, cost fronts, noise floor, searches."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..layout import RunRow, as_rows
from ..plots import pareto_front
from ..units import count, mmacs
from ..units import seconds as duration
from .tables import (
    COSTS,
    EQUAL,
    HARD,
    LEVEL,
    MIN_SEEDS,
    OUTCOMES,
    VERSUS,
    Key,
    best_of,
    interval_text,
    outcome,
    paired_table,
    pooled_std,
    row_name,
    seed_deltas,
    seed_stats,
    signed_text,
    summary_table,
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


def verdict(runs: pd.DataFrame, rows: Sequence[RunRow | Mapping[str, Any]] = ()) -> Verdict:
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
    best_key = best_of(seed_deltas(runs))
    lines = [] if best_key is None else [_best_line(best_key, summary.loc[best_key])]
    outcomes: dict[str, dict[str, tuple[str, ...]]] = {}
    for versus in VERSUS:
        table = paired[paired["versus"] == versus]
        names = table["arm"] + "/" + table["balancer"]
        outcomes[versus] = {o: tuple(names[table["outcome"] == o]) for o in OUTCOMES}
        items = [
            f"{n} {signed_text(m)}{_bracket(lo, hi)}"
            for n, m, lo, hi in zip(names, table["mean"], table["ci_low"], table["ci_high"])
        ]
        for o in OUTCOMES:
            chosen = [item for item, x in zip(items, table["outcome"]) if x == o]
            if chosen:
                lines.append(f"{_PHRASES[o].format(ref=versus)}: {'; '.join(chosen)}.")
    lines += _cost_lines(summary, seed_deltas(runs))
    floor, dof = pooled_std(summary)
    lines.append(_noise_line(summary, floor, dof))
    lines += _search_lines(runs)
    tested = int((paired["outcome"] != "untested").sum())
    if tested:
        lines.append(
            f"Intervals are per comparison (no multiplicity correction): of the {tested} paired comparisons, "
            f"about {tested * (1 - LEVEL):.1f} may exclude 0 by chance alone."
        )
    warnings = _seed_warnings(summary) + environment_lines(rows)[1]
    return Verdict(None if best_key is None else row_name(best_key), outcomes, floor, tuple(warnings), tuple(lines))


def _best_line(key: Key, line: pd.Series) -> str:
    low, high = line["delta_m ci_low"], line["delta_m ci_high"]
    interval = f", 95 % CI{_bracket(low, high)}" if np.isfinite(low) else ""
    return f"Best by mean Δm: {row_name(key)} (Δm {signed_text(line['delta_m'])} %{interval}, n = {int(line['n'])})."


def _bracket(low: float, high: float) -> str:
    """`` [low, high]`` after a difference, nothing when there is no interval."""
    return f" {interval_text(low, high)}" if np.isfinite(low) else ""


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
            f"{row_name(k)} ({_cost_shown(cost, rows.loc[k, cost])}, Δm {signed_text(rows.loc[k, 'delta_m'])})"
            for k in front
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
        f"at or under {row_name(key)}'s {_cost_shown(cost, x[cost])} (Δm {signed_text(x['delta_m'])}), "
        f"{row_name(best)} is best "
        f"with Δm {signed_text(y['delta_m'])} at {_cost_shown(cost, y[cost])}{ratio}, paired difference "
        f"{signed_text(s.mean)}{_bracket(s.ci_low, s.ci_high)}: {_COST_OUTCOMES[outcome(s)]}"
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
        which = "these have fewer: " + ", ".join(f"{row_name(k)} (n = {n})" for k, n in few["n"].items())
    return [
        f"A ranking needs ≥ {MIN_SEEDS} seeds per arm; {which}. With 1 seed there is no interval, with 2 "
        "the interval is very wide: orderings among them are not conclusions."
    ]


def hard_training_seconds(runs: pd.DataFrame) -> float:
    """The mean seconds of one hard/equal training: the unit searches and the grid are costed in (NaN: none)."""
    hard = runs[(runs["arm"] == HARD) & (runs["balancer"] == EQUAL)]["train_seconds"]
    return float(hard.mean()) if len(hard) else math.nan


def search_facts(runs: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Per searched arm: (its cost per search, in hard/equal trainings and time; how often its search seeds
    found the same graph)."""
    unit = hard_training_seconds(runs)
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


def cost_unit(runs: pd.DataFrame) -> str:
    unit = hard_training_seconds(runs)
    if not np.isfinite(unit):
        return "no hard/equal runs to measure it against"
    return f"in units of one hard/equal training, {duration(unit)} on average"


def _search_lines(runs: pd.DataFrame) -> list[str]:
    """Each search's cost in hard-sharing trainings and, over search seeds, how often it found the same graph."""
    facts = search_facts(runs)
    if not facts:
        return []
    costs = "; ".join(f"{arm} {cost}" for arm, (cost, _) in facts.items())
    repeats = "; ".join(f"{arm}: {repeat}" for arm, (_, repeat) in facts.items())
    return [f"Search cost ({cost_unit(runs)}): {costs}.", f"Search repeatability: {repeats}."]


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


def environment_lines(rows: Sequence[RunRow | Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(facts, disagreements) of the ``env`` the rows recorded: distinct values per key with their run counts."""
    rows = as_rows(rows)
    recorded = [r.env for r in rows if isinstance(r.env, Mapping)]
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


__all__ = [
    "Verdict",
    "best_at_or_under",
    "cost_front",
    "cost_unit",
    "environment_lines",
    "hard_training_seconds",
    "search_facts",
    "verdict",
]
