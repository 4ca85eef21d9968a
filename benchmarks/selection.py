"""Network selection replayed on Standley et al.'s released Taskonomy tables (ICML 2020, setting 1).

    python benchmarks/selection.py [--draws 5000] [--seed 0] [--out benchmarks/results/selection.json]

From ``tests/data/standley/`` (copied from github.com/tstandley/taskgrouping, MIT): ``results.txt`` (validation
losses of the 5 half-size single-task networks and the 31 full-size networks of every task subset),
``results_test.txt`` (test) and ``results_20.txt`` (validation after 20 % of training). At every budget of the
paper's Figure 3 (1, 1.5, ..., 5 full-size networks) it computes, scored on test:

- ``optimal``: the exact best selection on validation (``nas_mtl.selection.select``);
- ``hoa``: the selection on Standley's higher-order approximation from the pairs (``hoa``);
- ``esa``: the selection on the early-stopped table (served as the paper serves: each task by the selected network
  best on test);
- ``random``: Standley's random baseline (``random_selection``: networks in random order, added while they fit),
  its mean over ``--draws`` draws with a 95 % normal interval, and ``worst``, the worst of those draws (the paper
  took the worst of 10^7 draws, so ours may lie below its curve);

next to the paper's values (``network_selection/make_plots.py``, ``curves_1``), and writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from nas_mtl.selection import best_total, hoa, random_selection, read_standley, score_on, select

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "standley"
BUDGETS = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]
PAPER = {
    "optimal": [0.50273, 0.46132, 0.45224, 0.44612, 0.44235, 0.43932, 0.43555, 0.43555, 0.43481],
    "hoa": [0.50278, 0.46132, 0.45474, 0.4505, 0.44875, 0.44489, 0.44112, 0.44552, 0.44196],
    "esa": [0.50273, 0.48732, 0.46727, 0.46063, 0.45722, 0.45058, 0.45058, 0.44742, 0.44742],
    "random": [0.50278, 0.485347, 0.473641, 0.469079, 0.465265, 0.46271, 0.460238, 0.458358, 0.456486],
    "worst": [0.50278, 0.50278, 0.50278, 0.50278, 0.50278, 0.50278, 0.50179, 0.50179, 0.49941],
}


def replay(draws: int, seed: int) -> dict:
    val, test, early = (read_standley(DATA / f) for f in ("results.txt", "results_test.txt", "results_20.txt"))
    predicted = hoa(val)
    rng = random.Random(seed)
    rows = []
    for b in BUDGETS:
        totals = [best_total(test, random_selection(test, b, rng)) for _ in range(draws)]
        half = 1.96 * statistics.stdev(totals) / draws**0.5 if len(set(totals)) > 1 else 0.0
        mean = statistics.fmean(totals)
        rows.append(
            {
                "budget": b,
                "optimal": score_on(select(val, b), test),
                "hoa": score_on(select(predicted, b), test),
                "esa": score_on(select(early, b), test, serve="best"),
                "random": mean,
                "random_ci": [mean - half, mean + half],
                "worst": max(totals),
            }
        )
    return {"draws": draws, "seed": seed, "budgets": rows, "paper": PAPER}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/selection.json")
    args = parser.parse_args()
    result = replay(args.draws, args.seed)
    print(f"{'budget':>6} " + " ".join(f"{k:>17}" for k in PAPER))
    for i, row in enumerate(result["budgets"]):
        cells = [f"{row[k]:.5f} ({PAPER[k][i]:.5f})" for k in PAPER]
        print(f"{row['budget']:>6g} " + " ".join(f"{c:>17}" for c in cells))
    print("ours (paper); random: mean of", args.draws, "draws; worst: the worst of them")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
