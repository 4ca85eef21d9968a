"""Task-affinity grouping on shapes: does each measure recover the planted task groups, and what does it cost?

    python benchmarks/affinity.py [--seeds 0 1 2] [--n-train 1000] [--epochs 4] [--every 1]
                                  [--params-budgets 2 2.5 3] [--run-dir DIR] [--out benchmarks/results/affinity.json]

All eight shapes tasks (16 x 16 images), ``resnet_small``; planted groups = ``data.info["planted_groups"]``
(geometry: quadrant, size, mask, distance; texture: orientation, angle; colour: hue, chroma). Per seed:

1. one plain hard-sharing training run (the unit of cost);
2. lookahead (TAG) + gradient cosine, both recorded by one hard-sharing run with the affinity hook;
3. RSA + linear CKA, both from the same eight single-task networks (their training counts for each).

Per measure: groups with k = number of planted groups and with k chosen by the TAG score, each compared with
the planted partition (exact match and adjusted Rand index, 1 = identical, ~0 = chance); for RSA / CKA also the
layer-wise tree (Vandenhende et al.) at each of ``--params-budgets`` and whether its leaves (last-layer branches)
mix planted groups or equal them.
Cost ratio = the measurement's CPU time (this process, training included) / the plain run's, measured in the
same process on one thread; CPU time, unlike wall time, does not grow when other jobs share the machine (wall
ratios are in the JSON too). Lookahead / gradient cosine cost ~ 1 + (ratio at --every 1 - 1) / N at --every N.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_report
from sklearn.metrics import adjusted_rand_score

from nas_mtl.baselines import train_graph, train_single_tasks
from nas_mtl.data import create_dataset
from nas_mtl.graph import SharingGraph
from nas_mtl.search.affinity import AffinityConfig, measure_affinity
from nas_mtl.search.affinity_measures import TRAINING_MEASURES
from nas_mtl.search.grouping import Groups, group_tasks, layerwise_tree
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

MEASURES = ("lookahead", "gradcos", "rsa", "cka")


def _ari(groups: Groups, planted: Groups, tasks: tuple[str, ...]) -> float:
    def labels(gs: Groups) -> list[int]:
        return [next(n for n, g in enumerate(gs) if t in g) for t in tasks]

    return float(adjusted_rand_score(labels(planted), labels(groups)))


def _same(groups: Groups, planted: Groups) -> bool:
    return {frozenset(g) for g in groups} == {frozenset(g) for g in planted}


def _tree_summary(graph: SharingGraph, planted: Groups) -> dict:
    """Where the tree branches, its leaves (last-layer branches), and whether a leaf mixes planted groups."""
    splits, before = [], None
    for layer, name in enumerate(graph.layers):
        part = graph.partition(layer)
        if part != before:
            splits.append({"layer": name, "branches": [list(g) for g in part]})
        before = part
    leaves = graph.partition(graph.num_layers - 1)
    home = {t: n for n, g in enumerate(planted) for t in g}
    return {
        "splits": splits,
        "leaves": [list(g) for g in leaves],
        "leaves_mix_planted_groups": any(len({home[t] for t in g}) > 1 for g in leaves),
        "leaves_equal_planted": _same(leaves, planted),
    }


def _groups_text(groups: Groups) -> str:
    return " | ".join(",".join(g) for g in groups)


def _timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its CPU seconds (this process; robust to other load on the machine), wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def run_seed(seed: int, args: argparse.Namespace, run_dir: Path) -> dict:
    data = create_dataset("shapes", n_train=args.n_train, n_val=args.probe_size, n_test=64, size=16, seed=seed)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=3e-3, progress=False, device="cpu", seed=seed)
    tasks = data.task_names
    planted: Groups = tuple(tuple(g) for g in data.info["planted_groups"])
    folder = run_dir / f"seed{seed}"

    graph = space.hard_sharing(tasks).with_meta(name="plain")
    _, plain_cpu, plain_wall = _timed(train_graph, graph, data, space, config)
    # the single-task networks behind RSA and CKA, trained once and timed on their own
    _, single_cpu, single_wall = _timed(train_single_tasks, data, space, config, folder / "single")

    rows = {}
    for measure in MEASURES:
        result, cpu, wall = _timed(
            measure_affinity,
            data,
            space,
            AffinityConfig(train=config, every=args.every, probe_size=args.probe_size),
            folder,
            measure,
        )
        if measure == "gradcos":  # recorded by the lookahead run (read back from its cache here)
            cpu, wall = rows["lookahead"]["cpu_seconds"], rows["lookahead"]["wall_seconds"]
        elif measure not in TRAINING_MEASURES:  # reused the single-task networks: add their training
            cpu, wall = cpu + single_cpu, wall + single_wall
        fixed = group_tasks(result.matrix, tasks, len(planted))
        auto = group_tasks(result.matrix, tasks)
        row = {
            "matrix": result.matrix.tolist(),
            "groups_k_planted": [list(g) for g in fixed],
            "ari_k_planted": _ari(fixed, planted, tasks),
            "exact_k_planted": _same(fixed, planted),
            "groups_k_auto": [list(g) for g in auto],
            "ari_k_auto": _ari(auto, planted, tasks),
            "exact_k_auto": _same(auto, planted),
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "cost_ratio": cpu / plain_cpu,
            "wall_cost_ratio": wall / plain_wall,
            "hook_seconds": result.overhead_seconds,
            "samples": result.samples,
        }
        if result.layers is not None:
            row["trees"] = {
                f"{budget:g}": _tree_summary(layerwise_tree(1.0 - result.layers, tasks, space, budget), planted)
                for budget in args.params_budgets
            }
            row["per_layer_ari_k_planted"] = {
                name: _ari(group_tasks(layer, tasks, len(planted)), planted, tasks)
                for name, layer in zip(result.layer_names, result.layers, strict=True)
            }
        rows[measure] = row
    return {
        "seed": seed,
        "plain_cpu_seconds": plain_cpu,
        "plain_wall_seconds": plain_wall,
        "single_task_cpu_seconds": single_cpu,
        "planted": [list(g) for g in planted],
        "measures": rows,
    }


def _print(results: list[dict], args: argparse.Namespace) -> None:
    print(f"planted: {_groups_text(results[0]['planted'])}")
    head = f"{'seed':>4} {'measure':<9} {'cost':>6} {'ARI k=3':>7} {'ARI auto':>8}  groups (k = planted count)"
    print(head)
    for res in results:
        for m, row in res["measures"].items():
            mark = " (= planted)" if row["exact_k_planted"] else ""
            print(
                f"{res['seed']:>4} {m:<9} {row['cost_ratio']:>5.1f}x {row['ari_k_planted']:>7.2f} "
                f"{row['ari_k_auto']:>8.2f}  {_groups_text(row['groups_k_planted'])}{mark}"
            )
            for budget, tree in row.get("trees", {}).items():
                where = "; ".join(f"{s['layer']}: {_groups_text(s['branches'])}" for s in tree["splits"][1:])
                leaves = (
                    "= planted"
                    if tree["leaves_equal_planted"]
                    else "mix planted groups"
                    if tree["leaves_mix_planted_groups"]
                    else "within planted groups"
                )
                print(f"{'':>15}tree @ {budget} backbones: {where or 'no split'}; leaves {leaves}")
    print(
        "cost = CPU time of the measurement (training included) / one plain hard-sharing run of the same epochs; "
        "lookahead + gradcos share one run, rsa + cka the same single-task networks"
    )


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--probe-size", type=int, default=200, help="validation images (RSA / CKA probe)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--every", type=int, default=1, help="lookahead / gradcos: measure every N steps")
    p.add_argument(
        "--params-budgets", type=float, nargs="+", default=[2.0, 2.5, 3.0], help="RSA / CKA trees: backbones' worth"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default=None, help="keep measurements here (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/affinity.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or tmp)
        results = [run_seed(seed, args, run_dir) for seed in args.seeds]
    _print(results, args)
    report = {
        "benchmark": "affinity",
        "data": {"name": "shapes", "n_train": args.n_train, "n_val": args.probe_size, "size": 16, "tasks": "all"},
        "space": "resnet_small",
        "train": {"epochs": args.epochs, "batch_size": 32, "lr": 3e-3, "optimizer": "adam"},
        "every": args.every,
        "params_budgets": args.params_budgets,
        "threads": args.threads,
        "summary": {
            m: {
                "exact_k_planted": sum(r["measures"][m]["exact_k_planted"] for r in results),
                "exact_k_auto": sum(r["measures"][m]["exact_k_auto"] for r in results),
                "ari_k_planted_mean": float(np.mean([r["measures"][m]["ari_k_planted"] for r in results])),
                "cost_ratio_mean": float(np.mean([r["measures"][m]["cost_ratio"] for r in results])),
                "seeds": len(results),
                **(
                    {
                        "tree_leaves_equal_planted": {
                            f"{b:g}": sum(r["measures"][m]["trees"][f"{b:g}"]["leaves_equal_planted"] for r in results)
                            for b in args.params_budgets
                        }
                    }
                    if "trees" in results[0]["measures"][m]
                    else {}
                ),
            }
            for m in MEASURES
        },
        "seeds": results,
    }
    write_report(args.out, report)
    return results


if __name__ == "__main__":
    main()
