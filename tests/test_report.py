"""Reports from synthetic study rows: Δm reference, seed statistics vs scipy, paired comparisons, verdict."""

import base64
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nas_mtl.graph import SharingGraph
from nas_mtl.plots import _label_offsets, pareto_plot
from nas_mtl.report import (
    best_at_or_under,
    cost_front,
    paired_table,
    runs_table,
    seed_stats,
    summary_table,
    verdict,
    write_report,
)
from nas_mtl.study import slug

TASKS = ("a", "b")
LAYERS = ("l0", "l1")
SEEDS = (0, 1, 2, 3, 4)
# single-task test accuracy per seed; the seed-averaged reference is a = 0.80, b = 0.60
SINGLE = {"a": (0.80, 0.84, 0.76, 0.82, 0.78), "b": (0.60, 0.63, 0.57, 0.61, 0.59)}
REFERENCE = {"a": 0.80, "b": 0.60}
# Δm (%) per seed by construction; branch is the clear winner (paired differences vs hard 7.5..9),
# affinity is within noise of branch and adashare within noise of hard sharing (paired differences ≤ 0.3)
DELTA_M = {
    ("hard", "equal"): (1.0, 2.0, 0.0, 1.5, 0.5),
    ("branch", "equal"): (9.0, 10.5, 8.0, 9.0, 9.5),
    ("affinity", "equal"): (9.1, 10.3, 8.2, 8.9, 9.4),
    ("adashare", "equal"): (1.2, 1.8, 0.3, 1.2, 0.4),
    ("independent", "equal"): (-3.0, -2.0, -4.0, -3.5, -2.5),
}
EPS = 1e-9  # Δm of a few float64 divisions of O(1) numbers, in percent: far below any margin used here


def _graph(arm, tasks=TASKS):
    if arm == "independent":
        return SharingGraph.independent(tasks, LAYERS)
    if arm == "branched":
        return SharingGraph.branched(tasks, LAYERS, [[list(tasks)], [[t] for t in tasks]])
    return SharingGraph.hard_sharing(tasks, LAYERS)


def _row(arm, balancer, seed, test, task=None, **extra):
    graph = _graph("hard" if task else arm, (task,) if task else TASKS)
    return {
        "arm": arm,
        "task": task,
        "balancer": balancer,
        "seed": seed,
        "graph": graph.to_dict(),
        "test": test,
        "val": test,
        "params": 1000 if task else 1500,
        "macs": 10_000,
        "train_seconds": 2.0,
        "search_seconds": 0.0,
        "primary": {t: ["accuracy", True] for t in TASKS},
        **extra,
    }


def _multi(dm):
    """Test metrics with Δm = ``dm`` % against REFERENCE: every task ``dm`` % above its reference."""
    return {t: {"accuracy": REFERENCE[t] * (1 + dm / 100)} for t in TASKS}


def _single_rows(seeds=SEEDS, **extra):
    return [
        _row("single-task", "equal", s, {t: {"accuracy": SINGLE[t][i]}}, task=t, **extra)
        for i, s in enumerate(seeds)
        for t in TASKS
    ]


def _study_rows(delta_m=DELTA_M, seeds=SEEDS, **extra):
    rows = _single_rows(seeds, **extra)
    for (arm, balancer), values in delta_m.items():
        rows += [_row(arm, balancer, s, _multi(v), **extra) for s, v in zip(seeds, values)]
    return rows


def _write_run(tmp_path, rows):
    for r in rows:
        arm = f"{r['arm']}/{r['task']}" if r["task"] else r["arm"]
        folder = tmp_path / "run" / "arms" / slug(arm) / slug(r["balancer"]) / f"seed{r['seed']}"
        folder.mkdir(parents=True)
        (folder / "row.json").write_text(json.dumps(r))
    return tmp_path / "run"


def _delta_m(runs, arm, balancer="equal"):
    return runs[(runs.arm == arm) & (runs.balancer == balancer)].set_index("seed")["delta_m"]


def test_delta_m_uses_the_seed_averaged_single_task_reference():
    rows = _single_rows() + [_row("hard", "equal", 1, {"a": {"accuracy": 0.88}, "b": {"accuracy": 0.57}})]
    runs = runs_table(rows)
    # by hand: reference a = 4.00 / 5 = 0.80, b = 3.00 / 5 = 0.60; Δm = (+10 % − 5 %) / 2 = +2.5 %
    # (seed 1's own single-task nets, 0.84 and 0.63, would give (+4.76 % − 9.52 %) / 2 = −2.38 %)
    expected = 100 / 2 * ((0.88 - 0.80) / 0.80 + (0.57 - 0.60) / 0.60)
    assert expected == pytest.approx(2.5, abs=EPS)
    assert _delta_m(runs, "hard")[1] == pytest.approx(expected, abs=EPS)
    # the single-task nets get a Δm per seed too: seed 1 is +5 % on both tasks; their mean is 0 (Δm is linear)
    single = _delta_m(runs, "single-task")
    assert single[1] == pytest.approx(100 / 2 * (0.04 / 0.80 + 0.03 / 0.60), abs=EPS)
    assert single[2] == pytest.approx(100 / 2 * (-0.04 / 0.80 - 0.03 / 0.60), abs=EPS)
    assert single.mean() == pytest.approx(0.0, abs=EPS)
    assert len(single) == len(SEEDS) and (runs.loc[runs.arm == "single-task", "params"] == 2000).all()


def test_summary_intervals_are_student_t_over_seeds():
    summary = summary_table(runs_table(_study_rows()))
    for key, values in DELTA_M.items():
        line = summary.loc[key]
        x = np.asarray(values)
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert line["n"] == len(SEEDS)
        assert line["delta_m"] == pytest.approx(x.mean(), abs=EPS)
        assert line["delta_m std"] == pytest.approx(x.std(ddof=1), abs=EPS)
        assert (line["delta_m ci_low"], line["delta_m ci_high"]) == pytest.approx((low, high), abs=EPS)
    assert list(summary.index[:2]) == [("branch", "equal"), ("affinity", "equal")]  # best mean first
    # task metrics get the same statistics: hard sharing's accuracy on task a is 0.80 · (1 + Δm/100)
    a = 0.80 * (1 + np.asarray(DELTA_M[("hard", "equal")]) / 100)
    assert summary.loc[("hard", "equal"), "a.accuracy ci_high"] == pytest.approx(
        stats.t.interval(0.95, 4, loc=a.mean(), scale=stats.sem(a))[1], abs=EPS
    )


def test_seed_stats_have_no_interval_below_two_values():
    assert seed_stats([3.0]).mean == 3.0
    assert all(math.isnan(v) for v in (seed_stats([3.0]).std, seed_stats([3.0]).ci_low, seed_stats([3.0]).ci_high))
    assert seed_stats([np.nan, 2.0, 4.0]).n == 2  # missing values (incomplete runs) are left out
    assert seed_stats([]).n == 0


def test_paired_differences_match_scipy_ttest_rel():
    paired = paired_table(runs_table(_study_rows()))
    hard = np.asarray(DELTA_M[("hard", "equal")])
    branch = np.asarray(DELTA_M[("branch", "equal")])
    for arm, ref, versus in (("adashare", hard, "hard sharing"), ("independent", branch, "the best")):
        x = np.asarray(DELTA_M[(arm, "equal")])
        line = paired[(paired.versus == versus) & (paired.arm == arm)].iloc[0]
        ci = stats.ttest_rel(x, ref).confidence_interval(0.95)
        assert line["n"] == len(SEEDS)
        assert line["mean"] == pytest.approx((x - ref).mean(), abs=EPS)
        assert (line["ci_low"], line["ci_high"]) == pytest.approx((ci.low, ci.high), abs=EPS)
    # versus the single-task nets: their own Δm per seed is the reference (paired on the same seeds)
    single = _delta_m(runs_table(_study_rows()), "single-task").to_numpy()
    line = paired[(paired.versus == "single-task nets") & (paired.arm == "hard")].iloc[0]
    ci = stats.ttest_rel(hard, single).confidence_interval(0.95)
    assert line["reference"] == "single-task/equal"
    assert (line["ci_low"], line["ci_high"]) == pytest.approx((ci.low, ci.high), abs=EPS)


def test_paired_on_shared_seeds_only():
    rows = [r for r in _study_rows() if not (r["arm"] == "adashare" and r["seed"] == 4)]
    paired = paired_table(runs_table(rows))
    line = paired[(paired.versus == "hard sharing") & (paired.arm == "adashare")].iloc[0]
    x, ref = np.asarray(DELTA_M[("adashare", "equal")][:4]), np.asarray(DELTA_M[("hard", "equal")][:4])
    assert line["n"] == 4
    assert (line["ci_low"], line["ci_high"]) == pytest.approx(tuple(stats.ttest_rel(x, ref).confidence_interval()))


def test_verdict_names_the_winner_and_calls_differences_inside_the_noise_ties(tmp_path):
    runs = runs_table(_study_rows())
    v = verdict(runs)
    assert v.best == "branch/equal"
    assert v.outcomes["the best"]["tie"] == ("affinity/equal",)
    assert set(v.outcomes["the best"]["worse"]) == {
        "adashare/equal",
        "hard/equal",
        "independent/equal",
        "single-task/equal",
    }
    assert set(v.outcomes["hard sharing"]["better"]) == {"affinity/equal", "branch/equal"}
    # the single-task nets' own seed noise (Δm −5 % .. +5 %) hides hard sharing's +1 %: a tie
    assert v.outcomes["hard sharing"]["tie"] == ("adashare/equal", "single-task/equal")
    assert v.outcomes["hard sharing"]["worse"] == ("independent/equal",)
    assert "independent/equal" in v.outcomes["single-task nets"]["tie"]  # −3 % on average, inside that noise
    assert "branch/equal" in v.outcomes["single-task nets"]["better"]
    assert not v.warnings  # 5 seeds everywhere

    text = "\n".join(v.lines)
    assert text.startswith("Best by mean Δm: branch/equal")
    line = next(s for s in v.lines if s.startswith("Beats hard sharing with confidence"))
    assert "branch/equal" in line and "affinity/equal" in line and "adashare" not in line
    assert "adashare/equal" in next(s for s in v.lines if s.startswith("Tied with hard sharing"))
    assert "affinity/equal" in next(s for s in v.lines if s.startswith("Tied with the best"))
    # noise floor: the std of Δm pooled over the 6 rows (5 seeds each, 4 degrees of freedom per row)
    pooled = np.sqrt(np.mean([np.var(v, ddof=1) for v in [*DELTA_M.values(), _delta_m(runs, "single-task")]]))
    assert v.noise_floor == pytest.approx(pooled, abs=EPS)
    assert f"{pooled:.2f} points" in text and "24 degrees of freedom" in text
    assert "per comparison (no multiplicity correction)" in text

    files = write_report(_write_run(tmp_path, _study_rows()))
    md = files["report.md"].read_text()
    assert md.index("## Verdict") < md.index("## Summary")  # the verdict comes first
    assert all(s in md for s in v.lines)
    assert "Pareto front in params" in md and "Cost in MACs: at or under affinity/equal's 0.01 MMACs" in md
    assert "averaged over all seeds" in md
    assert "Beats hard sharing with confidence" in files["report.html"].read_text()


# (Δm per seed, params, MACs): on params the front is hard (1K) and branch (1.5K); tree (1.8K) is within the noise
# of branch (paired differences 1, -1, 0.6); on MACs tree is the cheapest (5 M) and hard (10 M) falls off the front;
# independent is off both fronts (the most params and MACs, the lowest Δm)
COST_DM = {
    ("single-task", "equal"): ((-1.0, 0.0, 1.0), 2000, 20e6),
    ("hard", "equal"): ((1.0, 2.0, 3.0), 1000, 10e6),
    ("branch", "equal"): ((9.0, 10.0, 11.0), 1500, 15e6),
    ("tree", "equal"): ((8.0, 11.0, 10.4), 1800, 5e6),
    ("independent", "equal"): ((-3.0, -2.0, -4.0), 3000, 30e6),
}


def _cost_runs():
    """A :func:`runs_table` built by hand from COST_DM: three seeds per row, Δm and costs as given."""
    records = [
        {"arm": arm, "balancer": balancer, "seed": seed, "search_seed": pd.NA, "graph": None, "delta_m": dm}
        | {"params": params, "macs": macs, "train_seconds": 1.0, "search_seconds": 0.0}
        for (arm, balancer), (values, params, macs) in COST_DM.items()
        for seed, dm in enumerate(values)
    ]
    return pd.DataFrame.from_records(records).astype({"search_seed": "Int64"})


def test_verdict_names_the_pareto_front_and_the_best_row_at_or_under_each_others_cost():
    runs = _cost_runs()
    summary = summary_table(runs)
    assert cost_front(summary, "params") == [("hard", "equal"), ("branch", "equal")]
    assert cost_front(summary, "macs") == [("tree", "equal"), ("branch", "equal")]
    for key, params, macs in [
        (("tree", "equal"), ("branch", "equal"), None),  # the cheapest of all in MACs: nothing at or under it
        (("hard", "equal"), None, ("tree", "equal")),
        (("independent", "equal"), ("branch", "equal"), ("branch", "equal")),
    ]:
        assert (best_at_or_under(summary, key, "params"), best_at_or_under(summary, key, "macs")) == (params, macs)
    lines = verdict(runs).lines
    assert (
        "Pareto front in params (higher mean Δm at lower mean params, cheapest first): hard/equal (1K params, "
        "Δm +2.00), branch/equal (1.5K params, Δm +10.00)." in lines
    )
    assert (
        "Pareto front in MACs (higher mean Δm at lower mean MACs, cheapest first): tree/equal (5 MMACs, Δm +9.80), "
        "branch/equal (15 MMACs, Δm +10.00)." in lines
    )
    params = next(line for line in lines if line.startswith("Cost in params: ")).split("; ")
    macs = next(line for line in lines if line.startswith("Cost in MACs: ")).split("; ")
    # by hand: branch - tree = (1, -1, 0.6), mean 0.2, std 1.058, t(0.975, 2) = 4.303: 0.2 ± 2.63 contains 0
    assert params[0] == (
        "Cost in params: at or under tree/equal's 1.8K params (Δm +9.80), branch/equal is best with Δm +10.00 at "
        "1.5K params (0.83× the params), paired difference +0.20 [-2.43, +2.83]: a tie (the interval contains 0)"
    )
    # independent, off both fronts: branch - independent = (12, 12, 15), 13 ± 4.303 · 1.732 / √3 = 13 ± 4.30
    assert params[2] == (
        "at or under independent/equal's 3K params (Δm -3.00), branch/equal is best with Δm +10.00 at 1.5K params "
        "(0.5× the params), paired difference +13.00 [+8.70, +17.30]: better with confidence."
    )
    assert macs[2] == (
        "at or under independent/equal's 30 MMACs (Δm -3.00), branch/equal is best with Δm +10.00 at 15 MMACs "
        "(0.5× the MACs), paired difference +13.00 [+8.70, +17.30]: better with confidence."
    )
    assert macs[0] == (
        "Cost in MACs: at or under hard/equal's 10 MMACs (Δm +2.00), tree/equal is best with Δm +9.80 at 5 MMACs "
        "(0.5× the MACs), paired difference +7.80 [+5.17, +10.43]: better with confidence"
    )
    assert len(params) == len(macs) == 3  # single-task is off both fronts too (branch: +10.00 at 0.75× the cost)


def test_one_seed_reports_no_spread_and_warns_that_ranking_needs_three(tmp_path):
    rows = _study_rows({k: d[:1] for k, d in DELTA_M.items()}, seeds=(0,))
    files = write_report(_write_run(tmp_path, rows))
    md = files["report.md"].read_text()
    assert "±" not in md
    assert "A ranking needs ≥ 3 seeds" in md and "⚠ Warning" in md
    assert "Not compared with hard sharing (fewer than 2 shared seeds" in md
    assert "with confidence" not in md.split("## Method")[0]  # no claim without an interval
    summary = pd.read_csv(files["summary.csv"])
    assert summary["delta_m ci_low"].isna().all() and (summary["n"] == 1).all()


def test_fewer_than_three_seeds_warn():
    v = verdict(runs_table(_study_rows({k: d[:2] for k, d in DELTA_M.items()}, seeds=(0, 1))))
    assert len(v.warnings) == 1 and "A ranking needs ≥ 3 seeds per arm; this study has 2 seeds per arm" in v.warnings[0]
    rows = [r for r in _study_rows() if not (r["arm"] == "adashare" and r["seed"] > 1)]
    v = verdict(runs_table(rows))
    assert len(v.warnings) == 1 and "these have fewer: adashare/equal (n = 2)." in v.warnings[0]


def test_csv_files_hold_unformatted_numbers(tmp_path):
    files = write_report(_write_run(tmp_path, _study_rows()))
    summary = pd.read_csv(files["summary.csv"]).set_index(["arm", "balancer"])
    for col in ("n", "delta_m", "delta_m std", "delta_m ci_low", "delta_m ci_high", "params"):
        assert pd.api.types.is_numeric_dtype(summary[col]), col
    assert summary.loc[("hard", "equal"), "delta_m"] == pytest.approx(np.mean(DELTA_M[("hard", "equal")]))
    paired = pd.read_csv(files["paired.csv"])
    assert {"versus", "reference", "n", "mean", "std", "ci_low", "ci_high", "outcome"} <= set(paired.columns)
    assert pd.read_csv(files["runs.csv"]).shape[0] == len(SEEDS) * (len(DELTA_M) + 1)
    assert (files["report.md"].parent / "figures" / "pareto_params.png").is_file()


def test_hard_sharing_is_paired_with_the_same_balancer_else_equal():
    dm = {**DELTA_M, ("hard", "mgda"): (0.0,) * 5, ("branch", "mgda"): (1.0,) * 5, ("branch", "pcgrad"): (2.0,) * 5}
    paired = paired_table(runs_table(_study_rows(dm))).query("versus == 'hard sharing'")
    reference = dict(zip(paired.arm + "/" + paired.balancer, paired.reference))
    assert reference["branch/mgda"] == "hard/mgda"
    assert reference["branch/pcgrad"] == "hard/equal"  # hard sharing never trained with pcgrad
    assert reference["hard/mgda"] == "hard/equal"  # hard sharing's balancers are compared with equal weights
    assert reference["single-task/equal"] == "hard/equal"
    assert "hard/equal" not in reference  # not compared with itself


def test_search_cost_and_repeatability_over_search_seeds():
    rows = _study_rows({k: v for k, v in DELTA_M.items() if k[0] != "branch"})
    for s, search_seed in zip(SEEDS, (0, 1, 2, 0, 1)):  # training seed i retrains search seed i mod 3
        arm = "branched" if search_seed == 2 else "hard"  # search seed 2 found another graph
        row = _row("branch", "equal", s, _multi(DELTA_M[("branch", "equal")][s]), search_seed=search_seed)
        rows.append({**row, "graph": _graph(arm).to_dict(), "search_seconds": 10.0 + 2 * search_seed})
    v = verdict(runs_table(rows))
    # mean search seconds over the 3 searches (10, 12, 14) / mean hard/equal training (2 s) = 6.0
    cost = next(s for s in v.lines if s.startswith("Search cost"))
    assert "branch 6.0× (12.0 s per search)" in cost
    repeat = next(s for s in v.lines if s.startswith("Search repeatability"))
    assert "branch: 2 distinct graphs from 3 search seeds (the most common one 2 of 3 times)" in repeat


def test_topology_per_distinct_graph(tmp_path):
    rows = _study_rows({("hard", "equal"): DELTA_M[("hard", "equal")]})
    for s, search_seed in zip(SEEDS[:2], (0, 1)):
        row = _row("branch", "equal", s, _multi(1.0), search_seed=search_seed, search_seconds=5.0)
        rows.append({**row, "graph": _graph("branched" if search_seed else "hard").to_dict()})
    files = write_report(_write_run(tmp_path, rows))
    figures = {p.name for p in (files["report.md"].parent / "figures").iterdir()}
    assert {"topology_branch.png", "topology_branch_2.png", "topology_hard.png"} <= figures
    assert "branch, graph 2 of 2 (search seeds [1])" in files["report.md"].read_text()


def test_environment_is_listed_and_disagreement_flagged(tmp_path):
    env = {"python": "3.11.7", "torch": "2.14.1", "threads": 1, "device": "cpu", "cpu": "Some CPU"}
    rows = _study_rows(env=env)
    md = write_report(_write_run(tmp_path / "same", rows))["report.md"].read_text()
    assert "Python 3.11.7, torch 2.14.1, 1 thread, cpu, Some CPU" in md and "disagree" not in md
    rows[-1] = {**rows[-1], "env": {**env, "threads": 4}}
    rows[0] = {k: v for k, v in rows[0].items() if k != "env"}  # a row from before environments were recorded
    v = verdict(runs_table(rows), rows)
    assert v.warnings == ("Runs disagree on threads: 1 thread (33 run files), 4 threads (1 run files).",)
    md = write_report(_write_run(tmp_path / "mixed", rows))["report.md"].read_text()
    assert "⚠ Warning: Runs disagree on threads" in md and "1 run files (written before" in md


def test_pareto_plot_numbers_points_without_overlap_and_draws_intervals():
    # three points on one spot (hard sharing with three balancers), one just above, one far away
    points = [("hard/equal", 1500.0, 1.0), ("hard/mgda", 1500.0, 1.0), ("hard/pcgrad", 1500.0, 1.001)]
    points += [("adashare/equal", 1500.0, 1.09), ("single-task/equal", 2e6, 0.0)]
    intervals = [(0.0, 2.0), (0.5, 1.5), (np.nan, np.nan), (0.9, 1.2), (-1.0, 1.0)]
    fig = pareto_plot(points, intervals=intervals)
    ax = fig.axes[0]
    assert ax.xaxis.get_major_formatter()(2e6) == "2M" and ax.xaxis.get_major_formatter()(175000) == "175K"
    keys = [t.get_text() for t in ax.get_legend().get_texts()]
    assert keys[:5] == [f"{i + 1}  {p[0]}" for i, p in enumerate(points)]
    labels = {t.get_text(): t for t in ax.texts}
    assert {"1,2,3", "5"} <= set(labels)  # the covered points share one label
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in labels.values()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    markers = [c for c in ax.collections if c.__class__.__name__ == "PathCollection"]
    centres = [c.get_offset_transform().transform(c.get_offsets())[0] for c in markers[:3]]
    assert min(np.hypot(*(p - q)) for i, p in enumerate(centres) for q in centres[i + 1 :]) > 5.0  # dodged
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == 4  # one vertical bar per finite interval
    plt.close(fig)
    with pytest.raises(ValueError, match="2 intervals for 5 points"):
        pareto_plot(points, intervals=intervals[:2])


def test_label_offsets_move_a_colliding_label_up_one_box():
    anchors = [(100.0, 100.0), (100.0, 104.0), (300.0, 100.0)]
    offsets = _label_offsets(anchors, ["1,2", "3", "4"], [3.0, 3.0, 3.0], fontsize=10.0)
    assert offsets[0] == offsets[2] == (3.0, 2.0)  # the far label stays where it starts
    assert offsets[1] == (3.0, 2.0 + 12.0)  # one box height (1.2 · fontsize) up


def test_search_figures_are_copied_with_their_seed_folder_only_where_names_collide(tmp_path):
    run = _write_run(tmp_path, _study_rows())
    for rel in (
        "affinity/seed5/affinity/heatmap.png",
        "affinity/seed7/affinity/heatmap.png",
        "branch/seed0/history.png",
    ):
        (run / "search" / rel).parent.mkdir(parents=True)
        (run / "search" / rel).write_bytes(rel.encode())
    files = write_report(run)
    figures = files["report.md"].parent / "figures"
    assert (figures / "search_branch_history.png").read_bytes() == b"branch/seed0/history.png"
    assert (
        figures / "search_affinity_seed7_affinity_heatmap.png"
    ).read_bytes() == b"affinity/seed7/affinity/heatmap.png"
    assert "![affinity seed5 affinity: heatmap](figures/search_affinity_seed5_affinity_heatmap.png)" in (
        files["report.md"].read_text()
    )


# ---------------------------------------------------------------------- training curves
def _write_curves(run, row, values, metric="accuracy"):
    """curves.csv for ``row``'s run: ``values`` = the validation metric per epoch (same for every task)."""
    arm = f"{row['arm']}/{row['task']}" if row["task"] else row["arm"]
    folder = run / "arms" / slug(arm) / slug(row["balancer"]) / f"seed{row['seed']}"
    tasks = [row["task"]] if row["task"] else TASKS
    lines = ["epoch,task,train_loss,val_loss,metric,val_metric,seconds"]
    lines += [f"{e + 1},{t},1.0,1.0,{metric},{v},{e}" for e, v in enumerate(values) for t in tasks]
    (folder / "curves.csv").write_text("\n".join(lines) + "\n")


def test_arms_still_improving_at_the_end_are_flagged_and_plotted(tmp_path):
    """hard rises through its last epoch on every seed (flagged); independent rises by less than its seeds'
    spread at the end (not flagged); the report shows both arms' curves and names the improving one."""
    rows = _study_rows()
    run = _write_run(tmp_path, rows)
    for r in rows:
        s = r["seed"]
        if r["arm"] == "hard" and r["balancer"] == "equal":
            values = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
        elif r["arm"] == "independent":
            values = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8 + 0.001 * s, 0.8 + 0.1 * (s - 1) + 0.01]
        else:
            values = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
        _write_curves(run, r, values)
    from nas_mtl.report import load_curves, still_improving

    flagged = still_improving(load_curves(run))
    assert set(zip(flagged["arm"], flagged["balancer"])) == {("hard", "equal")}
    assert flagged["gain"].tolist() == pytest.approx([0.95 - 0.85] * len(TASKS))  # from epoch 6 = 3 * 8 // 4
    files = write_report(run)
    report = files["report.md"].read_text()
    assert "still improving at the last epoch: hard/equal" in report[: report.index("## Method")]
    assert "## Training curves" in report
    assert (files["report.md"].parent / "figures" / "curves_hard.png").is_file()
    assert (files["report.md"].parent / "figures" / "curves_independent.png").is_file()
    assert len(pd.read_csv(files["curves.csv"])) == 8 * (len(rows) - len(_single_rows())) * len(TASKS) + 8 * len(
        _single_rows()
    )


class _Dom(HTMLParser):
    """The parts of report.html a reader meets: headings, tables and figures, each with its section ids."""

    def __init__(self):
        super().__init__()
        self.stack, self.headings, self.tables, self.images, self.links = [], [], [], [], []
        self._heading = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.stack.append(attrs["id"])
        elif tag in ("h2", "h3"):
            self._heading = ""
        elif tag == "table":
            self.tables.append(tuple(self.stack))
        elif tag == "img":
            self.images.append((tuple(self.stack), attrs["src"]))
        elif tag in ("link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))

    def handle_endtag(self, tag):
        if tag == "section":
            self.stack.pop()
        elif tag in ("h2", "h3"):
            self.headings.append(self._heading.strip())
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data


def test_html_report_is_one_file_verdict_first_each_search_with_its_figures(tmp_path):
    rows = [
        {**r, "search_seconds": 30.0, "search_seed": r["seed"] % 2} if r["arm"] == "branch" else r
        for r in _study_rows()
    ]
    run = _write_run(tmp_path, rows)
    history = run / "search" / "branch" / "seed0" / "history.png"
    history.parent.mkdir(parents=True)
    pareto_plot([("x", 1.0, 1.0)], path=history)  # a figure the search left in its folder
    files = write_report(run)
    page = files["report.html"].read_text()
    dom = _Dom()
    dom.feed(page)
    assert dom.links == []  # nothing loaded from elsewhere: the page can be mailed
    top = [h for h in dom.headings if h in ("Verdict", "Summary (mean over seeds)", "Searches", "Runs", "Method")]
    assert top == ["Verdict", "Summary (mean over seeds)", "Searches", "Runs", "Method"]
    assert ("summary-mean-over-seeds",) in dom.tables and ("runs",) in dom.tables
    figures = files["report.md"].parent / "figures"
    shown = {}
    for where, src in dom.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        shown[base64.b64decode(src.split(",", 1)[1])] = where
    # every figure written is shown once, embedded byte for byte, the search's own in its section
    assert sorted(shown) == sorted(p.read_bytes() for p in figures.glob("*.png"))
    assert shown[(figures / "search_branch_history.png").read_bytes()] == ("searches", "search-branch")
    assert shown[(figures / "topology_branch.png").read_bytes()] == ("searches", "search-branch")
    assert shown[(figures / "pareto_params.png").read_bytes()] == ("summary-mean-over-seeds",)
    md = files["report.md"].read_text()
    assert "Cost: 15.0× (30.0 s per search)." in md  # 30 s against 2 s per hard/equal training
    assert "Repeatability: the same graph from all 2 search seeds." in md
    assert f"Graph (search seeds [0, 1]): {_graph('branch').describe()}." in md


_CHECK = """<script>
window.addEventListener("load", function () {
  const section = (e) => e.closest("section").id;
  const out = {
    verdict: document.querySelector("#verdict").innerText,
    tables: Array.from(document.querySelectorAll("table")).map((t) => [section(t), t.tBodies[0].rows.length]),
    images: Array.from(document.images).map((i) => [section(i), i.complete, i.naturalWidth, i.width]),
    overflow: document.documentElement.scrollWidth > window.innerWidth,
    viewport: window.innerWidth,
  };
  const summary = "#summary-mean-over-seeds";
  Array.from(document.querySelectorAll(summary + " th")).find((h) => h.textContent === "Δm %").click();
  out.ascending = Array.from(document.querySelectorAll(summary + " tbody tr")).map(
    (r) => r.cells[0].textContent + "/" + r.cells[1].textContent);
  const host = window.parent !== window ? window.parent.document.body : document.body;  // framed: the page's own
  host.setAttribute("data-check", JSON.stringify(out));
});
</script>"""
"""Run in the browser after the page loaded: what a reader sees, and the summary sorted by a click on Δm."""


@pytest.fixture(scope="module")
def chromium():
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium as root): browser test skipped")
    return [found, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files"]


class _Body(HTMLParser):
    def handle_starttag(self, tag, attrs):
        if tag == "body" and "data-check" in dict(attrs):
            self.check = json.loads(dict(attrs)["data-check"])


@pytest.mark.parametrize("width", [1280, 400])
def test_report_in_a_real_browser_shows_verdict_tables_and_every_figure(tmp_path, chromium, width):
    """On a desktop window and a 400 px wide one (a phone): verdict, tables and every figure shown, figures scaled
    to the page, no horizontal scrolling of the page, the summary sortable by a click. The page is shown in a frame
    ``width`` px wide (headless Chromium's window is at least 500 px wide)."""
    chromium = [*chromium, "--window-size=1300,2000"]
    rows = [{**r, "search_seconds": 30.0, "search_seed": 0} if r["arm"] == "branch" else r for r in _study_rows()]
    files = write_report(_write_run(tmp_path, rows))
    checked = tmp_path / "checked.html"
    checked.write_text(files["report.html"].read_text().replace("</body>", _CHECK + "</body>"))
    framed = tmp_path / "framed.html"
    framed.write_text(
        f'<html><body style="margin:0"><iframe src="{checked.name}" style="width:{width}px;height:2000px;border:0">'
        "</iframe></body></html>"
    )
    dom = subprocess.run(
        [*chromium, "--virtual-time-budget=5000", "--dump-dom", framed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    body = _Body()
    body.feed(dom)
    check = body.check
    assert (
        "Best by mean Δm: branch/equal" in check["verdict"] and "Beats hard sharing with confidence" in check["verdict"]
    )
    tables = dict(check["tables"])
    assert tables["summary-mean-over-seeds"] == 6 and tables["runs"] == 30
    figures = sorted((files["report.md"].parent / "figures").glob("*.png"))
    assert len(check["images"]) == len(figures)
    for where, complete, natural, shown in check["images"]:  # decoded, and scaled to fit the page
        assert complete and natural > 0 and 0 < shown <= min(1100, width), (where, natural, shown)
    assert check["viewport"] == width
    assert not check["overflow"]  # wide tables scroll inside their box, not the page
    means = summary_table(runs_table(rows))["delta_m"].sort_values(kind="stable")
    assert check["ascending"] == [f"{a}/{b}" for a, b in means.index]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*chromium, f"--screenshot={shot}", files["report.html"].as_uri()], capture_output=True, timeout=120, check=True
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- the verdict's conclusion
def test_the_conclusion_recommends_the_cheapest_row_tied_with_the_best():
    """branch and affinity tie (paired differences ≤ 0.3 over 5 seeds); affinity has fewer parameters here, so it
    is recommended, with its saving; hard sharing's cost against separate networks is stated with its interval."""
    rows = _study_rows()
    for r in rows:
        if r["arm"] == "affinity":
            r["params"], r["macs"] = 750, 5_000
    found = verdict(runs_table(rows), rows)
    assert found.best == "branch/equal" and found.recommended == "affinity/equal"
    first, sharing, sure = found.conclusion
    assert first.startswith("Use affinity/equal: it ties the best row, branch/equal")
    assert "0.5× its parameters and 0.5× its MACs" in first
    hard = paired_table(runs_table(rows)).query("versus == 'single-task nets' and arm == 'hard'").iloc[0]
    assert outcome_words(hard) in sharing and f"[{hard.ci_low:+.2f}, {hard.ci_high:+.2f}]" in sharing
    # the resolvable difference: t(0.975, n-1) x pooled std x sqrt(2/n), n = 5 seeds
    t = stats.t.ppf(0.975, 4)
    assert f"differences smaller than about {t * found.noise_floor * math.sqrt(2 / 5):.1f} points" in sure
    # without the cheaper tie the best row itself is recommended
    plain = verdict(runs_table(_study_rows()), _study_rows())
    assert plain.recommended == "branch/equal" and plain.conclusion[0].startswith(
        "Use branch/equal: it has the highest"
    )


def outcome_words(hard):
    return {"better": "gains", "worse": "loses", "tie": "a tie"}[hard.outcome]


def test_the_report_opens_with_the_recommendation_and_an_export_command_that_runs(tmp_path):
    """A real tiny study: report.md's verdict starts with "Use ...", names the run folder, and its bash block
    exports that run when pasted into a shell in the folder the study was run from."""
    import shlex
    import sys

    from tiny_study import write_study

    from nas_mtl.study import load_study, run_study

    study = write_study(tmp_path)
    run_study(load_study(study), tmp_path / "run")
    subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "report", "run"], cwd=tmp_path, check=True, capture_output=True
    )
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    verdict_text = text.split("## Verdict", 1)[1]
    assert verdict_text.lstrip().startswith("Use ")
    command = verdict_text.split("```bash\n", 1)[1].split("\n```", 1)[0]
    folder = shlex.split(command)[2]
    assert f"Its run folder (the seed whose Δm is closest to the mean): {folder.removeprefix('run/')}" in verdict_text
    done = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", *shlex.split(command)[1:], "--formats", "safetensors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / shlex.split(command)[shlex.split(command).index("--out") + 1]
    assert (out / "weights.safetensors").is_file()
    runs = pd.read_csv(tmp_path / "run" / "report" / "runs.csv")
    assert folder.removeprefix("run/") in set(runs["run_dir"])  # runs.csv names every run's folder
    # the same run through --best, and one line naming the way out on the study folder itself
    best = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "export", "run", "--best", "--out", "best", "--formats", "safetensors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert best.returncode == 0 and f"exporting {folder}" in best.stdout, best.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "export", "run", "--out", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "a study folder; export its recommended run with --best" in wrong.stderr


def test_a_row_whose_seeds_retrained_different_graphs_shows_its_cost_range():
    from nas_mtl.report import format_table

    rows = _study_rows()
    for r in rows:
        if r["arm"] == "branch":
            r["params"] = 1000 + 500 * r["seed"]  # 1K .. 3K over seeds 0-4 (five distinct graphs' sizes)
    shown = format_table(summary_table(runs_table(rows))).set_index(["arm", "balancer"])
    assert shown.loc[("branch", "equal"), "params"] == "2K (1K–3K)"
    assert shown.loc[("hard", "equal"), "params"] == "1.5K"  # one graph over the seeds: the value alone
