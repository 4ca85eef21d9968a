"""Every search method against chance and against a seeded ground truth, on the same space, data and proxy.

    python benchmarks/search_quality.py [--search-seeds 10] [--method-seeds 5] [--budgets 0.1,0.25]
                                        [--truth-dir runs/noise_ceiling] [--run-dir runs/search_quality]
                                        [--retrain-study studies/shapes.toml] [--retrain-dir runs/proxy_fidelity]
                                        [--out benchmarks/results/search_quality.json]

Space, data and proxy are those of ``benchmarks/noise_ceiling.py`` (``shapes_branch4``: 315 trees for the tasks
quadrant, size, orientation, hue; shapes at 16 px, 2000 training / 500 validation images; warm start 10 epochs,
fine-tuning 3 epochs on half the training set). The ground truth is that benchmark's table: every tree scored
under proxy seeds 0-2 (seed i: its own warm start and fine-tuning seed), the truth is the seed mean
(:class:`~nas_mtl.search.quality.SeededTruth`); the table is read from TRUTH-DIR and computed there if missing
(~30 min on 2 cores).

Methods, each over several search seeds:

* branch search (Optuna): TPE + median pruning (the default), TPE, NSGA-II (Δm and params, the Pareto member
  with the best Δm is the answer), TPE on the same two objectives, and random sampling, ``budgets`` x 315
  trials each (32 and 79 by default), over ``search-seeds`` seeds. Search seed s scores with proxy seed s mod 3,
  replayed from the table (a tabular benchmark in the manner of NAS-Bench-101, Ying et al. 2019: the stored
  scores and per-epoch curves of that seed, so the same pruning decisions as a real run, no training): a search
  sees one seed's noisy proxy, as it would for real, and is judged by the seed mean.
* AdaShare over its select/skip policy space (3 skippable blocks x 4 tasks), ``method-seeds`` search seeds, at
  the small-budget settings of ``nas_mtl.data.markers.SMALL_BUDGET_ADASHARE`` (λ_sparsity 0.05, and also 0.01
  and 0) and with the paper's policy settings (λ_sharing 0.05, curriculum, policy lr 0.01, τ decay 0.965) at the
  same budget (warm-up 2 epochs, 10 rounds of 8 weight and 8 policy steps). Two answers per run, as in the
  paper: the argmax policy and the best of 8 sampled policies (lowest supernet validation loss).
* affinity grouping, each measure (TAG lookahead, gradient cosine, RSA, CKA), ``method-seeds`` seeds, the number
  of groups chosen by the method (k = auto), 4 training epochs.

Answers outside the table (AdaShare's policies) are scored with the same seeded proxy (the same warm starts) and
judged against the best tree. Per method: regret = the truth's best seed mean - the answer's seed mean (Δm
points) with a 95 % Student-t interval over search seeds and the truth's own paired standard error (over
proxy seeds); hit rate (the truth's best exactly / within one paired standard error of it); the answer's rank
among the 315 trees; cost in training runs (one run = the warm start: hard sharing, 10 epochs on the 2000
images, timed on this machine; replays: the warm start plus the recorded fine-tuning time of every tree the
search trained, pruned ones for the epochs they ran). Floors: a tree drawn uniformly at random, and a tree drawn
at random among those with the parameter count of each method's answer (exact expectations over the table).

AdaShare against chance: every answer against 8 random policies with the same number of skips (seeded by
the number), all scored twice: by the proxy (seeds 0-2), and retrained from scratch with RETRAIN-STUDY's
[train] settings (seeds 0-2; test Δm against single-task networks of the same settings and seed, exactly as
``benchmarks/proxy_fidelity.py``, whose cache RETRAIN-DIR is). The proxy inherits every block from a warm start
trained with every block selected, so it may judge skipping harshly; the retrain does not. Per answer: its rank
among the random policies and its difference to their median, paired over seeds (mean with a 95 % t interval over
the 3 seeds); per setting: that difference averaged over search seeds, with a hierarchical bootstrap interval
(search seeds, scoring seeds and the pool's policies resampled). Search seeds with the same number of skips share
one pool, and two search seeds may return the same answer (``distinct``): the interval is then wider than the
search seeds alone would make it.

Every regret is also given held out: a branch search that searched with proxy seed s is judged by the mean of
the other two seeds (judged by all three, it is partly judged on the scores it optimised); methods that never
see the proxy are judged by each of the three 2-seed truths, averaged, so that every method meets equally many
seeds.

Everything is cached in RUN-DIR (replay journals, AdaShare and affinity results, proxy scores of policies) and
RETRAIN-DIR (retrains): a rerun resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import random
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from _report import write_report

from nas_mtl.baselines import primary_directions
from nas_mtl.data import create_dataset
from nas_mtl.data.markers import SMALL_BUDGET_ADASHARE
from nas_mtl.graph import SKIP, SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.report import seed_stats
from nas_mtl.search.adashare import AdaShareConfig, adashare_search
from nas_mtl.search.affinity import AffinityConfig, affinity_search
from nas_mtl.search.branching import BranchSearchConfig, branch_search, open_storage
from nas_mtl.search.exhaustive import TABLE, ExhaustiveConfig, ScoreTable, exhaustive_search, score_header, seed_dir
from nas_mtl.search.proxy import Proxy, ProxyConfig, graph_from_key, graph_key
from nas_mtl.search.quality import SeededTruth, Verdict, minus_random_median
from nas_mtl.space import load_search_space
from nas_mtl.study import load_study, slug
from nas_mtl.train import TrainConfig

TASKS = "quadrant,size,orientation,hue"
SEEDS = 3  # proxy seeds of the truth
BRANCH = {  # name -> sampler, pruner, objectives
    "tpe+median": ("tpe", "median", ("delta_m",)),
    "tpe": ("tpe", "none", ("delta_m",)),
    "nsga2 (Δm, params)": ("nsga2", "none", ("delta_m", "params")),
    "tpe (Δm, params)": ("tpe", "none", ("delta_m", "params")),
    "random": ("random", "none", ("delta_m",)),
}
ADASHARE = {  # name -> (cache tag, AdaShare settings besides train: 10 rounds, batch 64, lr 3e-3)
    "adashare small-budget": ("small-budget", {**SMALL_BUDGET_ADASHARE, "final": "sample"}),
    "adashare small-budget λ_sparsity 0.01": (
        "sparsity0.01",
        {**SMALL_BUDGET_ADASHARE, "sparsity": 0.01, "final": "sample"},
    ),
    "adashare small-budget λ_sparsity 0": ("sparsity0", {**SMALL_BUDGET_ADASHARE, "sparsity": 0.0, "final": "sample"}),
    "adashare paper settings": ("paper", {"warmup_epochs": 2, "weight_steps": 8, "policy_steps": 8, "final": "sample"}),
}
MEASURES = ("lookahead", "gradcos", "rsa", "cka")


def _proxy() -> ProxyConfig:
    base = TrainConfig(batch_size=64, lr=3e-3, device="cpu", progress=False)
    return ProxyConfig(
        inherit=True,
        warmstart=dataclasses.replace(base, epochs=10),
        finetune=dataclasses.replace(base, epochs=3),
        reference="hard",
        subset=0.5,
    )


class Judge:
    """The seeded truth, plus the same seeded proxy for answers outside the table (scores cached in RUN-DIR)."""

    def __init__(self, data, space, proxy: ProxyConfig, truth_dir: Path, run_dir: Path) -> None:
        self.data, self.space, self.proxy, self.truth_dir = data, space, proxy, truth_dir
        table = ScoreTable(truth_dir / TABLE, score_header(data, space, proxy, "trees"))
        ranking = table.ranking(range(SEEDS))
        self.tables = [ScoreTable(truth_dir / TABLE, table.header, seed=s) for s in range(SEEDS)]
        self.truth = SeededTruth(
            {r.key: [s.delta_m for s in r.scores] for r in ranking}, {r.key: r.scores[0].params for r in ranking}
        )
        self.extra = ScoreTable(run_dir / "policies.jsonl", score_header(data, space, proxy, "policies"))
        self._proxies: list[Proxy] | None = None

    @property
    def proxies(self) -> list[Proxy]:
        if self._proxies is None:  # the truth's own warm starts (cached in TRUTH-DIR)
            self._proxies = [
                Proxy.prepare(self.data, self.space, self.proxy.seeded(s), seed_dir(self.truth_dir, s))
                for s in range(SEEDS)
            ]
        return self._proxies

    @property
    def run_seconds(self) -> float:
        """One training run: the warm start (hard sharing, 10 epochs), mean over the truth's seeds."""
        return statistics.mean(p.setup_seconds for p in self.proxies)

    def scores(self, graph: SharingGraph) -> tuple[list[float], int]:
        """Δm under each proxy seed and the parameter count of ``graph`` (from the table, or scored now)."""
        key = graph_key(graph)
        if key in self.truth.index:
            i = self.truth.index[key]
            return list(self.truth.table[i]), int(self.truth.params[i])
        out = []
        for s in range(SEEDS):
            if key not in self.extra.seed_scores(s):
                self.extra.add(key, self.proxies[s].score(graph), s)
            out.append(self.extra.seed_scores(s)[key])
        return [x.delta_m for x in out], out[0].params

    def judge(self, graph: SharingGraph) -> Verdict:
        key = graph_key(graph)
        if key in self.truth.index:
            return self.truth.judge(key)
        scores, params = self.scores(graph)
        return self.truth.judge(key, scores, params)

    @functools.cached_property
    def heldout(self) -> list[SeededTruth]:
        """Truth number s: the mean of every proxy seed but s (what a search that saw seed s never saw)."""
        keys, table = self.truth.keys, self.truth.table
        params = {k: int(p) for k, p in zip(keys, self.truth.params)}
        return [SeededTruth({k: list(np.delete(row, s)) for k, row in zip(keys, table)}, params) for s in range(SEEDS)]

    def judge_heldout(self, graph: SharingGraph, seen: int | None) -> dict[str, float]:
        """Regret, its SE and hit within one SE against the seeds a search never saw: all but ``seen`` (the proxy
        seed it searched with); for a method that never sees the proxy (``seen`` None), averaged over the three
        truths of 2 seeds, so that every method is judged by equally many seeds."""
        key = graph_key(graph)
        scores, params = self.scores(graph)
        verdicts = [
            truth.judge(key, list(np.delete(scores, s)), params)
            for s, truth in enumerate(self.heldout)
            if seen is None or s == seen
        ]
        return {
            "heldout_regret": statistics.mean(v.regret for v in verdicts),
            "heldout_regret_se": statistics.mean(v.regret_se for v in verdicts),
            "heldout_hit_within_se": statistics.mean(v.hit_within_se for v in verdicts),
        }


def _replay_cost(study: optuna.Study, table: ScoreTable, epochs: int) -> tuple[int, float]:
    """(distinct trees trained, fine-tuning seconds they took by the table) over a replayed study."""
    trained: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs or "key" not in t.user_attrs:
            continue
        seconds = table.scores[t.user_attrs["key"]].seconds
        if t.state.name == "COMPLETE":
            trained[t.user_attrs["key"]] = seconds
        elif t.state.name == "PRUNED":
            trained.setdefault(t.user_attrs["key"], seconds * max(t.intermediate_values, default=0) / epochs)
    return len(trained), sum(trained.values())


def _branch(judge: Judge, args, run_dir: Path) -> dict[str, list[dict]]:
    proxy = judge.proxy
    runs: dict[str, list[dict]] = {}
    for (name, (sampler, pruner, objectives)), budget in itertools.product(BRANCH.items(), args.budgets):
        n_trials = max(1, round(budget * len(judge.truth.keys)))
        for seed in range(args.search_seeds):
            table = judge.tables[seed % SEEDS]
            tag = sampler + (f"+{pruner}" if pruner != "none" else "") + ("-mo" if len(objectives) > 1 else "")
            tag += f"-{n_trials}"
            config = BranchSearchConfig(
                proxy=proxy.seeded(seed % SEEDS),
                n_trials=n_trials,
                sampler=sampler,
                pruner=pruner,
                objectives=objectives,
                seed=seed,
                study_name=tag,
                storage=f"journal:{run_dir / 'replays' / f'{tag}-{seed}.journal'}",
            )
            t0 = time.perf_counter()
            found = branch_search(judge.data, judge.space, config, run_dir / "replays", scorer=table)
            study = optuna.load_study(study_name=tag, storage=open_storage(config.storage))
            trees, seconds = _replay_cost(study, table, proxy.finetune.epochs)
            runs.setdefault(f"{name}, {n_trials} trials", []).append(
                {
                    "seed": seed,
                    "proxy_seed": seed % SEEDS,
                    **dataclasses.asdict(judge.judge(found.graph)),
                    **judge.judge_heldout(found.graph, seed % SEEDS),
                    "_graph": found.graph.to_dict(),
                    "trees_trained": trees,
                    "cost_runs": 1 + seconds / judge.run_seconds,
                    "sampler_seconds": time.perf_counter() - t0,
                }
            )
    return runs


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def _adashare(judge: Judge, args, run_dir: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for name, (tag, settings) in ADASHARE.items():
        for seed in range(args.method_seeds):
            train = dataclasses.replace(
                AdaShareConfig().train, epochs=10, batch_size=64, lr=3e-3, seed=seed, device="cpu", progress=False
            )
            config = AdaShareConfig(train=train, **settings)

            def compute(config=config):
                found = adashare_search(judge.data, judge.space, config)
                return {
                    "best_of_8": found.graph.to_dict(),
                    "argmax": found.info["argmax_graph"],
                    "select_prob": found.info["select_prob"],
                    "seconds": found.seconds,
                }

            found = _cached(run_dir / "adashare" / f"{tag}-{seed}.json", compute)
            for answer in ("argmax", "best_of_8"):
                graph = SharingGraph.from_dict(found[answer])
                runs.setdefault(f"{name} ({answer.replace('_', '-')})", []).append(
                    {
                        "seed": seed,
                        **dataclasses.asdict(judge.judge(graph)),
                        **judge.judge_heldout(graph, None),
                        "skips": _skips(graph),
                        "graph": graph.describe(),
                        "cost_runs": found["seconds"] / judge.run_seconds,
                        "select_prob": found["select_prob"],
                        "_graph": found[answer],
                    }
                )
    return runs


def _skips(graph: SharingGraph) -> int:
    return sum(copy == SKIP for row in graph.assignment for copy in row)


def _random_policies(judge: Judge, skips: int, n: int) -> list[SharingGraph]:
    """``n`` + 1 distinct random select/skip policies with exactly ``skips`` skips (seeded by ``skips``)."""
    tasks, layers, skippable = judge.data.task_names, judge.space.layers, judge.space.skippable
    cells = [(layer, t) for layer in range(len(layers)) if layers[layer] in skippable for t in range(len(tasks))]
    rng, seen, out = random.Random(skips), set(), []
    while len(out) < n + 1 and len(seen) < math.comb(len(cells), skips):
        chosen = frozenset(rng.sample(cells, skips))
        if chosen in seen:
            continue
        seen.add(chosen)
        select = [[(layer, t) not in chosen for t in range(len(tasks))] for layer in range(len(layers))]
        out.append(SharingGraph.from_policy(tasks, layers, select, skippable))
    return out


class Retrain:
    """Retrain graphs from scratch (``benchmarks/proxy_fidelity.py``'s runs and cache): test Δm against single-task
    networks of the same settings and seed, one value per seed."""

    def __init__(self, study: str, seeds: int, run_dir: Path) -> None:
        import proxy_fidelity as pf

        self.pf, self.seeds, self.run_dir = pf, seeds, run_dir
        self.data = create_dataset("shapes", tasks=TASKS, **pf.DATA)
        self.space = load_search_space(pf.SPACE, input_shape=self.data.input_shape)
        train = dataclasses.replace(load_study(study).train, device="cpu", progress=False)
        self.train = train
        pf.record_cache(run_dir, TASKS.split(","), train)
        self.directions = primary_directions(self.data)
        self.refs = []
        for seed in range(seeds):
            config = dataclasses.replace(train, seed=seed)
            single = {}
            for t in self.data.task_names:
                graph = SharingGraph.hard_sharing([t], self.space.layers, self.space.skippable)
                single[t] = pf._run(graph, self.data, self.space, config, run_dir / f"seed{seed}" / "single" / t)
            self.refs.append({t: single[t]["test"][t] for t in self.data.task_names})
        self.seconds = 0.0

    def scores(self, graph: SharingGraph) -> list[float]:
        out = []
        for seed in range(self.seeds):
            folder = self.run_dir / f"seed{seed}" / slug(graph_key(graph))
            fresh = not (folder / "row.json").is_file()
            row = self.pf._run(graph, self.data, self.space, dataclasses.replace(self.train, seed=seed), folder)
            self.seconds += row["train_seconds"] if fresh else 0.0
            out.append(delta_m(row["test"], self.refs[seed], self.directions))
        return out


def _against_random(score, runs: dict[str, list[dict]], n_random: int, judge: Judge) -> dict[str, list[dict]]:
    """Each AdaShare answer against ``n_random`` random policies with its number of skips, all scored by
    ``score(graph)`` (one Δm per seed, the same seeds for every graph)."""
    out: dict[str, list[dict]] = {}
    for name, answers in runs.items():
        for a in answers:
            pool = [g for g in _random_policies(judge, a["skips"], n_random) if graph_key(g) != a["key"]][:n_random]
            answer_scores = score(SharingGraph.from_dict(a["_graph"]))
            if not pool:  # no other policy has this many skips (0: hard sharing itself)
                out.setdefault(name, []).append({"seed": a["seed"], "skips": a["skips"], "random": 0})
                continue
            table = np.asarray([score(g) for g in pool])  # policies x seeds
            median = np.median(table, axis=0)  # per proxy seed
            diff = seed_stats(np.asarray(answer_scores) - median)
            means = table.mean(axis=1)
            out.setdefault(name, []).append(
                {
                    "seed": a["seed"],
                    "skips": a["skips"],
                    "random": len(pool),
                    "answer_scores": [float(x) for x in answer_scores],
                    "random_scores": table.tolist(),
                    "answer_delta_m": float(np.mean(answer_scores)),
                    "random_median": float(np.median(means)),
                    "random_min": float(means.min()),
                    "random_max": float(means.max()),
                    "rank": 1 + int((means > np.mean(answer_scores)).sum()),
                    "minus_random_median": diff.mean,
                    "minus_random_median_ci": [diff.ci_low, diff.ci_high],
                }
            )
    return out


def _against_summary(table: dict[str, list[dict]]) -> list[dict]:
    """Per AdaShare setting and answer: the difference to the random median averaged over scoring seeds, then its
    mean over search seeds with a hierarchical bootstrap interval (``minus_random_median``; answers with no other
    policy of their skip count left out)."""
    out = []
    for name, items in table.items():
        compared = [a for a in items if a["random"]]
        diff = seed_stats([a["minus_random_median"] for a in compared])
        out.append(
            {
                "answer": name,
                "search_seeds": len(items),
                "compared": len(compared),
                "distinct_answers": len({(a["skips"], tuple(a["answer_scores"])) for a in compared}),
                "minus_random_median": diff.mean,
                "minus_random_median_ci": list(
                    minus_random_median([a["answer_scores"] for a in compared], [a["random_scores"] for a in compared])[
                        1
                    ]
                )
                if compared
                else [math.nan, math.nan],
                "above_median": sum(a["minus_random_median"] > 0 for a in compared),
                "rank_median": statistics.median(a["rank"] for a in compared) if compared else None,
                "skips": [a["skips"] for a in items],
            }
        )
    return out


def _retrain_rows(retrain: Retrain, runs: dict[str, list[dict]], reference: dict[str, SharingGraph]) -> list[dict]:
    """Every method's answers retrained from scratch: test Δm minus each reference graph's, paired over retrain
    seeds and averaged over them, then mean and 95 % t interval over search seeds."""
    refs = {name: np.asarray(retrain.scores(g)) for name, g in reference.items()}
    rows = []
    for name, items in runs.items():
        scores = [np.asarray(retrain.scores(SharingGraph.from_dict(r["_graph"]))) for r in items]
        row = {"method": name, "seeds": len(items), "retrain_delta_m": float(np.mean(scores))}
        for ref, values in refs.items():
            diff = seed_stats([float((s - values).mean()) for s in scores])
            row[f"minus_{ref}"] = diff.mean
            row[f"minus_{ref}_ci"] = [diff.ci_low, diff.ci_high]
        rows.append(row)
    return rows


def _print_against(title: str, table: dict[str, list[dict]], n_random: int) -> None:
    print(f"\nAdaShare against {n_random} random policies with the same number of skips, {title}:")
    print(f"{'answer':<52}{'seed':>5}{'skips':>6}{'Δm':>8}{'random median':>14}{'rank':>9}", end="")
    print(f"{'minus median [95% CI]':>26}")
    for name, items in table.items():
        for a in items:
            if not a["random"]:
                print(f"{name:<52}{a['seed']:>5}{a['skips']:>6}  (no other policy with {a['skips']} skips)")
                continue
            lo, hi = a["minus_random_median_ci"]
            print(
                f"{name:<52}{a['seed']:>5}{a['skips']:>6}{a['answer_delta_m']:>8.2f}{a['random_median']:>14.2f}"
                f"{a['rank']:>5}/{a['random'] + 1:<3}{a['minus_random_median']:>10.2f} [{lo:.2f}, {hi:.2f}]"
            )


def _affinity(judge: Judge, args, run_dir: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for seed in range(args.method_seeds):
        base = TrainConfig(epochs=4, batch_size=64, lr=3e-3, device="cpu", seed=seed, progress=False)
        config = AffinityConfig(train=base, measures=MEASURES, plots=False)

        def compute(config=config, seed=seed):
            found = affinity_search(judge.data, judge.space, config, run_dir / "affinity" / f"seed{seed}")
            return {m: {"graph": i["graph"], "seconds": i["seconds"]} for m, i in found.info["measures"].items()}

        found = _cached(run_dir / "affinity" / f"seed{seed}.json", compute)
        for measure, info in found.items():
            graph = SharingGraph.from_dict(info["graph"])
            runs.setdefault(f"affinity {measure}", []).append(
                {
                    "seed": seed,
                    **dataclasses.asdict(judge.judge(graph)),
                    **judge.judge_heldout(graph, None),
                    "graph": graph.describe(),
                    "cost_runs": info["seconds"] / judge.run_seconds,
                    "_graph": info["graph"],
                }
            )
    return runs


def _summary(judge: Judge, name: str, runs: list[dict]) -> dict:
    regret = seed_stats([r["regret"] for r in runs])
    heldout = seed_stats([r["heldout_regret"] for r in runs])
    floor = [judge.truth.random_regret(r["params"])[0] for r in runs]
    return {
        "method": name,
        "seeds": len(runs),
        "regret_mean": regret.mean,
        "regret_ci": [regret.ci_low, regret.ci_high],
        "regret_truth_se": statistics.mean(r["regret_se"] for r in runs),
        "heldout_regret_mean": heldout.mean,
        "heldout_regret_ci": [heldout.ci_low, heldout.ci_high],
        "heldout_regret_se": statistics.mean(r["heldout_regret_se"] for r in runs),
        "heldout_hit_rate_within_se": statistics.mean(r["heldout_hit_within_se"] for r in runs),
        "hit_rate": statistics.mean(r["hit"] for r in runs),
        "hit_rate_within_se": statistics.mean(r["hit_within_se"] for r in runs),
        "rank_median": statistics.median(r["rank"] for r in runs),
        "distinct_answers": len({r["key"] for r in runs}),
        "cost_runs_mean": statistics.mean(r["cost_runs"] for r in runs),
        "same_params_random_regret": statistics.mean(floor),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--search-seeds", type=int, default=10, help="seeds of each branch search (replayed)")
    p.add_argument("--method-seeds", type=int, default=5, help="seeds of AdaShare and affinity (trained)")
    p.add_argument(
        "--budgets",
        default="0.1,0.25",
        type=lambda v: [float(x) for x in v.split(",")],
        help="branch trials as fractions of the trees (comma-separated)",
    )
    p.add_argument("--random-policies", type=int, default=8, help="random policies per AdaShare skip count")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)")
    p.add_argument("--truth-dir", default="runs/noise_ceiling", help="the seeded table of benchmarks/noise_ceiling.py")
    p.add_argument("--run-dir", default="runs/search_quality", help="cache: replays, AdaShare, affinity, policies")
    p.add_argument("--retrain-study", default="studies/shapes.toml", help="[train] of the AdaShare retrains")
    p.add_argument("--retrain-dir", default="runs/proxy_fidelity", help="cache of retrains (proxy_fidelity.py's)")
    p.add_argument(
        "--retrain-results", default="benchmarks/results/proxy_fidelity.json", help="proxy_fidelity.py's trees"
    )
    p.add_argument("--out", default="benchmarks/results/search_quality.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.perf_counter()
    truth_dir, run_dir = Path(args.truth_dir), Path(args.run_dir)

    data = create_dataset("shapes", n_train=2000, n_val=500, n_test=64, size=16, tasks=TASKS)
    space = load_search_space("shapes_branch4", input_shape=data.input_shape)
    proxy = _proxy()
    exhaustive_search(data, space, ExhaustiveConfig(proxy=proxy, seeds=SEEDS), truth_dir)  # resumes / reads back
    judge = Judge(data, space, proxy, truth_dir, run_dir)
    truth = judge.truth
    planted = SharingGraph.from_groups(data.task_names, space.layers, data.info["planted_groups"], branch_at=1)
    print(
        f"truth: {len(truth.keys)} trees x {SEEDS} proxy seeds; best {truth.best_key} Δm "
        f"{truth.mean[truth.best]:+.2f}%; planted grouping ranks {truth.judge(graph_key(planted)).rank}; one "
        f"training run = {judge.run_seconds:.1f}s",
        flush=True,
    )

    runs = _branch(judge, args, run_dir)
    print("branch replays done", flush=True)
    adashare = _adashare(judge, args, run_dir)
    print("adashare done", flush=True)
    runs.update(_affinity(judge, args, run_dir))
    runs.update(adashare)
    against = _against_random(lambda g: judge.scores(g)[0], adashare, args.random_policies, judge)
    print("AdaShare vs random policies by the proxy done", flush=True)
    retrain = Retrain(args.retrain_study, SEEDS, Path(args.retrain_dir))
    against_retrain = _against_random(retrain.scores, adashare, args.random_policies, judge)
    hard = seed_stats(retrain.scores(space.hard_sharing(data.task_names)))
    against_summary = {"proxy": _against_summary(against), "retrain": _against_summary(against_retrain)}
    fidelity = json.loads(Path(args.retrain_results).read_text())["trees"]
    retrain_best = max(fidelity, key=lambda t: t["retrain_delta_m"])["key"]
    reference = {
        "hard": space.hard_sharing(data.task_names),
        "retrain_best": graph_from_key(retrain_best, data.task_names, space.layers),
    }
    retrained = _retrain_rows(retrain, runs, reference)
    rows = [_summary(judge, name, r) for name, r in runs.items()]
    uniform = truth.random_regret()
    rows.append(
        {
            "method": "random tree (uniform, exact)",
            "seeds": None,
            "regret_mean": uniform[0],
            "regret_ci": None,
            "hit_rate": uniform[1],
            "rank_median": (len(truth.keys) + 1) / 2,
            "cost_runs_mean": 0.0,
            "heldout_regret_mean": statistics.mean(t.random_regret()[0] for t in judge.heldout),
        }
    )

    print(f"\nregret vs the seeded truth (Δm points; 95% interval over search seeds; truth SE: paired over {SEEDS}")
    print("proxy seeds); hit = the truth's best / within one truth SE; cost in training runs; floor = a random tree")
    print("with the answer's parameter count; held-out: against the 2 proxy seeds a search did not search with (for")
    print("methods that never see the proxy: mean over the three 2-seed truths), its SE and ~hit:")
    head = f"{'method':<52}{'n':>3}{'regret':>8}{'95% CI':>17}{'SE':>6}{'hit':>6}{'~hit':>6}{'rank':>6}{'cost':>7}"
    print(head + f"{'floor':>7}{'held-out':>9}{'95% CI':>17}{'SE':>6}{'~hit':>6}")
    for r in rows:
        ci = f"[{r['regret_ci'][0]:.2f}, {r['regret_ci'][1]:.2f}]" if r["regret_ci"] else ""
        se = f"{r['regret_truth_se']:.2f}" if "regret_truth_se" in r else ""
        within = f"{r['hit_rate_within_se']:.2f}" if "hit_rate_within_se" in r else ""
        floor = f"{r['same_params_random_regret']:.2f}" if "same_params_random_regret" in r else ""
        h_ci = f"[{r['heldout_regret_ci'][0]:.2f}, {r['heldout_regret_ci'][1]:.2f}]" if "heldout_regret_ci" in r else ""
        h_se = f"{r['heldout_regret_se']:.2f}" if "heldout_regret_se" in r else ""
        h_hit = f"{r['heldout_hit_rate_within_se']:.2f}" if "heldout_hit_rate_within_se" in r else ""
        print(
            f"{r['method']:<52}{r['seeds'] or '':>3}{r['regret_mean']:>8.2f}{ci:>17}{se:>6}{r['hit_rate']:>6.2f}"
            f"{within:>6}{r['rank_median']:>6.0f}{r['cost_runs_mean']:>7.2f}{floor:>7}"
            f"{r['heldout_regret_mean']:>9.2f}{h_ci:>17}{h_se:>6}{h_hit:>6}"
        )
    for title, table in (
        ("scored by the proxy, seeds 0-2", against),
        (
            f"retrained from scratch ({args.retrain_study} [train]), test Δm vs single-task nets, seeds 0-2",
            against_retrain,
        ),
    ):
        _print_against(title, table, args.random_policies)
    print(f"hard sharing retrained: test Δm {hard.mean:+.2f} [{hard.ci_low:.2f}, {hard.ci_high:.2f}]")
    for title, summary in against_summary.items():
        print(
            f"\nAdaShare vs the random median ({title}; mean over search seeds of the seed-paired difference, 95% "
            "bootstrap over search seeds, scoring seeds and pool policies; distinct = different answers):"
        )
        print(f"{'answer':<52}{'n':>3}{'distinct':>9}{'minus median':>13}{'95% CI':>18}{'above':>7}{'rank':>6}  skips")
        for a in summary:
            lo, hi = a["minus_random_median_ci"]
            rank = f"{a['rank_median']:.0f}" if a["rank_median"] is not None else "-"
            ci = f"[{lo:.2f}, {hi:.2f}]"
            print(
                f"{a['answer']:<52}{a['compared']:>3}{a['distinct_answers']:>9}{a['minus_random_median']:>13.2f}{ci:>18}"
                f"{a['above_median']:>5}/{a['compared']:<2}{rank:>5}  {a['skips']}"
            )
    print(
        f"\nevery method's answers retrained from scratch (test Δm, seeds 0-2), minus hard sharing and minus the "
        f"retrain's best of proxy_fidelity's 24 trees ({retrain_best}), paired over retrain seeds; mean and 95% "
        "interval over search seeds:"
    )
    print(f"{'method':<52}{'n':>3}{'Δm':>8}{'- hard':>8}{'95% CI':>18}{'- best':>8}{'95% CI':>18}")
    for r in retrained:
        h, b = r["minus_hard_ci"], r["minus_retrain_best_ci"]
        print(
            f"{r['method']:<52}{r['seeds']:>3}{r['retrain_delta_m']:>8.2f}{r['minus_hard']:>8.2f}"
            f"{f'[{h[0]:.2f}, {h[1]:.2f}]':>18}{r['minus_retrain_best']:>8.2f}{f'[{b[0]:.2f}, {b[1]:.2f}]':>18}"
        )
    for items in runs.values():
        for r in items:
            r.pop("_graph", None)
    report = {
        "benchmark": "search_quality",
        "space": "shapes_branch4",
        "tasks": TASKS.split(","),
        "data": {"name": "shapes", "n_train": 2000, "n_val": 500, "size": 16},
        "proxy": proxy.to_dict(),
        "truth": {
            "trees": len(truth.keys),
            "proxy_seeds": SEEDS,
            "best_key": truth.best_key,
            "best_delta_m": float(truth.mean[truth.best]),
            "planted_grouping_rank": truth.judge(graph_key(planted)).rank,
            "training_run_seconds": judge.run_seconds,
        },
        "budget_fractions": args.budgets,
        "branch_trials": [max(1, round(b * len(truth.keys))) for b in args.budgets],
        "rows": rows,
        "adashare_vs_random": {"proxy": against, "retrain": against_retrain},
        "adashare_vs_random_summary": against_summary,
        "retrained_answers": {"retrain_best_tree": retrain_best, "rows": retrained},
        "retrain": {
            "study": args.retrain_study,
            "train": retrain.train.to_dict(),
            "hard_sharing": dataclasses.asdict(hard),
            "seconds_this_run": retrain.seconds,
        },
        "runs": runs,
        "threads": args.threads,
        "optuna": optuna.__version__,
        "seconds": time.perf_counter() - t_start,
    }
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
