"""Does a search pay off? Tree searches against the free alternatives on the families benchmark, at equal budgets.

    python benchmarks/search_payoff.py [--budgets 10,30] [--search-seeds 5] [--train-seeds 3]
                                       [--methods random,tpe,tpe+rsa,tpe+rsa+shortlist] [--cache runs/search_payoff2]
                                       [--out benchmarks/results/search_payoff.json]

Problem: ``families`` (nas_mtl/data/families.py, data seed 0, 600 training images; six tasks in two planted
families), space ``search_spaces/families.toml`` (12,915 trees). Whatever a method answers is retrained from scratch
with the benchmark's training settings (:data:`TRAIN`: 30 epochs, batch 64, lr 3e-3, Adam; training seeds
0 .. train_seeds - 1) and scored by test Δm against the independent networks' seed mean (each task alone).

Budget: every method gets the same total compute, ``--budgets`` in hard-sharing trainings with :data:`TRAIN`
(``BranchSearchConfig.budget``, nas_mtl.search.budget's MACs model, the same on every machine): the proxy's
references, the warm start's affinity run, every tree scored, and the training of its answer (a shortlist's
trainings, or, without a shortlist, one retrain of the proxy's first place, reserved in the budget as a shortlist
of one). The measured wall time is reported beside it, in the same unit (one hard-sharing retrain, timed here).

Proxy (:data:`PROXY`, every method): each tree trained from scratch with :data:`TRAIN`'s settings for 20 epochs on
a fixed third of the training set (``subset``), Δm of validation against hard sharing trained so; no pruning (a
short-training pruner stops exactly the trees whose gain shows late). ``benchmarks/families_fidelity.py``
measures how it ranks trees against retraining (``proxy_fidelity`` below).

Methods, each with search seeds 0 .. search_seeds - 1 (the seed moves the sampler and the proxy's training seeds):

- ``random``: Optuna's random sampler;
- ``tpe``: multivariate TPE (the default sampler);
- ``tpe+rsa``: TPE whose first trials are hard sharing, independent networks and the tasks' RSA groups (single-task
  networks' representation similarity, Vandenhende et al. 2020) split at each branchable layer
  (``warm_start = rsa, hard, independent``: the informed trees first, the costly independent networks last);
- ``tpe+rsa+shortlist``: the same, its answer the best by validation of the proxy's best three trees, each
  trained as the answer will be (``shortlist = 3``); when the budget cannot train them, fewer.

Free alternatives, retrained with the same training seeds: ``hard``, ``independent``, and the ``planted`` tree
(what a search should find here). Comparisons: each method's answers minus an alternative (:func:`payoff`: mean
over search and training seeds; 95 % percentile bootstrap resampling both), against ``random`` at the same budget,
``hard``, ``independent`` and ``planted``. Every search and retrain is cached in ``--cache``: a rerun resumes, and
processes given different ``--methods`` may share it (each writes its own retrain file; all are read).
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
from nas_mtl.search.branching import BranchSearchConfig, branch_search, spent_budget
from nas_mtl.search.budget import CostModel
from nas_mtl.search.proxy import ProxyConfig, graph_key
from nas_mtl.search.quality import payoff
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

TRAIN = TrainConfig(epochs=30, batch_size=64, lr=3e-3, device="cpu", progress=False)
PROXY = ProxyConfig(
    warmstart=dataclasses.replace(TRAIN, epochs=5),
    finetune=dataclasses.replace(TRAIN, epochs=20),
    reference="hard",
    inherit=False,
    subset=1 / 3,
)
"""The benchmark's proxy: from scratch, 20 epochs on a third of the training set (0.29 of a retrain per tree by
the MACs model; the warm start's 5 epochs train the rsa warm start's single-task networks)."""
PROXY_NAME = "third-20"
"""Its name in ``benchmarks/results/families_fidelity.json``."""
SEARCH = {"pruner": "none", "n_trials": 1000, "shortlist": 1, "shortlist_epochs": TRAIN.epochs}
"""Settings of every method: the budget ends a search, the answer's retrain is reserved in it."""
WARM = ("rsa", "hard", "independent")
METHODS = {
    "random": {"sampler": "random"},
    "tpe": {"sampler": "tpe"},
    "tpe+rsa": {"sampler": "tpe", "warm_start": WARM},
    "tpe+rsa+shortlist": {"sampler": "tpe", "warm_start": WARM, "shortlist": 3},
}
DEFAULT_METHOD = "tpe+rsa+shortlist"
"""The configuration docs/searches.md recommends (``search branch --warm-start rsa,hard,independent --shortlist 3``)."""


class Retrains:
    """Trainings from scratch with ``config`` (default :data:`TRAIN`): validation and test metrics and seconds by
    (graph key, training seed), cached in one JSON file."""

    def __init__(self, path: Path, data, space, config: TrainConfig = TRAIN, also: tuple[Path, ...] = ()) -> None:
        self.path, self.data, self.space, self.config = path, data, space, config
        self.runs = {}
        for other in (*also, path):  # other processes' files first, this one's own last
            if other.is_file():
                self.runs.update(json.loads(other.read_text()))
        self.own = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, graph: SharingGraph, seed: int) -> dict:
        key = f"{graph_key(graph)}|{seed}"
        if key not in self.runs:
            t0 = time.perf_counter()
            result = train_graph(graph, self.data, self.space, dataclasses.replace(self.config, seed=seed))[1]
            self.runs[key] = self.own[key] = {
                "test": result.test,
                "val": result.val,
                "seconds": time.perf_counter() - t0,
            }
            write_json_atomic(self.own, self.path)
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


def search(method: str, budget: float, seed: int, data, space, cache: Path) -> SearchResult:
    """One branch search within ``budget`` (or its cached result); ``info["budget_spent"]`` its cost in units."""
    out = cache / f"{method}-b{budget:g}-seed{seed}"
    if (out / "search.json").is_file():
        return SearchResult.load(out)
    settings = {**SEARCH, **METHODS[method]}
    config = BranchSearchConfig(proxy=PROXY.seeded(seed), seed=seed, budget=budget, **settings)
    result = branch_search(data, space, config, out)
    study = optuna.load_study(study_name=config.study_name, storage=f"sqlite:///{out / 'study.db'}")
    trained = result.info.get("shortlist_cost")
    if trained is None:  # no shortlist trained: the reserved retrain of the proxy's first place
        trained = CostModel(data, space, TRAIN.epochs).training(result.graph, TRAIN.epochs)
    info = {
        **result.info,
        "budget_spent": spent_budget(study) + trained,
        "trees_scored": sum("score" in t.user_attrs for t in study.trials),
    }
    result = dataclasses.replace(result, info=info)
    result.save(out)
    return result


def fidelity(path: Path = Path("benchmarks/results/families_fidelity.json")) -> dict | None:
    """The benchmark proxy's entry in families_fidelity.json (None before that benchmark ran)."""
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())["proxies"].get(PROXY_NAME)
    keys = ("spearman", "ci_low", "ci_high", "ceiling", "n_trees", "cost_in_retrains")
    return None if entry is None else {"proxy": PROXY_NAME, **{k: entry[k] for k in keys}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="10,30", help="budgets in hard-sharing trainings (comma-separated)")
    p.add_argument("--search-seeds", type=int, default=5)
    p.add_argument("--train-seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="runs/search_payoff2")
    p.add_argument("--out", default="benchmarks/results/search_payoff.json")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if sorted(set(methods) - set(METHODS)) or not methods:
        p.error(f"--methods: known {list(METHODS)}; got {methods}")
    budgets = [float(b) for b in args.budgets.split(",")]
    cache, data, space = families_problem(args.threads, args.cache)
    tasks, directions = data.task_names, primary_directions(data)
    tag = "retrains" if len(methods) == len(METHODS) else "retrains-" + "-".join(sorted(methods))
    retrain = Retrains(cache / f"{tag}.json", data, space, also=tuple(sorted(cache.glob("retrains*.json"))))
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
    answers: dict[tuple[str, float], list[dict]] = {}
    for budget in budgets:
        for method in methods:
            rows = []
            for s in range(args.search_seeds):
                result = search(method, budget, s, data, space, cache)
                retrained = [retrain(result.graph, t) for t in train_seeds]
                shortlisted = result.info.get("shortlist") or []
                rows.append(
                    {
                        "search_seed": s,
                        "graph": result.graph.describe(),
                        "planted": graph_key(result.graph) == graph_key(free["planted"]),
                        "scores": [score(r) for r in retrained],
                        "budget_runs": result.info["budget_spent"],
                        "seconds_runs": (result.seconds + (0 if shortlisted else retrained[0]["seconds"])) / unit,
                        "trees_scored": result.info["trees_scored"],
                        "shortlisted": len(shortlisted),
                        **cost(result.graph),
                    }
                )
                print(
                    f"B={budget:g} {method:<18} seed {s}: {np.mean(rows[-1]['scores']):+6.1f} Δm  "
                    f"{rows[-1]['trees_scored']:>2} trees  {rows[-1]['graph']}",
                    flush=True,
                )
            answers[(method, budget)] = rows
    if len(methods) < len(METHODS):
        print("a subset of the methods: searches and retrains cached, no report written")
        return {}
    comparisons, summary = [], []
    for budget in budgets:
        for method in methods:
            rows = answers[(method, budget)]
            scores = np.array([r["scores"] for r in rows])
            macs = float(np.mean([r["macs"] for r in rows]))
            versus = {name: (free_scores[name], free_costs[name]["macs"]) for name in free}
            if method != "random":
                other = answers[("random", budget)]
                versus["random"] = (np.array([r["scores"] for r in other]), float(np.mean([r["macs"] for r in other])))
            for vs, (other_scores, other_macs) in versus.items():
                mean, (low, high) = payoff(scores, other_scores)
                comparisons.append(
                    {
                        "method": method,
                        "budget_runs": budget,
                        "vs": vs,
                        "diff_mean": mean,
                        "ci_low": low,
                        "ci_high": high,
                        "n_search_seeds": len(rows),
                        "n_train_seeds": len(train_seeds),
                        "params": float(np.mean([r["params"] for r in rows])),
                        "macs": macs,
                        "macs_ratio": macs / other_macs,
                        "spent_runs": float(np.mean([r["budget_runs"] for r in rows])),
                        "seconds_runs": float(np.mean([r["seconds_runs"] for r in rows])),
                    }
                )
            summary.append(
                {
                    "method": method,
                    "budget_runs": budget,
                    "delta_m_mean": float(scores.mean()),
                    "planted_found": sum(r["planted"] for r in rows),
                    "trees_scored": float(np.mean([r["trees_scored"] for r in rows])),
                    "spent_runs": float(np.mean([r["budget_runs"] for r in rows])),
                    "seconds_runs": float(np.mean([r["seconds_runs"] for r in rows])),
                }
            )
    print(f"\nunit: one hard-sharing retrain = {unit:.1f} s; free alternatives (Δm, mean over training seeds):")
    for name, sc in free_scores.items():
        print(f"  {name:<12} {sc.mean():+6.1f}   MACs {free_costs[name]['macs'] / 1e6:.2f} M")
    print(f"\n{'method':<18} {'budget':>6} {'trees':>5} {'spent':>6} {'wall':>6} {'Δm':>6}  planted found")
    for r in summary:
        print(
            f"{r['method']:<18} {r['budget_runs']:>6g} {r['trees_scored']:>5.1f} {r['spent_runs']:>6.1f} "
            f"{r['seconds_runs']:>6.1f} {r['delta_m_mean']:>+6.1f}  {r['planted_found']}/{args.search_seeds}"
        )
    print(f"\n{'method':<18} {'budget':>6} {'vs':<12} {'diff':>7}  95 % interval    MACs ratio")
    for c in comparisons:
        print(
            f"{c['method']:<18} {c['budget_runs']:>6g} {c['vs']:<12} {c['diff_mean']:>+7.2f}  "
            f"[{c['ci_low']:+6.2f}, {c['ci_high']:+6.2f}]  {c['macs_ratio']:.2f}"
        )
    return write_report(
        args.out,
        {
            "settings": vars(args),
            "default_method": DEFAULT_METHOD,
            "proxy": {"name": PROXY_NAME, **PROXY.to_dict()},
            "proxy_fidelity": fidelity(),
            "unit_seconds": unit,
            "free": {name: {"delta_m": sc.tolist(), **free_costs[name]} for name, sc in free_scores.items()},
            "summary": summary,
            "comparisons": comparisons,
            "answers": {f"{m}-b{b:g}": rows for (m, b), rows in answers.items()},
        },
    )


if __name__ == "__main__":
    main()
