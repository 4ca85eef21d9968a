"""The network-selection budget curve of a study: Standley et al.'s Figure 3 (ICML 2020) in Δm terms, with
intervals over search seeds.

Each selection search (:mod:`nas_mtl.search.network_selection`) records in its ``search.json`` a curve: per budget
(in backbones), the Δm on the measured networks' test metrics of the selection each predictor makes on
validation, the expected random selection, the all-in-one network and the independent networks. A record is data:
every value must be a number or null, every line as long as the budgets, or the report names the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..layout import SEARCH_DONE, read_search_record
from ..plots import curves_plot
from ..search.network_selection import CURVE_METHODS
from .tables import interval_text, seed_stats

SELECTION_METHOD = "selection"
LINES = CURVE_METHODS
EXPLAINED = (
    "Δm (%) of the selection each line makes on the validation table, scored on the measured networks' test "
    "metrics, by inference budget (in backbones); mean over search seeds with the 95 % interval. optimal: the "
    "best set of measured networks; hoa / tag: the selection on Standley's (from the pairs) or TAG's (from the "
    "affinity) predicted table, blank where it picks a network nobody trained; random: Standley's random "
    "selection (expected value); all-in-one: one hard-shared network; independent: one network per task (0 by "
    "construction). The retrained selection at the study's budget is the searched arm in the Summary."
)


def selection_curves(run_dir: str | Path) -> pd.DataFrame:
    """One row per (search, budget, line) of every finished selection search under ``run_dir/search``: columns
    search, budget, line, n (search seeds), mean, ci_low, ci_high."""
    run_dir = Path(run_dir)
    seeds: dict[tuple[str, float, str], list[float]] = {}
    for done in sorted(run_dir.glob(f"search/*/*/{SEARCH_DONE}")):
        record = read_search_record(done, f"delete {done.parent} to rerun that search")
        info = record.get("info") or {}
        if record["method"] != SELECTION_METHOD or "curve" not in info:
            continue
        for budget, line, value in _curve_points(info["curve"], done):
            seeds.setdefault((done.parent.parent.name, budget, line), []).append(value)
    rows = []
    for (search, budget, line), values in seeds.items():
        s = seed_stats(values)
        rows.append(
            {"search": search, "budget": budget, "line": line, "n": s.n, "mean": s.mean}
            | {"ci_low": s.ci_low, "ci_high": s.ci_high}
        )
    return pd.DataFrame(rows, columns=["search", "budget", "line", "n", "mean", "ci_low", "ci_high"])


def _curve_points(curve: object, source: Path) -> list[tuple[float, str, float]]:
    """(budget, line, value) of a recorded curve (nulls left out), checked as data."""
    where = f"{source}: info.curve"
    budgets = curve.get("budgets") if isinstance(curve, dict) else None
    if not isinstance(budgets, list) or not all(_number(b) for b in budgets):
        raise ValueError(f"{where}.budgets: expected a list of numbers")
    out = []
    for line in LINES:
        values = curve.get(line)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(budgets):
            raise ValueError(f"{where}.{line}: expected {len(budgets)} values, one per budget")
        for budget, value in zip(budgets, values):
            if value is not None and not _number(value):
                raise ValueError(f"{where}.{line}: expected numbers or null, got {value!r}")
            if value is not None:
                out.append((float(budget), line, float(value)))
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def curve_table(curves: pd.DataFrame, search: str) -> pd.DataFrame:
    """The shown table of ``search``'s curve: one row per budget, per line "mean [low, high]"."""
    part = curves[curves["search"] == search]
    table = pd.DataFrame({"budget": sorted(part["budget"].unique())})
    for line in [x for x in LINES if x in set(part["line"])]:
        cells = {
            r.budget: f"{r.mean:+.2f} {interval_text(r.ci_low, r.ci_high)}" if r.n > 1 else f"{r.mean:+.2f}"
            for r in part[part["line"] == line].itertuples()
        }
        table[line] = [cells.get(b, "") for b in table["budget"]]
    table["budget"] = [f"{b:g}" for b in table["budget"]]
    return table


def curve_figure(curves: pd.DataFrame, search: str, path: Path) -> None:
    """The budget curve of ``search`` (bands: 95 % interval over search seeds) written to ``path``."""
    part = curves[curves["search"] == search]
    lines = {}
    for line in [x for x in LINES if x in set(part["line"])]:
        points = part[part["line"] == line].sort_values("budget")
        lines[line] = [
            (r.budget, r.mean, r.ci_low if r.n > 1 else r.mean, r.ci_high if r.n > 1 else r.mean)
            for r in points.itertuples()
        ]
    curves_plot({f"{search}: Δm by budget": lines}, {f"{search}: Δm by budget": "test Δm (%)"}, "", path, "budget")


def searches_with_curves(curves: pd.DataFrame) -> Sequence[str]:
    return list(dict.fromkeys(curves["search"]))


__all__ = ["EXPLAINED", "LINES", "curve_figure", "curve_table", "searches_with_curves", "selection_curves"]
