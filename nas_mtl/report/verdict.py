"""The verdict of a study: best row, ties and wins with their intervals, cost fronts, noise floor, searches."""

from __future__ import annotations

import dataclasses
import math
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    SINGLE,
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
        conclusion: 1-3 plain sentences: what to use, what sharing costs or saves here, how sure.
        recommended: ``arm/balancer`` to use: the best, or the cheapest row tied with it (None without Δm).
        run: the recommended row's run folder in the study's (``;``-separated for single-task nets): the seed
            whose Δm is closest to the row's mean; None when the rows carry no folders.
    """

    best: str | None
    outcomes: Mapping[str, Mapping[str, tuple[str, ...]]]
    noise_floor: float
    warnings: tuple[str, ...]
    lines: tuple[str, ...]
    conclusion: tuple[str, ...] = ()
    recommended: str | None = None
    run: str | None = None


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
    pick = recommend(summary, paired, best_key)
    return Verdict(
        None if best_key is None else row_name(best_key),
        outcomes,
        floor,
        tuple(warnings),
        tuple(lines),
        tuple(_conclusion(summary, paired, best_key, pick, floor, dof)),
        None if pick is None else row_name(pick),
        None if pick is None else representative_run(runs, pick),
    )


HOW_TO_READ = (
    "How to read this: each comparison is the difference in Δm between two rows on the seeds both were trained "
    "with, and [low, high] its 95 % interval. Entirely above 0: better with confidence; entirely below 0: worse "
    "with confidence; containing 0: a tie, the seeds cannot tell the two apart (however large the mean difference)."
)


def recommend(summary: pd.DataFrame, paired: pd.DataFrame, best: Key | None) -> Key | None:
    """The row to use: among the best row and the rows tied with it (paired interval containing 0), the one with
    the fewest parameters, then MACs (the best row where none is cheaper)."""
    if best is None:
        return None
    vs_best = paired[(paired["versus"] == "the best") & (paired["outcome"] == "tie")]
    tied = [(a, b) for a, b in zip(vs_best["arm"], vs_best["balancer"]) if (a, b) in summary.index]
    order = [best, *tied]
    return min(order, key=lambda k: (summary.loc[k, "params"], summary.loc[k, "macs"], order.index(k)))


def representative_run(runs: pd.DataFrame, key: Key) -> str | None:
    """The run folder of ``key``'s seed whose Δm is closest to the row's mean (the lowest seed of equal ones)."""
    rows = runs[(runs["arm"] == key[0]) & (runs["balancer"] == key[1])].dropna(subset=["delta_m"])
    if rows.empty or "run_dir" not in rows or rows["run_dir"].isna().any():
        return None
    mean = rows["delta_m"].mean()
    closest = min(rows.itertuples(), key=lambda r: (abs(r.delta_m - mean), r.seed))
    return str(closest.run_dir)


def _conclusion(
    summary: pd.DataFrame, paired: pd.DataFrame, best: Key | None, pick: Key | None, floor: float, dof: int
) -> list[str]:
    """What to use and why, what sharing every layer does here, and how sure (see :class:`Verdict`)."""
    if best is None or pick is None:
        return []
    b, p = summary.loc[best], summary.loc[pick]
    if pick == best:
        tied = paired[(paired["versus"] == "the best") & (paired["outcome"] == "tie")]
        others = (
            "no other row ties it"
            if tied.empty
            else f"{len(tied)} other row{'s' if len(tied) > 1 else ''} tie it, none with fewer parameters"
        )
        first = (
            f"Use {row_name(pick)}: it has the highest mean Δm ({signed_text(b['delta_m'])} % against separate "
            f"single-task networks), and {others}."
        )
    else:
        first = (
            f"Use {row_name(pick)}: it ties the best row, {row_name(best)} (Δm {signed_text(p['delta_m'])} against "
            f"{signed_text(b['delta_m'])} %; the difference is within the seed noise), with "
            f"{_ratio(p['params'], b['params'])} its parameters and {_ratio(p['macs'], b['macs'])} its MACs."
        )
    lines = [first]
    hard = paired[(paired["versus"] == "single-task nets") & (paired["arm"] == HARD)]
    if not hard.empty:
        h = hard.iloc[0]
        key = (h["arm"], h["balancer"])
        said = {
            "better": "gains",
            "worse": "loses",
        }.get(h["outcome"])
        change = (
            f"{said} {abs(h['mean']):.1f} points of Δm against separate networks with confidence"
            if said
            else f"changes Δm by {signed_text(h['mean'])} points against separate networks, a tie"
            if h["outcome"] == "tie"
            else f"changes Δm by {signed_text(h['mean'])} points against separate networks (not tested)"
        )
        single = _single_key(summary)
        cost = (
            f", with {_ratio(summary.loc[key, 'params'], summary.loc[single, 'params'])} their parameters"
            if single is not None
            else ""
        )
        lines.append(f"Sharing every layer ({row_name(key)}) {change}{_bracket(h['ci_low'], h['ci_high'])}{cost}.")
    n = int(summary["n"].min())
    if dof > 0 and n >= 2:
        resolvable = float(stats_t(n) * floor * math.sqrt(2 / n))
        lines.append(
            f"How sure: {n} seed{'s' if n > 1 else ''} per row; Δm varies by {floor:.1f} points from seed to seed, "
            f"so differences smaller than about {resolvable:.1f} points cannot be told apart here."
        )
    else:
        lines.append(f"How sure: not at all; with {n} seed per row there is no interval (use 3 or more seeds).")
    return lines


def export_commands(run: str | None, run_dir: str | Path) -> list[str]:
    """``nas-mtl export`` for the recommended run (one per folder: single-task nets are one network per task),
    its paths under ``run_dir`` as given, quoted for a POSIX shell."""
    if run is None:
        return []
    out = []
    for folder in run.split(";"):
        name = folder.split("/")[1]  # arms/ARM/BALANCER/seedS: the arm
        target = Path(run_dir) / "export" / name
        out.append(f"nas-mtl export {shlex.quote(str(Path(run_dir) / folder))} --out {shlex.quote(str(target))}")
    return out


def stats_t(n: int) -> float:
    """Student's t quantile of a two-sided 95 % interval with n - 1 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf((1 + LEVEL) / 2, n - 1))


def _single_key(summary: pd.DataFrame) -> Key | None:
    singles = [k for k in summary.index if k[0] == SINGLE]
    return (SINGLE, EQUAL) if (SINGLE, EQUAL) in singles else (singles[0] if singles else None)


def _ratio(x: float, y: float) -> str:
    return "the same as" if x == y else f"{x / y:.2g}×" if y > 0 else "—"


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
    "HOW_TO_READ",
    "Verdict",
    "best_at_or_under",
    "cost_front",
    "cost_unit",
    "environment_lines",
    "export_commands",
    "hard_training_seconds",
    "recommend",
    "representative_run",
    "search_facts",
    "verdict",
]
