"""Proxy fidelity: does the warm-start proxy rank trees as a full retrain from scratch does?

    python benchmarks/proxy_fidelity.py [--truth-dir runs/noise_ceiling] [--trees 24] [--seeds 3]
                                        [--study studies/shapes.toml] [--epochs 0]
                                        [--run-dir runs/proxy_fidelity] [--out benchmarks/results/proxy_fidelity.json]

The proxy scores are the seeded exhaustive ground truth of ``benchmarks/noise_ceiling.py`` (its score table in
TRUTH_DIR; every seed in it is averaged). ``--trees`` trees are picked evenly over that seed-mean ranking (its
best and worst always among them) and each is retrained from scratch, on the same data the proxy used (same
tasks, 2000 train / 500 val images of 16 px) with the [train] settings of the study file (``--epochs N`` > 0
overrides its epochs, and says so in the report), under seeds 0 .. ``seeds`` - 1. A run's score is Δm
(Maninis et al. 2019) of its test metrics (1000 test images) against single-task networks trained with the
same settings and seed, over each task's primary metric; validation Δm is recorded too.

Reported: Spearman and Kendall correlation of the proxy's seed mean with the retrain's seed mean over the
picked trees, with 95 % percentile-bootstrap intervals over trees; the retrain's seed-to-seed noise (std of
the per-tree difference of two seeds; one run's std once each seed's uniform shift is removed, since a seed's own
single-task nets move every tree's Δm alike; and the noise ceiling of the retrain table itself,
:func:`~nas_mtl.search.ceiling.noise_ceiling`) and the attenuation ceiling that noise puts on any correlation
with it (Spearman 1904: sqrt of the product of both sides' reliabilities); whether the proxy's best tree is
within one paired standard error of the retrain's best (its retrain Δm gap, paired over seeds); and the cost
of one retrain against one proxy score. Every finished run is kept in RUN_DIR: a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report
from scipy.stats import kendalltau, spearmanr

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import create_dataset
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.runs import check_settings, read_json, write_json_atomic
from nas_mtl.search.ceiling import noise_ceiling
from nas_mtl.search.exhaustive import TABLE, ScoreTable
from nas_mtl.search.proxy import graph_from_key
from nas_mtl.space import load_search_space
from nas_mtl.study import load_study, slug
from nas_mtl.train import TrainConfig

SPACE = "shapes_branch4"
DATA = {"n_train": 2000, "n_val": 500, "n_test": 1000, "size": 16}
"""The proxy's data (noise_ceiling.py's defaults) with the study's test-set size for the final metric."""
RUN_KEYS = ("val", "test", "train_seconds", "params", "macs")


def _truth(truth_dir: Path) -> ScoreTable:
    """The noise-ceiling score table, opened with its own header (so nothing in it is rewritten)."""
    path = truth_dir / TABLE
    if not path.is_file():
        sys.exit(
            f"{path}: no score table; build it with `python benchmarks/noise_ceiling.py --run-dir {truth_dir}` "
            "(about 30 min of one core)"
        )
    header = json.loads(path.read_text().split("\n", 1)[0])
    return ScoreTable(path, {k: v for k, v in header.items() if k != "format"})


def pick(n: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``n`` ranks, first and last included (deterministic)."""
    if not 2 <= k <= n:
        raise ValueError(f"--trees: need 2 <= trees <= {n}, got {k}")
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _run(graph: SharingGraph, data, space, config: TrainConfig, out: Path) -> dict:
    """One retrain (read back if ``out`` holds a finished one): its metrics, cost and time."""
    row_path = out / "row.json"
    if row_path.is_file():
        return read_json(row_path, "run", RUN_KEYS, f"delete {out} to retrain it")
    net, result = train_graph(graph, data, space, config)
    cost = net.cost()
    row = {
        "val": result.val,
        "test": result.test,
        "train_seconds": result.train_seconds,
        "params": cost.params,
        "macs": cost.macs,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(row, row_path)
    return row


def record_cache(run_dir: Path, tasks: list[str], train: TrainConfig) -> None:
    """Record what the retrains in ``run_dir`` depend on, or check it against the record (one cache, shared by
    ``search_quality.py``)."""
    settings = {
        "tasks": list(tasks),
        "space": SPACE,
        "data": DATA,
        "train": {k: v for k, v in train.to_dict().items() if k != "seed"},
    }
    record = run_dir / "settings.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    if record.is_file():
        check_settings(read_json(record, "settings record"), settings, record, "retrain cache")
    else:
        write_json_atomic(settings, record)


def _interval(a: np.ndarray, b: np.ndarray, statistic, n_boot: int = 10000) -> list[float]:
    """95 % percentile-bootstrap interval of ``statistic(a, b)`` over resampled rows (seed 0; resamples where
    one side is constant have no rank correlation and are left out)."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(a), len(a))
        if np.ptp(a[idx]) > 0 and np.ptp(b[idx]) > 0:
            values.append(statistic(a[idx], b[idx]).statistic)
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--truth-dir", default="runs/noise_ceiling", help="noise_ceiling.py's run folder")
    p.add_argument("--trees", type=int, default=24, help="trees picked evenly over the proxy's ranking")
    p.add_argument("--seeds", type=int, default=3, help="retrain seeds 0 .. seeds - 1")
    p.add_argument("--study", default="studies/shapes.toml", help="study file whose [train] table is used")
    p.add_argument("--epochs", type=int, default=0, help="override the study's epochs (0: keep them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    p.add_argument("--run-dir", default="runs/proxy_fidelity", help="cache: one folder per finished retrain")
    p.add_argument("--out", default="benchmarks/results/proxy_fidelity.json")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds: at least 2 (the retrain's noise is measured between seeds)")
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)

    table = _truth(Path(args.truth_dir))
    proxy_seeds = sorted(table.by_seed)
    ranking = table.ranking(proxy_seeds)
    tasks = table.header["tasks"]
    data = create_dataset("shapes", tasks=",".join(tasks), **DATA)
    space = load_search_space(SPACE, input_shape=data.input_shape)
    study_train = load_study(args.study).train
    train = dataclasses.replace(study_train, device="cpu", progress=False)
    if args.epochs:
        train = dataclasses.replace(train, epochs=args.epochs)
    record_cache(run_dir, tasks, train)

    positions = pick(len(ranking), args.trees)
    picked = [ranking[i] for i in positions]
    directions = primary_directions(data)
    print(
        f"{len(picked)} of {len(ranking)} trees (proxy ranks {', '.join(str(i + 1) for i in positions)})"
        f" x {args.seeds} seeds, retrained with {args.study} [train] ({train.epochs} epochs, batch "
        f"{train.batch_size}, lr {train.lr}, {train.optimizer}, {train.scheduler})"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    runs: dict[str, list[dict]] = {r.key: [] for r in picked}
    singles: list[dict[str, dict]] = []
    for seed in range(args.seeds):  # seed by seed: a stopped run leaves whole seeds behind it
        config = dataclasses.replace(train, seed=seed)
        single = {}
        for t in tasks:
            graph = SharingGraph.hard_sharing([t], space.layers, space.skippable).with_meta(name=f"single:{t}")
            single[t] = _run(graph, data, space, config, run_dir / f"seed{seed}" / "single" / t)
        singles.append(single)
        ref = {split: {t: single[t][split][t] for t in tasks} for split in ("val", "test")}
        for r in picked:
            row = _run(
                graph_from_key(r.key, tasks, space.layers), data, space, config, run_dir / f"seed{seed}" / slug(r.key)
            )
            row = {**row, **{f"{s}_delta_m": delta_m(row[s], ref[s], directions) for s in ("val", "test")}}
            runs[r.key].append(row)
            print(
                f"  seed {seed} {r.key}: test Δm {row['test_delta_m']:+.2f} (val {row['val_delta_m']:+.2f}) "
                f"{row['train_seconds']:.1f}s",
                flush=True,
            )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    proxy = np.array([r.delta_m for r in picked])
    retrain = np.array([[row["test_delta_m"] for row in runs[r.key]] for r in picked])  # trees x seeds
    retrain_val = np.array([[row["val_delta_m"] for row in runs[r.key]] for r in picked])
    mean = retrain.mean(1)
    rho, tau = spearmanr(proxy, mean).statistic, kendalltau(proxy, mean).statistic
    rho_ci, tau_ci = _interval(proxy, mean, spearmanr), _interval(proxy, mean, kendalltau)
    rho_val = spearmanr(proxy, retrain_val.mean(1)).statistic
    per_seed = [float(spearmanr(proxy, retrain[:, s]).statistic) for s in range(args.seeds)]
    diffs = retrain[:, 0] - retrain[:, 1]
    # a seed moves every tree alike (its own single-task nets are Δm's reference): what orders trees is the rest
    shifted = retrain - retrain.mean(0)
    residual = shifted - shifted.mean(1, keepdims=True)
    run_std = math.sqrt((residual**2).sum() / ((len(picked) - 1) * (args.seeds - 1)))  # two-way residual
    retrain_ceiling = noise_ceiling(retrain)
    proxy_ceiling = noise_ceiling([[s.delta_m for s in r.scores] for r in picked])
    attenuation = math.sqrt(retrain_ceiling.reliability * proxy_ceiling.reliability)

    p_best, r_best = int(np.argmax(proxy)), int(np.argmax(mean))
    gaps = retrain[r_best] - retrain[p_best]  # per seed: retrain's best minus the proxy's best, paired
    gap, gap_se = float(gaps.mean()), float(gaps.std(ddof=1) / math.sqrt(args.seeds))
    retrain_rank = {i: k + 1 for k, i in enumerate(np.argsort(-mean, kind="stable"))}

    tree_runs = [row for rows in runs.values() for row in rows]
    per_retrain = statistics.mean(row["train_seconds"] for row in tree_runs)
    per_single = statistics.mean(s[t]["train_seconds"] for s in singles for t in tasks)
    per_proxy = statistics.mean(s.seconds for r in ranking for s in r.scores)

    print(f"{'proxy rank':>10} {'retrain rank':>12} {'proxy Δm':>9} {'retrain Δm':>10} {'seed std':>8}  tree")
    for i, r in enumerate(picked):
        print(
            f"{ranking.index(r) + 1:>10} {retrain_rank[i]:>12} {proxy[i]:>+9.2f} {mean[i]:>+10.2f} "
            f"{shifted[i].std(ddof=1):>8.2f}  {r.key}"
        )
    print(
        f"Spearman {rho:.2f} (95 % bootstrap over trees {rho_ci[0]:.2f} .. {rho_ci[1]:.2f}), Kendall {tau:.2f} "
        f"({tau_ci[0]:.2f} .. {tau_ci[1]:.2f}); per retrain seed {', '.join(f'{x:.2f}' for x in per_seed)}; "
        f"vs validation Δm {rho_val:.2f}"
    )
    print(
        f"retrain noise: std of seed 0 - seed 1 per tree {diffs.std(ddof=1):.2f} Δm points (one run's std once "
        f"each seed's shift is removed {run_std:.2f}, seed means {', '.join(f'{x:+.1f}' for x in retrain.mean(0))}; "
        f"spread of retrain means "
        f"{mean.std(ddof=1):.2f}); mean Spearman of two retrain seeds {retrain_ceiling.pairwise_spearman:.2f}, "
        f"reliability of the {args.seeds}-seed mean {retrain_ceiling.reliability:.2f}; "
        f"proxy's {proxy_ceiling.reliability:.2f} on these trees ({len(proxy_seeds)} seeds): "
        f"attenuation ceiling {attenuation:.2f}"
    )
    within = gap <= gap_se
    print(
        f"proxy's best {picked[p_best].key} is retrain rank {retrain_rank[p_best]}; retrain's best "
        f"{picked[r_best].key} (proxy rank {ranking.index(picked[r_best]) + 1}); gap {gap:.2f} ± {gap_se:.2f} "
        f"(paired SE over {args.seeds} seeds): {'within' if within else 'outside'} the noise"
    )
    print(
        f"cost: retrain {per_retrain:.1f}s (+ {len(tasks)} single-task nets of {per_single:.1f}s per seed) vs proxy "
        f"score {per_proxy:.2f}s = {per_retrain / per_proxy:.1f}x; this run {wall:.0f}s wall / {cpu:.0f}s CPU"
    )
    report = {
        "benchmark": "proxy_fidelity",
        "space": SPACE,
        "tasks": tasks,
        "data": DATA,
        "truth": {
            "dir": args.truth_dir,
            "seeds": proxy_seeds,
            "n_trees": len(ranking),
            "proxy": table.header["proxy"],
        },
        "retrain": {
            "study": args.study,
            "train": {k: v for k, v in train.to_dict().items() if k != "seed"},
            "epochs_override": args.epochs or None,
            "study_epochs": study_train.epochs,
            "seeds": list(range(args.seeds)),
            "metric": "test Δm (%) vs single-task nets of the same settings and seed, primary metrics",
        },
        "trees": [
            {
                "key": r.key,
                "proxy_rank": ranking.index(r) + 1,
                "retrain_rank": retrain_rank[i],
                "proxy_delta_m": float(proxy[i]),
                "proxy_delta_m_seeds": [s.delta_m for s in r.scores],
                "retrain_delta_m": float(mean[i]),
                "retrain_delta_m_seeds": retrain[i].tolist(),
                "retrain_val_delta_m_seeds": retrain_val[i].tolist(),
                "params": runs[r.key][0]["params"],
                "macs": runs[r.key][0]["macs"],
            }
            for i, r in enumerate(picked)
        ],
        "spearman": {"value": float(rho), "ci95": rho_ci, "per_retrain_seed": per_seed, "vs_val_delta_m": rho_val},
        "kendall": {"value": float(tau), "ci95": tau_ci},
        "interval": "95 % percentile bootstrap over the picked trees, 10000 resamples, seed 0",
        "retrain_noise": {
            "seed_diff_std": float(diffs.std(ddof=1)),
            "per_run_std": run_std,
            "per_run_std_note": "residual std of a two-way (tree + seed) additive model: one run's noise once each "
            "seed's uniform shift (its own single-task references) is removed",
            "seed_means": retrain.mean(0).tolist(),
            "retrain_mean_spread_std": float(mean.std(ddof=1)),
            "noise_ceiling": retrain_ceiling.to_dict(),
        },
        "proxy_noise_ceiling_on_picked": proxy_ceiling.to_dict(),
        "attenuation_ceiling": attenuation,
        "best": {
            "proxy_best": picked[p_best].key,
            "proxy_best_retrain_rank": retrain_rank[p_best],
            "retrain_best": picked[r_best].key,
            "retrain_best_proxy_rank": ranking.index(picked[r_best]) + 1,
            "gap": gap,
            "gap_paired_se": gap_se,
            "within_one_se": bool(within),
        },
        "seconds": {
            "per_retrain": per_retrain,
            "per_single_task_net": per_single,
            "per_proxy_score": per_proxy,
            "ratio": per_retrain / per_proxy,
            "all_runs_train": sum(row["train_seconds"] for row in tree_runs)
            + sum(s[t]["train_seconds"] for s in singles for t in tasks),
            "this_run_wall": wall,
            "this_run_cpu": cpu,
        },
        "threads": args.threads,
    }
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
