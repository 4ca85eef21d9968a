"""Every search method against the markers dataset's planted answer: hit rate and cost over seeds.

    python benchmarks/planted.py [--seeds 5] [--trials 8] [--run-dir runs/planted]
                                 [--out benchmarks/results/planted.json]

Data: ``markers`` (nas_mtl/data/markers.py) at 16 px, 1024 training and 256 validation images, data seed = search
seed. Space: ``search_spaces/shapes_branch4.toml`` (stem + s0.b0, s0.b1, s1.b0, s1.b1; 35 trees for 3 tasks;
s0.b0, s0.b1 and s1.b1 skippable). The planted answer: tint leaves order and offset at s0.b0 (a tree: scored by
``splits_as_planted``), or skips every skippable block while they run some (a policy: ``skips_as_planted``).

Per seed:

1. planting: hard sharing, the planted tree and the planted policy retrained from scratch (8 epochs); Δm of each
   against hard sharing and tint's error ratio -- is the planted answer right on this seed?
2. exhaustive: every tree scored by the warm-start proxy (warm start 2 epochs, 4 fine-tuning epochs): where the
   planted trees rank, and whether the proxy's best tree splits as planted (what any tree search can reach);
3. branch search with that proxy for real: TPE + median pruning and random sampling, ``trials`` trials each;
4. AdaShare at the small budget of tests/test_data_markers.py, and the same with the reference's λ_sharing 0.05;
5. affinity: lookahead and gradient cosine (one hard-sharing run, 4 epochs) and RSA / CKA (single-task networks,
   4 epochs), k = 2 groups branching at s0.b0 (RSA / CKA: their layer-wise trees).

Cost: the method's own seconds (``SearchResult.seconds``), also as a multiple of one hard-sharing training of 8
epochs on the same data (the planting run). Everything runs on one thread of the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import optuna
import torch
from _report import write_report

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import create_dataset
from nas_mtl.data.markers import (
    SMALL_BUDGET_ADASHARE,
    planted_policy,
    planted_tree,
    skips_as_planted,
    splits_as_planted,
)
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.search.adashare import AdaShareConfig, adashare_search
from nas_mtl.search.affinity import AffinityConfig, affinity_search
from nas_mtl.search.branching import BranchSearchConfig, branch_search
from nas_mtl.search.exhaustive import ExhaustiveConfig, exhaustive_search
from nas_mtl.search.proxy import ProxyConfig, graph_from_key
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

SPACE = "shapes_branch4"


def _planting(data, space, train: TrainConfig) -> dict:
    """Hard sharing, planted tree and planted policy retrained from scratch; Δm against hard sharing."""
    config = dataclasses.replace(train, epochs=8)
    runs = {}
    for name, graph in (
        ("hard", space.hard_sharing(data.task_names)),
        ("tree", planted_tree(data.task_names, space)),
        ("policy", planted_policy(data.task_names, space)),
    ):
        t0 = time.perf_counter()
        runs[name] = (train_graph(graph, data, space, config)[1].val, time.perf_counter() - t0)
    hard = runs["hard"][0]
    directions = primary_directions(data)
    return {
        "val": {k: v for k, (v, _) in runs.items()},
        "hard_seconds": runs["hard"][1],
        **{f"{k}_delta_m_vs_hard": delta_m(runs[k][0], hard, directions) for k in ("tree", "policy")},
        **{f"{k}_tint_mae_ratio": runs[k][0]["tint"]["mae"] / hard["tint"]["mae"] for k in ("tree", "policy")},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="data and search seeds 0..N-1")
    p.add_argument("--trials", type=int, default=8, help="branch search trials (of 35 trees)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default="runs/planted", help="scratch folder (emptied per seed)")
    p.add_argument("--out", default="benchmarks/results/planted.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    planting = []

    def record(method: str, seed: int, graph: SharingGraph, seconds: float, hit: bool, hard_s: float, **extra):
        rows.setdefault(method, []).append(
            {
                "seed": seed,
                "hit": hit,
                "seconds": seconds,
                "hard_trainings": seconds / hard_s,
                "graph": graph.describe(),
            }
            | extra
        )
        print(f"  seed {seed} {method:<22} hit={hit!s:<5} {seconds:6.1f}s  {graph.describe()}", flush=True)

    for seed in range(args.seeds):
        run_dir = Path(args.run_dir) / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        data = create_dataset("markers", n_train=1024, n_val=256, n_test=16, seed=seed)
        space = load_search_space(SPACE, input_shape=data.input_shape)
        train = TrainConfig(batch_size=64, lr=3e-3, device="cpu", seed=seed)
        planted = _planting(data, space, train)
        planting.append({"seed": seed, **{k: v for k, v in planted.items() if k != "val"}, "val": planted["val"]})
        hard_s = planted["hard_seconds"]
        print(
            f"seed {seed}: planted tree Δm vs hard {planted['tree_delta_m_vs_hard']:+.1f}%, policy "
            f"{planted['policy_delta_m_vs_hard']:+.1f}%; tint MAE x{planted['tree_tint_mae_ratio']:.2f} / "
            f"x{planted['policy_tint_mae_ratio']:.2f}",
            flush=True,
        )
        proxy = ProxyConfig(
            inherit=True,
            subset=1.0,
            warmstart=dataclasses.replace(train, epochs=2),
            finetune=dataclasses.replace(train, epochs=4),
            reference="hard",
        )
        truth = exhaustive_search(data, space, ExhaustiveConfig(proxy=proxy), run_dir / "exhaustive")
        flags = [
            splits_as_planted(graph_from_key(r["key"], data.task_names, space.layers, space.skippable), space)
            for r in truth.info["ranking"]
        ]
        record(
            "exhaustive (proxy)",
            seed,
            truth.graph,
            truth.seconds,
            flags[0],
            hard_s,
            planted_ranks=[i + 1 for i, f in enumerate(flags) if f],
        )
        for name, sampler, pruner in (("branch tpe+median", "tpe", "median"), ("branch random", "random", "none")):
            config = BranchSearchConfig(proxy=proxy, n_trials=args.trials, sampler=sampler, pruner=pruner, seed=seed)
            found = branch_search(data, space, config, run_dir / sampler)
            record(name, seed, found.graph, found.seconds, splits_as_planted(found.graph, space), hard_s)
        for name, sharing in (("adashare", 0.0), ("adashare λ_sharing 0.05", 0.05)):
            ada_train = dataclasses.replace(AdaShareConfig().train, epochs=10, batch_size=64, lr=3e-3, seed=seed)
            config = AdaShareConfig(
                train=dataclasses.replace(ada_train, device="cpu"), **{**SMALL_BUDGET_ADASHARE, "sharing": sharing}
            )
            found = adashare_search(data, space, config)
            tint = data.task_names.index("tint")
            record(
                name,
                seed,
                found.graph,
                found.seconds,
                skips_as_planted(found.graph),
                hard_s,
                splits=splits_as_planted(found.graph, space),
                tint_max_select_prob=max(p[tint] for p in found.info["select_prob"]),
                select_prob=found.info["select_prob"],
            )
        affinity = AffinityConfig(
            train=dataclasses.replace(train, epochs=4),
            measures=("lookahead", "gradcos", "rsa", "cka"),
            k=2,
            plots=False,
        )
        found = affinity_search(data, space, affinity, run_dir / "affinity")
        for measure, info in found.info["measures"].items():
            graph = SharingGraph.from_dict(info["graph"])
            seconds = info["seconds"]
            record(
                f"affinity {measure}",
                seed,
                graph,
                seconds,
                splits_as_planted(graph, space),
                hard_s,
                groups=info["groups"],
                matrix=info["matrix"],
            )

    summary = []
    print(f"\nover seeds 0-{args.seeds - 1} (hit = the planted split for trees, the planted skips for AdaShare):")
    print(f"{'method':<24} {'hits':>5} {'seconds':>8} {'x hard':>7}")
    for method, runs in rows.items():
        hits = sum(r["hit"] for r in runs)
        seconds = statistics.mean(r["seconds"] for r in runs)
        cost = statistics.mean(r["hard_trainings"] for r in runs)
        summary.append({"method": method, "hits": hits, "seeds": len(runs), "seconds_mean": seconds, "x_hard": cost})
        print(f"{method:<24} {hits:>2}/{len(runs):<2} {seconds:>8.1f} {cost:>7.2f}")
    report = {
        "benchmark": "planted",
        "dataset": "markers (16 px, 1024 train, 256 val)",
        "space": SPACE,
        "trials": args.trials,
        "threads": args.threads,
        "optuna": optuna.__version__,
        "seconds": time.perf_counter() - t_start,
        "summary": summary,
        "planting": planting,
        "runs": rows,
    }
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
