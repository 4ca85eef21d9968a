"""Network selection on our own data: does selecting from singles and pairs pay off, and what does it miss?

    python benchmarks/selection_ours.py [--seeds 3] [--epochs 6] [--run-dir runs/selection_ours]
                                        [--out benchmarks/results/selection_ours.json]

Per dataset and seed, the ``selection`` search with ``measure = "all"`` trains every group of tasks from scratch (a
hard-shared network each; the all-task one with TAG's lookahead recorder on), so every selection can be scored on
networks that were really trained:

- ``shapes``: quadrant, size (one planted family: the object's placement), orientation and hue (two more
  families); 15 networks;
- ``markers``: order, offset, tint (tint conflicts with the other two); 7 networks.

Both at 16 px, 1024 training / 256 validation / 512 test images, ``shapes_branch4`` space, Adam, data seed = seed.

At each budget (1 to T backbones) each method selects on seed s's validation table: ``exact`` (every group
measured), ``hoa`` (only singles and pairs: Standley's pairs-only setting), ``tag`` (TAG's table from seed s's
lookahead affinity), ``random`` (Standley's baseline, expected value), ``all-in-one``, ``independent``. The choice is
scored as the *retrained* selection: its networks' test Δm (each task served by the best of them on test)
averaged over the other seeds' independently trained copies. The *retrained optimum* is the selection (enumerated)
with the best test Δm averaged over every seed's networks, scored the same way; a method's regret is the optimum's
score minus its own, in Δm points (negative: it beat the oracle's choice on those seeds). Means and 95 %
t-intervals are over the selection seeds.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from itertools import combinations
from pathlib import Path

import torch
from _report import write_report
from scipy import stats

from nas_mtl.data import create_dataset
from nas_mtl.search.network_selection import SelectionConfig, selection_search
from nas_mtl.selection import Network, NetworkTable, best_total, hoa, random_selection, select, tag
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

SETTINGS = {
    "shapes": {"tasks": "quadrant,size,orientation,hue"},
    "markers": {},
}
METHODS = ("exact", "hoa", "tag", "random", "all-in-one", "independent")


def _table(entries: list[dict], tasks: tuple[str, ...]) -> NetworkTable:
    nets = tuple(Network(tuple(e["tasks"]), 1.0, e["scores"]) for e in entries)
    return NetworkTable(tasks, nets, dict.fromkeys(tasks, True))


def _retrained(networks: list[Network], tests: list[NetworkTable]) -> float:
    """Δm of ``networks`` averaged over independently trained copies (``tests``: one table per other seed)."""
    totals = []
    for test in tests:
        by_tasks = {n.tasks: n for n in test.networks}
        totals.append(best_total(test, [by_tasks[n.tasks] for n in networks]) / len(test.tasks))
    return statistics.fmean(totals)


def _feasible(table: NetworkTable, budget: float) -> list[tuple[Network, ...]]:
    nets = table.networks
    return [
        c
        for k in range(1, int(budget) + 1)
        for c in combinations(nets, k)
        if all(any(t in n.tasks for n in c) for t in table.tasks)
    ]


def _interval(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half}


def _measure(name: str, seed: int, epochs: int, run_dir: Path) -> dict:
    data = create_dataset(name, n_train=1024, n_val=256, n_test=512, size=16, seed=seed, **SETTINGS[name])
    space = load_search_space("shapes_branch4", input_shape=data.input_shape)
    train = TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, seed=seed, progress=False, device="cpu")
    config = SelectionConfig(train=train, measure="all", predictor="exact", budget=1, random_draws=1)
    t0 = time.perf_counter()
    result = selection_search(data, space, config, run_dir / name / f"seed{seed}")
    return {
        "tasks": list(data.task_names),
        "tables": result.info["tables"],
        "affinity": result.info["affinity"],
        "seconds": time.perf_counter() - t0,
    }


def _evaluate(measured: list[dict], draws: int) -> dict:
    tasks = tuple(measured[0]["tasks"])
    vals = [_table(m["tables"]["val"], tasks) for m in measured]
    tests = [_table(m["tables"]["test"], tasks) for m in measured]
    out = {}
    oracle = {  # the best selection by its mean test Δm over every seed's networks: one per budget
        b: max(_feasible(vals[0], b), key=lambda c: _retrained(list(c), tests)) for b in range(1, len(tasks) + 1)
    }
    for budget in range(1, len(tasks) + 1):
        scores: dict[str, list[float]] = {m: [] for m in (*METHODS, "optimum")}
        regrets: dict[str, list[float]] = {m: [] for m in METHODS}
        for s, val in enumerate(vals):
            others = [t for r, t in enumerate(tests) if r != s]
            pairs = NetworkTable(tasks, tuple(n for n in val.networks if len(n.tasks) <= 2), val.higher_is_better)
            chosen = {
                "exact": select(val, budget).networks,
                "hoa": select(hoa(pairs) if len(tasks) > 2 else pairs, budget).networks,
                "tag": select(tag(measured[s]["affinity"], tasks), budget).networks,
                "all-in-one": [n for n in val.networks if len(n.tasks) == len(tasks)],
                "independent": [n for n in val.networks if len(n.tasks) == 1] if budget >= len(tasks) else None,
            }
            optimum = _retrained(list(oracle[budget]), others)
            rng = random.Random(s)
            got = {m: _retrained(list(n), others) for m, n in chosen.items() if n is not None}
            got["random"] = statistics.fmean(
                _retrained(random_selection(val, budget, rng), others) for _ in range(draws)
            )
            scores["optimum"].append(optimum)
            for m, v in got.items():
                scores[m].append(v)
                regrets[m].append(optimum - v)
        out[str(budget)] = {
            "delta_m": {m: _interval(v) for m, v in scores.items() if v},
            "regret": {m: _interval(v) for m, v in regrets.items() if v},
        }
    return out


def _cell(delta: dict | None, regret: dict | None) -> str:
    if delta is None:
        return ""
    return f"{delta['mean']:+6.2f}" + ("" if regret is None else f" (regret {regret['mean']:.2f})")


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/selection_ours"))
    parser.add_argument("--out", default="benchmarks/results/selection_ours.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict = {"settings": {"seeds": args.seeds, "epochs": args.epochs, "draws": args.draws}, "datasets": {}}
    for name in SETTINGS:
        measured = [_measure(name, s, args.epochs, args.run_dir) for s in range(args.seeds)]
        result = _evaluate(measured, args.draws)
        report["datasets"][name] = {
            "tasks": measured[0]["tasks"],
            "seconds": [m["seconds"] for m in measured],
            "budgets": result,
        }
        print(f"\n{name} ({', '.join(measured[0]['tasks'])}): test Δm of the retrained selection, regret vs optimum")
        print(f"{'budget':>6} " + " ".join(f"{m:>22}" for m in (*METHODS, "optimum")))
        for budget, row in result.items():
            cells = [_cell(row["delta_m"].get(m), row["regret"].get(m)) for m in (*METHODS, "optimum")]
            print(f"{budget:>6} " + " ".join(f"{c:>22}" for c in cells))
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
