"""Search quality of Optuna tree search: regret against the exhaustive ground truth, and what it cost.

    python benchmarks/search_quality.py [--seeds 10] [--budget 0.25] [--run-dir runs/search_quality]
                                        [--out benchmarks/results/search_quality.json]

Space: ``search_spaces/shapes_branch4.toml`` (stem + 4 branchable blocks) on 4 shapes tasks (quadrant and size
share the planted geometry factors; orientation; hue) = 315 trees. Every candidate is scored by the same
warm-start proxy (:mod:`nas_mtl.search.proxy`), which is deterministic per tree, so:

1. exhaustive: every tree is scored once = ground truth;
2. real search: one Optuna run of the default method (TPE + median pruning, seed 0) with the real proxy and
   a budget of ``budget`` x trees, timed; its trial values are checked against the table;
3. replays: each method over ``seeds`` seeds with the stored table as its scorer (a tabular benchmark in
   the manner of NAS-Bench-101, Ying et al. 2019: same scores, same pruning decisions, no training).

Everything is cached in RUN_DIR (warm start, scores.jsonl, one Optuna journal per run): a rerun resumes.

Regret = best Δm in the space - true Δm of the tree the search returns. Cost ratio = fine-tuning epochs the
search spent (duplicates free, pruned trials count the epochs they ran) / epochs of the exhaustive run; for
the real run also the time ratio (summed trial durations / the exhaustive run's summed proxy time).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import optuna
import torch
from _report import write_report

from nas_mtl.data import create_dataset
from nas_mtl.graph import SharingGraph
from nas_mtl.search.branching import BranchSearchConfig, branch_search, open_storage
from nas_mtl.search.exhaustive import TABLE, ExhaustiveConfig, ScoreTable, exhaustive_search, score_header
from nas_mtl.search.proxy import ProxyConfig, graph_key
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

TASKS = "quadrant,size,orientation,hue"
METHODS = {  # name -> (sampler, pruner)
    "tpe+median": ("tpe", "median"),
    "tpe": ("tpe", "none"),
    "random": ("random", "none"),
}


def _proxy(args: argparse.Namespace) -> ProxyConfig:
    base = TrainConfig(batch_size=64, lr=3e-3, device="cpu", progress=False)
    return ProxyConfig(
        warmstart=dataclasses.replace(base, epochs=args.warmstart_epochs),
        finetune=dataclasses.replace(base, epochs=args.proxy_epochs),
        reference="hard",
        subset=args.subset,
    )


def _spent(study: optuna.Study, epochs: int) -> tuple[int, int]:
    """(distinct trees trained, fine-tuning epochs spent) over a finished study."""
    trees, spent = set(), 0
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs or "key" not in t.user_attrs:
            continue
        if t.state.name == "COMPLETE":
            trees.add(t.user_attrs["key"])
            spent += epochs
        elif t.state.name == "PRUNED":
            trees.add(t.user_attrs["key"])
            spent += max(t.intermediate_values, default=0)
    return len(trees), spent


def _run(data, space, config, run_dir, storage, scorer=None):
    """One search (resumed from its journal if there is one); returns (result, study)."""
    config = dataclasses.replace(config, storage=storage)
    result = branch_search(data, space, config, run_dir, scorer=scorer)
    return result, optuna.load_study(study_name=config.study_name, storage=open_storage(storage))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="replay seeds per method")
    p.add_argument("--budget", type=float, default=0.25, help="trials as a fraction of the trees in the space")
    p.add_argument("--n-train", type=int, default=384)
    p.add_argument("--n-val", type=int, default=192)
    p.add_argument("--subset", type=float, default=0.5, help="fraction of the training set for fine-tuning")
    p.add_argument("--warmstart-epochs", type=int, default=8)
    p.add_argument("--proxy-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    p.add_argument("--run-dir", default="runs/search_quality", help="cache: warm start, exhaustive scores, studies")
    p.add_argument("--out", default="benchmarks/results/search_quality.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_dir = Path(args.run_dir)

    data = create_dataset("shapes", n_train=args.n_train, n_val=args.n_val, n_test=64, size=16, tasks=TASKS)
    space = load_search_space("shapes_branch4", input_shape=data.input_shape)
    proxy = _proxy(args)

    t0 = time.perf_counter()
    truth = exhaustive_search(data, space, ExhaustiveConfig(proxy=proxy), run_dir)
    exhaustive_s = time.perf_counter() - t0
    table = ScoreTable(run_dir / TABLE, score_header(data.task_names, space, proxy, "trees"))
    n_trees = truth.info["n_candidates"]
    best = truth.info["ranking"][0]["delta_m"]
    rank = {r["key"]: i + 1 for i, r in enumerate(truth.info["ranking"])}
    planted = SharingGraph.from_groups(data.task_names, space.layers, data.info["planted_groups"], branch_at=1)
    n_trials = max(1, round(args.budget * n_trees))
    total_epochs = n_trees * args.proxy_epochs
    print(
        f"{n_trees} trees; exhaustive best Δm {best:+.2f}% ({truth.info['ranking'][0]['key']}); planted grouping "
        f"ranks {rank[graph_key(planted)]}; proxy time {truth.info['proxy_seconds']:.0f}s"
    )

    rows = []
    for method, (sampler, pruner) in METHODS.items():
        config = BranchSearchConfig(proxy=proxy, n_trials=n_trials, sampler=sampler, pruner=pruner, study_name=method)
        row = {"method": method, "trials": n_trials, "real_run": None}
        if not rows:  # the default method also runs once for real
            real, study = _run(data, space, config, run_dir, f"journal:{run_dir / f'real-{method}.journal'}")
            trees, spent = _spent(study, args.proxy_epochs)
            row["real_run"] = {
                "regret": best - table.scores[graph_key(real.graph)].delta_m,
                "found_rank": rank[graph_key(real.graph)],
                "trees_trained": trees,
                "epoch_cost_ratio": spent / total_epochs,
                "trial_seconds": real.info["trial_seconds"],
                "time_ratio": real.info["trial_seconds"] / truth.info["proxy_seconds"],
                "max_abs_diff_vs_table": max(
                    abs(t.value - table.scores[t.user_attrs["key"]].delta_m)
                    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                ),
            }
        replays = []
        for seed in range(args.seeds):
            storage = f"journal:{run_dir / 'replays' / f'{method}-{seed}.journal'}"
            found, replay = _run(data, space, dataclasses.replace(config, seed=seed), run_dir, storage, table)
            regret = best - table.scores[graph_key(found.graph)].delta_m
            replays.append((regret, *_spent(replay, args.proxy_epochs), rank[graph_key(found.graph)]))
        regrets = [r[0] for r in replays]
        rows.append(
            {
                **row,
                "replays": {
                    "seeds": args.seeds,
                    "regret_mean": statistics.mean(regrets),
                    "regret_median": statistics.median(regrets),
                    "regret_max": max(regrets),
                    "hit_rate": sum(r == 0 for r in regrets) / len(regrets),
                    "found_rank_median": statistics.median(r[3] for r in replays),
                    "trees_trained_mean": statistics.mean(r[1] for r in replays),
                    "epoch_cost_ratio_mean": statistics.mean(r[2] for r in replays) / total_epochs,
                },
            }
        )

    print(f"replays over {args.seeds} seeds ({n_trials} trials each; cost = fine-tuning epochs / exhaustive's):")
    print(
        f"{'method':<11} {'trees':>6} {'cost':>6} {'regret mean':>11} {'median':>7} {'max':>6} {'hit':>5} {'rank':>5}"
    )
    for r in rows:
        rp = r["replays"]
        print(
            f"{r['method']:<11} {rp['trees_trained_mean']:>6.1f} {rp['epoch_cost_ratio_mean']:>6.2f} "
            f"{rp['regret_mean']:>11.2f} {rp['regret_median']:>7.2f} {rp['regret_max']:>6.2f} {rp['hit_rate']:>5.2f} "
            f"{rp['found_rank_median']:>5.0f}"
        )
    rr = rows[0]["real_run"]
    print(
        f"real run ({rows[0]['method']}, seed 0): regret {rr['regret']:.2f} (rank {rr['found_rank']}), "
        f"{rr['trees_trained']} trees, epoch cost {rr['epoch_cost_ratio']:.2f}, trials {rr['trial_seconds']:.0f}s = "
        f"{rr['time_ratio']:.2f} x exhaustive's proxy time; |value - table| <= {rr['max_abs_diff_vs_table']:.1e}"
    )
    report = {
        "benchmark": "search_quality",
        "space": "shapes_branch4",
        "tasks": TASKS.split(","),
        "n_trees": n_trees,
        "budget_fraction": args.budget,
        "exhaustive": {
            "best_delta_m": best,
            "best_key": truth.info["ranking"][0]["key"],
            "worst_delta_m": truth.info["ranking"][-1]["delta_m"],
            "proxy_seconds": truth.info["proxy_seconds"],
            "wall_s_this_run": exhaustive_s,
            "planted_grouping_rank": rank[graph_key(planted)],
        },
        "proxy": proxy.to_dict(),
        "data": {"n_train": args.n_train, "n_val": args.n_val, "size": 16},
        "threads": args.threads,
        "optuna": optuna.__version__,
        "rows": rows,
    }
    report = write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
