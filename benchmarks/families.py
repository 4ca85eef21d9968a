"""Is the families dataset's planted tree right? Hard sharing, independent networks and the planted tree,
retrained from scratch over seeds.

    python benchmarks/families.py [--seeds 5] [--epochs 30] [--out benchmarks/results/families.json]

Data: ``families`` (nas_mtl/data/families.py: six tasks in two families, each training image labelled for one
task per family), 600 training images, data seed = training seed. Space: ``search_spaces/families.toml`` (12,915
trees). Per seed, four arms train with equal weighting: hard sharing, independent networks, the planted tree (one
network per family), and the families sharing the stem (the next tree down: where sharing starts to cost). Δm
(test MAE) is taken against the independent networks' metrics averaged over seeds (each task alone: the
single-task reference). Printed and written: Δm per arm with its 95 % t interval, the paired differences of the
planted tree against each other arm, and the noise floor (the seed-to-seed std of Δm pooled over arms).
``--all-labels`` runs the same with every label kept.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _report import write_report

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import create_dataset
from nas_mtl.data.families import planted_groups, planted_tree
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.report import seed_stats
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig


def arms(tasks, space) -> dict[str, SharingGraph]:
    return {
        "hard": space.hard_sharing(tasks),
        "independent": space.independent(tasks),
        "planted": planted_tree(tasks, space),
        "families sharing the stem": SharingGraph.from_groups(
            tasks, space.layers, planted_groups(tasks), space.layers.index(space.branchable[1]), space.skippable
        ),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--all-labels", action="store_true", help="keep every training label (no planted scarcity)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/families.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    test: dict[str, list] = {}
    seconds: dict[str, list] = {}
    for seed in range(args.seeds):
        data = create_dataset(
            "families", n_train=args.n_train, size=args.size, seed=seed, few_labels=not args.all_labels
        )
        space = load_search_space("families", input_shape=data.input_shape)
        config = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, device="cpu", seed=seed, progress=False)
        for name, graph in arms(data.task_names, space).items():
            t0 = time.perf_counter()
            result = train_graph(graph, data, space, config)[1]
            seconds.setdefault(name, []).append(time.perf_counter() - t0)
            test.setdefault(name, []).append(result.test)
            print(f"seed {seed} {name:<26} {seconds[name][-1]:5.1f}s", flush=True)
    directions = primary_directions(data)
    reference = {
        t: {m: float(np.mean([r[t][m] for r in test["independent"]])) for m in directions[t]} for t in directions
    }
    dm = {k: [delta_m(r, reference, directions) for r in runs] for k, runs in test.items()}
    stats = {k: seed_stats(v).__dict__ for k, v in dm.items()}
    paired = {
        f"planted - {k}": seed_stats(np.subtract(dm["planted"], dm[k])).__dict__ for k in dm if k != "planted"
    }
    floor = float(np.sqrt(np.mean([s["std"] ** 2 for s in stats.values()])))
    for k, s in stats.items():
        print(f"{k:<26} Δm {s['mean']:+6.2f} ± {s['std']:.2f}  [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]")
    for k, s in paired.items():
        print(f"{k:<36} {s['mean']:+6.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]  = {s['mean'] / floor:.1f} x floor")
    print(f"noise floor (seed std of Δm, pooled): {floor:.2f}")
    per_task = {
        k: {t: {m: float(np.mean([r[t][m] for r in runs])) for m in directions[t]} for t in directions}
        for k, runs in test.items()
    }
    return write_report(
        args.out,
        {
            "settings": vars(args),
            "delta_m": dm,
            "delta_m_stats": stats,
            "paired": paired,
            "noise_floor": floor,
            "test_primary_means": per_task,
            "train_seconds_mean": {k: float(np.mean(v)) for k, v in seconds.items()},
        },
    )


if __name__ == "__main__":
    main()
