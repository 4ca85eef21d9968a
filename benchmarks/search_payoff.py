"""Does a search pay off? Tree searches against the free alternatives on the families benchmark, at equal budgets.

    python benchmarks/search_payoff.py [--trials 8,20] [--search-seeds 5] [--train-seeds 3] [--proxy warmstart]
                                       [--methods random,tpe,tpe+warm] [--cache runs/search_payoff]
                                       [--out benchmarks/results/search_payoff.json]

``--proxy scratch-10`` scores trees by training each from scratch for 10 of the retrain's 30 epochs (against hard
sharing trained so) instead of the default warm-start proxy.

Problem: ``families`` (nas_mtl/data/families.py, data seed 0, 600 training images; six tasks in two planted
families), space ``search_spaces/families.toml`` (12,915 trees). Whatever a method answers is retrained from scratch
with the benchmark's training settings (30 epochs, batch 64, lr 3e-3, Adam; training seeds 0 .. train_seeds - 1) and
scored by test Δm against the independent networks' seed mean (each task alone: the single-task reference).

Methods (branch search, the warm-start proxy: 5 warm-start epochs of hard sharing, 3 fine-tuning epochs per tree,
Δm against the warm start; the default median pruner), each run with search seeds 0 .. search_seeds - 1 (the seed
moves the sampler and the proxy's warm start and fine-tuning seeds, so a search sees one noisy proxy, as a user's
does), ``--trials`` trials each:

- ``random``: Optuna's random sampler;
- ``tpe``: multivariate TPE (the default sampler);
- ``tpe+warm``: TPE whose first trials are hard sharing, independent networks and the affinity grouping's tree
  (``warm_start = hard, independent, affinity``; the affinity run is part of its cost).

Free alternatives, retrained with the same training seeds: ``hard``, ``independent``, and the ``planted`` tree
(what a search should find here). Comparisons: each method's answers minus an alternative (:func:`payoff`: mean
over search and training seeds; 95 % percentile bootstrap resampling both), against ``random`` at the same trial
count, ``hard``, ``independent`` and ``planted``.

Budget: measured, in hard-sharing trainings (one run = one retrain of hard sharing with these settings, timed in
this process as the mean over training seeds): ``budget_runs`` = the search's own wall time (warm start, trials,
affinity) plus the retrain of its answer, each divided by that unit. Equal trial counts give the methods about
equal budgets; the measured numbers say how equal. Every finished search and retrain is cached in ``--cache``: a
rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from _report import write_report

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import create_dataset
from nas_mtl.data.families import planted_tree
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.runs import write_json_atomic
from nas_mtl.search import SearchResult
from nas_mtl.search.branching import BranchSearchConfig, branch_search
from nas_mtl.search.proxy import ProxyConfig, graph_key
from nas_mtl.search.quality import payoff
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

TRAIN = TrainConfig(epochs=30, batch_size=64, lr=3e-3, device="cpu", progress=False)
PROXY = ProxyConfig(
    warmstart=dataclasses.replace(TRAIN, epochs=5), finetune=dataclasses.replace(TRAIN, epochs=3), reference="hard"
)
PROXIES = {
    "warmstart": PROXY,  # the default proxy: inherit a 5-epoch hard-sharing warm start, 3 fine-tuning epochs
    # from scratch for a third of the retrain (families_fidelity.py's scratch-10), against hard sharing trained so
    "scratch-10": dataclasses.replace(PROXY, finetune=dataclasses.replace(TRAIN, epochs=10), inherit=False),
}
METHODS = {
    "random": {"sampler": "random"},
    "tpe": {"sampler": "tpe"},
    "tpe+warm": {"sampler": "tpe", "warm_start": ("hard", "independent", "affinity")},
}
DEFAULT_METHOD = "tpe+warm"
"""The configuration the README recommends (``search branch --warm-start hard,independent,affinity``)."""


class Retrains:
    """Trainings from scratch with ``config`` (default :data:`TRAIN`): validation and test metrics and seconds by
    (graph key, training seed), cached in one JSON file."""

    def __init__(self, path: Path, data, space, config: TrainConfig = TRAIN) -> None:
        self.path, self.data, self.space, self.config = path, data, space, config
        self.runs = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, graph: SharingGraph, seed: int) -> dict:
        key = f"{graph_key(graph)}|{seed}"
        if key not in self.runs:
            t0 = time.perf_counter()
            result = train_graph(graph, self.data, self.space, dataclasses.replace(self.config, seed=seed))[1]
            self.runs[key] = {"test": result.test, "val": result.val, "seconds": time.perf_counter() - t0}
            write_json_atomic(self.runs, self.path)
        return self.runs[key]


def families_problem(threads: int, cache: str) -> tuple[Path, object, object]:
    """What the families benchmarks share: torch threads, a quiet Optuna, the cache folder (made), the data (seed
    0) and its space."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(cache)
    folder.mkdir(parents=True, exist_ok=True)
    data = create_dataset("families", seed=0)
    return folder, data, load_search_space("families", input_shape=data.input_shape)


def search(method: str, trials: int, seed: int, data, space, cache: Path, proxy_name: str) -> SearchResult:
    """One branch search (or its cached result)."""
    out = (
        cache / f"{method}-n{trials}-seed{seed}"
        if proxy_name == "warmstart"
        else cache / proxy_name / (f"{method}-n{trials}-seed{seed}")
    )
    if (out / "search.json").is_file():
        return SearchResult.load(out)
    proxy = PROXIES[proxy_name].seeded(seed)
    config = BranchSearchConfig(proxy=proxy, n_trials=trials, seed=seed, **METHODS[method])
    result = branch_search(data, space, config, out)
    result.save(out)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", default="8,20", help="trial counts (comma-separated)")
    p.add_argument("--search-seeds", type=int, default=5)
    p.add_argument("--train-seeds", type=int, default=3)
    p.add_argument("--proxy", default="warmstart", choices=list(PROXIES), help="how the searches score trees")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="runs/search_payoff")
    p.add_argument("--out", default="benchmarks/results/search_payoff.json")
    args = p.parse_args(argv)
    cache, data, space = families_problem(args.threads, args.cache)
    tasks, directions = data.task_names, primary_directions(data)
    retrain = Retrains(cache / "retrains.json", data, space)
    train_seeds = range(args.train_seeds)
    free = {
        "hard": space.hard_sharing(tasks),
        "independent": space.independent(tasks),
        "planted": planted_tree(tasks, space),
    }
    runs = {name: [retrain(g, t) for t in train_seeds] for name, g in free.items()}
    reference = {
        t: {m: float(np.mean([r["test"][t][m] for r in runs["independent"]])) for m in directions[t]}
        for t in directions
    }
    unit = float(np.mean([r["seconds"] for r in runs["hard"]]))

    def score(run: dict) -> float:
        return delta_m(run["test"], reference, directions)

    def cost(graph: SharingGraph) -> dict:
        c = MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks).cost()
        return {"params": c.params, "macs": c.macs}

    free_scores = {name: np.array([score(r) for r in rs]) for name, rs in runs.items()}
    free_costs = {name: cost(g) for name, g in free.items()}
    answers, comparisons, summary = {}, [], []
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "random" not in methods:
        p.error(f"--methods: known {list(METHODS)}, random included; got {methods}")
    for trials in (int(n) for n in args.trials.split(",")):
        for method in methods:
            rows = []
            for s in range(args.search_seeds):
                result = search(method, trials, s, data, space, cache, args.proxy)
                retrained = [retrain(result.graph, t) for t in train_seeds]
                rows.append(
                    {
                        "search_seed": s,
                        "graph": result.graph.describe(),
                        "planted": graph_key(result.graph) == graph_key(free["planted"]),
                        "scores": [score(r) for r in retrained],
                        "budget_runs": (result.seconds + float(np.mean([r["seconds"] for r in retrained]))) / unit,
                        **cost(result.graph),
                    }
                )
                print(f"n={trials} {method:<9} seed {s}: {np.mean(rows[-1]['scores']):+6.1f} Δm  {rows[-1]['graph']}")
            answers[(method, trials)] = rows
        for method in methods:
            rows = answers[(method, trials)]
            scores = np.array([r["scores"] for r in rows])
            macs = float(np.mean([r["macs"] for r in rows]))
            versus = {name: free_scores[name] for name in free}
            if method != "random":
                versus["random"] = np.array([r["scores"] for r in answers[("random", trials)]])
            for vs, other in versus.items():
                mean, (low, high) = payoff(scores, other)
                other_macs = (
                    free_costs[vs]["macs"]
                    if vs in free
                    else float(np.mean([r["macs"] for r in answers[("random", trials)]]))
                )
                comparisons.append(
                    {
                        "method": method,
                        "trials": trials,
                        "budget_runs": float(np.mean([r["budget_runs"] for r in rows])),
                        "vs": vs,
                        "diff_mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n_search_seeds": len(rows),
                        "n_train_seeds": len(train_seeds),
                        "params": float(np.mean([r["params"] for r in rows])),
                        "macs": macs,
                        "macs_ratio": macs / other_macs,
                    }
                )
            summary.append(
                {
                    "method": method,
                    "trials": trials,
                    "delta_m_mean": float(scores.mean()),
                    "planted_found": sum(r["planted"] for r in rows),
                    "budget_runs": float(np.mean([r["budget_runs"] for r in rows])),
                }
            )
    print(f"\nunit: one hard-sharing retrain = {unit:.1f} s; free alternatives (Δm, mean over training seeds):")
    for name, sc in free_scores.items():
        print(f"  {name:<12} {sc.mean():+6.1f}   MACs {free_costs[name]['macs'] / 1e6:.2f} M")
    print(f"\n{'method':<9} {'trials':>6} {'budget':>7} {'vs':<12} {'diff':>7}  95 % interval    MACs ratio")
    for c in comparisons:
        print(
            f"{c['method']:<9} {c['trials']:>6} {c['budget_runs']:>7.1f} {c['vs']:<12} {c['diff_mean']:>+7.2f}  "
            f"[{c['ci_low']:+6.2f}, {c['ci_high']:+6.2f}]  {c['macs_ratio']:.2f}"
        )
    return write_report(
        args.out,
        {
            "settings": vars(args),
            "default_method": DEFAULT_METHOD,
            "proxy": args.proxy,
            "proxy_fidelity": None,
            "unit_seconds": unit,
            "free": {name: {"delta_m": sc.tolist(), **free_costs[name]} for name, sc in free_scores.items()},
            "summary": summary,
            "comparisons": comparisons,
            "answers": {f"{m}-n{n}": rows for (m, n), rows in answers.items()},
        },
    )


if __name__ == "__main__":
    main()
