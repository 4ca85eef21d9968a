"""Which proxy ranks trees like a retrain on the families benchmark? Proxy fidelity against retraining from scratch.

    python benchmarks/families_fidelity.py [--trees 24] [--seeds 2] [--cache runs/families_fidelity]
                                           [--out benchmarks/results/families_fidelity.json]

Trees: the planted tree, hard sharing, independent networks, the families sharing the stem, and random trees of
``search_spaces/families.toml`` (seeded, distinct) up to ``--trees``. Data: ``families`` (data seed 0, 600
training images). Truth: each tree retrained from scratch (search_payoff.py's settings: 30 epochs) under training
seeds 0 .. seeds - 1, scored by test Δm against the independent networks' seed mean.

Proxies, each under the same seeds (the seed moves its training seeds):

- ``warmstart``: the default proxy (nas_mtl.search.proxy): a hard-sharing warm start (5 epochs) every tree
  inherits, 3 fine-tuning epochs per tree, validation Δm against the warm start's own metrics;
- ``third-20`` (search_payoff.py's proxy): each tree trained from scratch with the retrain's settings for 20
  epochs on a fixed third of the training set; validation Δm against hard sharing trained so;
- ``scratch-6`` (Standley et al.'s early-stopping estimate: 20 % of the retrain's 30 epochs) and ``scratch-10``
  (a third): each tree trained from scratch for that many epochs with the retrain's settings (its learning-rate
  schedule compressed to those epochs), validation Δm against the independent networks trained the same way.

Reported per proxy: Spearman correlation of its seed mean with the retrain's seed mean over the trees, with a 95 %
percentile bootstrap interval over trees; the attenuation ceiling that both sides' seed noise allows,
sqrt(reliability of the retrain x reliability of the proxy) (Spearman 1904; reliabilities from
:func:`~nas_mtl.search.ceiling.noise_ceiling`); and the cost of one tree's score in retrains (measured seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import optuna
from _report import write_report
from scipy.stats import spearmanr
from search_payoff import PROXY, PROXY_NAME, TRAIN, Retrains, families_problem

from nas_mtl.baselines import primary_directions
from nas_mtl.data.families import planted_groups, planted_tree
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.runs import write_json_atomic
from nas_mtl.search.branching import suggest_tree
from nas_mtl.search.ceiling import noise_ceiling
from nas_mtl.search.proxy import Proxy, ProxyConfig, graph_key

WARMSTART = ProxyConfig(
    warmstart=dataclasses.replace(TRAIN, epochs=5),
    finetune=dataclasses.replace(TRAIN, epochs=3),
    reference="hard",
    inherit=True,
    subset=1.0,
)
"""The toolkit's inheriting proxy as search_payoff.py ran it before: a 5-epoch hard-sharing warm start, 3 epochs."""


def trees(tasks, space, n: int, seed: int = 0) -> list[SharingGraph]:
    """The four named trees, then distinct random trees (Optuna's random sampler over the tree encoding)."""
    named = [
        planted_tree(tasks, space),
        space.hard_sharing(tasks),
        space.independent(tasks),
        SharingGraph.from_groups(tasks, space.layers, planted_groups(tasks), 1, space.skippable),
    ]
    out, seen = [], set()
    for g in named:
        seen.add(graph_key(g))
        out.append(g)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(out) < n:
        g = suggest_tree(study.ask(), tasks, space.layers, space.branchable)
        if graph_key(g) not in seen:
            seen.add(graph_key(g))
            out.append(g)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", type=int, default=24)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="runs/families_fidelity")
    p.add_argument("--out", default="benchmarks/results/families_fidelity.json")
    args = p.parse_args(argv)
    cache, data, space = families_problem(args.threads, args.cache)
    tasks, directions = data.task_names, primary_directions(data)
    graphs = trees(tasks, space, args.trees)
    seeds = range(args.seeds)
    retrain = Retrains(cache / "retrains.json", data, space)
    runs = [[retrain(g, s) for s in seeds] for g in graphs]
    independent = runs[2]
    reference = {
        t: {m: float(np.mean([r["test"][t][m] for r in independent])) for m in directions[t]} for t in directions
    }
    truth = np.array([[delta_m(r["test"], reference, directions) for r in row] for row in runs])
    unit = float(np.mean([r["seconds"] for row in runs for r in row]))  # one retrain, averaged over the trees

    proxies: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    scores_path = cache / "proxy_scores.json"
    stored = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    for name in ("warmstart", "scratch-6", "scratch-10", PROXY_NAME):
        if name not in stored:
            table, t0 = [], time.perf_counter()
            for s in seeds:
                if name in ("warmstart", PROXY_NAME):
                    config = WARMSTART if name == "warmstart" else PROXY
                    proxy = Proxy.prepare(data, space, config.seeded(s), cache / f"{name}-{s}")
                    table.append([proxy.score(g).delta_m for g in graphs])
                else:
                    epochs = int(name.split("-")[1])
                    short = Retrains(cache / f"{name}.json", data, space, dataclasses.replace(TRAIN, epochs=epochs))
                    vals = [short(g, s)["val"] for g in graphs]
                    table.append([delta_m(v, vals[2], directions) for v in vals])  # vs independent, as trained
            stored[name] = {"scores": np.array(table).T.tolist(), "seconds": time.perf_counter() - t0}
            write_json_atomic(stored, scores_path)
        proxies[name] = np.array(stored[name]["scores"])
        seconds[name] = stored[name]["seconds"] / (len(graphs) * len(seeds))
    retrain_ceiling = noise_ceiling(truth)
    truth_mean = truth.mean(axis=1)
    rng = np.random.default_rng(0)
    report = {}
    print(f"{len(graphs)} trees, {args.seeds} seeds; retrain reliability {retrain_ceiling.reliability:.2f}")
    for name, table in proxies.items():
        mean = table.mean(axis=1)
        rho = float(spearmanr(mean, truth_mean).statistic)
        boot = []
        for _ in range(4000):
            i = rng.integers(0, len(graphs), len(graphs))
            if len(set(i)) > 2:
                boot.append(spearmanr(mean[i], truth_mean[i]).statistic)
        low, high = (float(v) for v in np.nanpercentile(boot, [2.5, 97.5]))
        ceiling = math.sqrt(max(0.0, retrain_ceiling.reliability) * max(0.0, noise_ceiling(table).reliability))
        best = int(np.argmax(mean))
        report[name] = {
            "spearman": rho,
            "ci_low": low,
            "ci_high": high,
            "ceiling": ceiling,
            "n_trees": len(graphs),
            "cost_in_retrains": seconds[name] / unit,
            "best_tree": graphs[best].describe(),
            "best_tree_retrain_rank": int(1 + (truth_mean > truth_mean[best]).sum()),
        }
        print(
            f"{name:<10} Spearman {rho:+.2f} [{low:+.2f}, {high:+.2f}]  ceiling {ceiling:.2f}  "
            f"cost {seconds[name] / unit:.2f} retrains/tree  its best tree: retrain rank "
            f"{report[name]['best_tree_retrain_rank']}"
        )
    return write_report(
        args.out,
        {
            "settings": vars(args),
            "trees": [g.describe() for g in graphs],
            "retrain_delta_m": truth.tolist(),
            "retrain_reliability": retrain_ceiling.reliability,
            "proxies": report,
        },
    )


if __name__ == "__main__":
    main()
