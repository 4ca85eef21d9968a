"""Noise ceiling of the seeded exhaustive ground truth: how well the truth itself ranks candidates, and its cost.

    python benchmarks/noise_ceiling.py [--seeds 3] [--n-train 2000] [--n-val 500] [--proxy-epochs 3]
                                       [--tasks quadrant,size,orientation,hue] [--sample 0]
                                       [--run-dir runs/noise_ceiling] [--out benchmarks/results/noise_ceiling.json]

Space and tasks as ``benchmarks/search_quality.py`` (``shapes_branch4``: 315 trees for 4 tasks). Every tree is
scored under ``seeds`` seeds (seed number i: warm start and fine-tuning with seed i), the truth is the seed
mean, and :func:`~nas_mtl.search.ceiling.noise_ceiling` reports how well it ranks: the Spearman correlation of
two seeds, the split-half (Spearman–Brown) reliability of the seed mean (the ceiling), and how often a seed's
best tree is within one standard error of the truth's best. The reliability is also given for the first 2, 3,
... seeds, to show how many seeds a target ceiling needs.

``--sample N`` scores a fixed random sample of N trees instead of all (a quick estimate of the same
correlations, and of the time per tree, for choosing settings); its scores go into the same table, so a full
run with the same settings reuses them. Everything is cached in RUN_DIR: a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report

from nas_mtl.data import create_dataset
from nas_mtl.search.ceiling import noise_ceiling
from nas_mtl.search.exhaustive import (
    TABLE,
    ExhaustiveConfig,
    ScoreTable,
    candidate_graphs,
    exhaustive_search,
    score_header,
    seed_dir,
)
from nas_mtl.search.proxy import Proxy, ProxyConfig, graph_key
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig


def _proxy(args: argparse.Namespace) -> ProxyConfig:
    base = TrainConfig(batch_size=args.batch_size, lr=3e-3, device="cpu", progress=False)
    return ProxyConfig(
        inherit=True,
        warmstart=dataclasses.replace(base, epochs=args.warmstart_epochs),
        finetune=dataclasses.replace(base, epochs=args.proxy_epochs),
        reference="hard",
        subset=args.subset,
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds of the ground truth")
    p.add_argument("--tasks", default="quadrant,size,orientation,hue")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--subset", type=float, default=0.5, help="fraction of the training set for fine-tuning")
    p.add_argument("--warmstart-epochs", type=int, default=10)
    p.add_argument("--proxy-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sample", type=int, default=0, help="score this many random trees only (0: all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    p.add_argument("--run-dir", default="runs/noise_ceiling", help="cache: warm starts and scores")
    p.add_argument("--out", default="benchmarks/results/noise_ceiling.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)

    data = create_dataset("shapes", n_train=args.n_train, n_val=args.n_val, n_test=64, size=16, tasks=args.tasks)
    space = load_search_space("shapes_branch4", input_shape=data.input_shape)
    proxy = _proxy(args)
    graphs = list(candidate_graphs(data.task_names, space))
    t0, c0 = time.perf_counter(), time.process_time()
    if args.sample:
        graphs = random.Random(0).sample(graphs, min(args.sample, len(graphs)))
        table = ScoreTable(run_dir / TABLE, score_header(data, space, proxy, "trees"))
        setup = 0.0
        for seed in range(args.seeds):
            scorer = Proxy.prepare(data, space, proxy.seeded(seed), seed_dir(run_dir, seed))
            setup += scorer.setup_seconds
            for graph in graphs:
                if graph_key(graph) not in table.seed_scores(seed):
                    table.add(graph_key(graph), scorer.score(graph), seed)
        keys = {graph_key(g) for g in graphs}
        ranking = [r for r in table.ranking(range(args.seeds)) if r.key in keys]
    else:
        truth = exhaustive_search(data, space, ExhaustiveConfig(proxy=proxy, seeds=args.seeds), run_dir)
        table = ScoreTable(run_dir / TABLE, score_header(data, space, proxy, "trees"))
        ranking = table.ranking(range(args.seeds))
        setup = truth.seconds - truth.info["proxy_seconds"]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = [[s.delta_m for s in r.scores] for r in ranking]
    ceiling = noise_ceiling(scores)
    by_seeds = {k: noise_ceiling([row[:k] for row in scores]).reliability for k in range(2, args.seeds + 1)}
    beyond_cost = noise_ceiling(_beyond_cost(scores, ranking))
    per_tree = statistics.mean(s.seconds for r in ranking for s in r.scores)
    n_trees = len(list(candidate_graphs(data.task_names, space)))
    spread = statistics.stdev(r.delta_m for r in ranking)
    seed_sd = statistics.mean(statistics.stdev(row) for row in scores)
    full_estimate = setup + args.seeds * n_trees * per_tree
    busy = cpu / wall if wall > 1 else 1.0  # < 1 on a shared machine: the process waited for a core
    print(
        f"{len(ranking)} of {n_trees} trees x {args.seeds} seeds ({args.n_train} train / {args.n_val} val, "
        f"subset {args.subset}, {args.warmstart_epochs}+{args.proxy_epochs} epochs): {per_tree:.2f}s per tree "
        f"and seed, warm starts {setup:.0f}s, this run {wall:.0f}s wall / {cpu:.0f}s CPU; all trees x seeds "
        f"~ {full_estimate / 60:.1f} min ({full_estimate * busy / 60:.1f} min at this run's CPU share)"
    )
    print(
        f"Spearman of two seeds {ceiling.pairwise_spearman:.3f} (min {ceiling.pairwise_min:.3f}); reliability of "
        f"the seed mean {ceiling.reliability:.3f} (split-half {ceiling.split_half:.3f}); by seeds: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in by_seeds.items())
    )
    print(
        f"beyond cost (each seed's Δm less its least-squares fit on log params and log MACs): Spearman of two "
        f"seeds {beyond_cost.pairwise_spearman:.3f}, reliability {beyond_cost.reliability:.3f}"
    )
    print(
        f"a seed's best within 1 SE of the truth's best: {ceiling.best_hits:.2f} (mean regret "
        f"{ceiling.best_regret:.2f}); Δm spread (std of means) {spread:.2f}, per-tree seed std {seed_sd:.2f}"
    )
    report = {
        "benchmark": "noise_ceiling",
        "space": "shapes_branch4",
        "tasks": args.tasks.split(","),
        "n_trees": n_trees,
        "trees_scored": len(ranking),
        "seeds": args.seeds,
        "noise_ceiling": ceiling.to_dict(),
        "reliability_by_seeds": by_seeds,
        "noise_ceiling_beyond_cost": beyond_cost.to_dict(),
        "delta_m_spread_std": spread,
        "seed_std_mean": seed_sd,
        "seconds": {
            "per_tree_and_seed": per_tree,
            "warm_starts": setup,
            "this_run_wall": wall,
            "this_run_cpu": cpu,
            "all_trees_estimate": full_estimate,
            "all_trees_estimate_cpu": full_estimate * busy,
        },
        "best": {"key": ranking[0].key, "delta_m": ranking[0].delta_m, "se": ranking[0].se},
        "proxy": proxy.to_dict(),
        "data": {"n_train": args.n_train, "n_val": args.n_val, "size": 16},
        "threads": args.threads,
    }
    return write_report(args.out, report)


def _beyond_cost(scores: list[list[float]], ranking: list) -> np.ndarray:
    """Each seed's Δm less its least-squares fit on (1, log params, log MACs): what a ranking by cost alone
    cannot tell (a truth whose ceiling stays high here ranks more than "bigger is better")."""
    s0 = [r.scores[0] for r in ranking]
    design = np.column_stack([np.ones(len(s0)), np.log([s.params for s in s0]), np.log([s.macs for s in s0])])
    table = np.asarray(scores)
    coef, *_ = np.linalg.lstsq(design, table, rcond=None)
    return table - design @ coef


if __name__ == "__main__":
    main()
