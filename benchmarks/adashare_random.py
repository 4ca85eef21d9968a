"""AdaShare against random select/skip policies with the same number of skips, on the quickstart study.

    python benchmarks/adashare_random.py [--study studies/quickstart.toml] [--search-seeds 0,1,2]
                                         [--seeds 0,1,2] [--random 8] [--variant quickstart ...]
                                         [--run-dir runs/adashare_random]
                                         [--out benchmarks/results/adashare_random.json]

Issue 20, Deliver 4: is AdaShare's policy better than chance? Data, search space, training settings and the
``[search.adashare]`` settings come from the study file through :func:`~nas_mtl.study.load_study` (so they stay in
sync with it); a ``--variant`` overrides some AdaShare settings (:data:`VARIANTS`).

1. AdaShare runs once per search seed. Its answers: ``argmax`` (select where p_select >= 0.5; blocks the
   curriculum never reached stay selected, as ``final_policies`` does) and ``best-of-8`` (the paper's choice:
   8 policies sampled from the learned distribution, the one with the lowest supernet validation loss, what
   the study retrains).
2. Random policies: for every number of skips k among the answers, ``--random`` distinct select/skip policies
   with exactly k skips over the space's skippable blocks x tasks (a seeded shuffle of all C(S*T, k) of them,
   the answers of the variant left out; every such policy is a valid graph, ``SharingGraph.from_policy``).
   Where fewer exist, all of them are taken (marked ``exhaustive``); an answer without skips is hard sharing,
   the only policy with 0 skips, so its difference to a random draw with 0 skips is 0 by construction.
3. Every policy (and hard sharing, for scale) is retrained from scratch with the study's ``[train]`` settings,
   equal weights, each training seed; single-task networks with the same seeds give the Δm reference.

Δm is on the test split against the single-task test metrics averaged over the training seeds, as the study
report computes it (``nas_mtl.report.single_task_reference``). Per answer: its mean Δm with a 95 % Student-t
interval over training seeds; the random policies' median and range (of their seed means) at the same k; its
rank among them (1 = best); the paired difference answer − random median, the median taken per training seed
(the same seed's noise cancels), mean and 95 % t interval over training seeds. Verdict per final kind: the
answer-minus-median differences averaged over training seeds, one value per search seed, their mean with a
hierarchical bootstrap interval (:func:`~nas_mtl.search.quality.minus_random_median`: search seeds, training seeds
and the pool's policies resampled; a t interval over 3 search seeds misses the last two, and has zero width when
they return the same policy); ``better`` / ``worse`` when the interval excludes 0, ``within noise`` otherwise.
Answers without skips (hard sharing, the only such policy) have no random alternative and are left out.

Every training result is cached in ``RUN_DIR/train/POLICY/seedS.json`` and every search in
``RUN_DIR/search/VARIANT/seedS/answers.json``: a rerun resumes. One torch thread by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from _report import write_report

from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.data import MultiTaskData, create_dataset
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.report import seed_stats
from nas_mtl.search.adashare import AdaShareConfig, adashare_search
from nas_mtl.search.quality import minus_random_median
from nas_mtl.space import SearchSpace, load_search_space
from nas_mtl.study import StudySpec, load_study, method_config
from nas_mtl.train import TrainConfig

VARIANTS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "no-sharing": {"sharing": 0.0},
    "paper-rates": {"policy_lr": 0.01, "tau_decay": 0.965, "curriculum_speed": 3},
}
"""AdaShare settings on top of the study's ``[search.adashare]`` table, by variant name: the study's own;
without the sharing term (λ_sharing 0: each task's decisions follow its own loss); the reference's policy
learning rate, temperature decay and curriculum speed at the study's budget."""

Policy = tuple[tuple[bool, ...], ...]
"""select[s][t] over the skippable blocks s and tasks t."""


def _key(policy: Policy) -> str:
    """``11.10.01.11``: one group per skippable block, 1 = the task selects it, 0 = skips it."""
    return ".".join("".join("1" if s else "0" for s in row) for row in policy)


def _skips(policy: Policy) -> int:
    return sum(not s for row in policy for s in row)


def _graph(policy: Policy, data: MultiTaskData, space: SearchSpace) -> SharingGraph:
    rows = dict(zip([i for i, n in enumerate(space.layers) if n in space.skippable], policy))
    select = [rows.get(i, (True,) * len(data.task_names)) for i in range(len(space.layers))]
    return SharingGraph.from_policy(data.task_names, space.layers, select, space.skippable)


def random_policies(k: int, blocks: int, tasks: int, n: int, exclude: set[Policy], seed: int) -> list[Policy]:
    """``n`` distinct policies with exactly ``k`` skips, none in ``exclude``: the first ``n`` of a shuffle of all
    C(blocks * tasks, k) seeded by (``seed``, ``k``), so that the pools of different variants mostly coincide."""
    cells = blocks * tasks
    every = list(itertools.combinations(range(cells), k))
    random.Random(f"{seed}/{k}").shuffle(every)
    out = []
    for skipped in every:
        flat = [i not in skipped for i in range(cells)]
        policy = tuple(tuple(flat[b * tasks : (b + 1) * tasks]) for b in range(blocks))
        if policy not in exclude:
            out.append(policy)
        if len(out) == n:
            break
    return out


def _search(spec: StudySpec, variant: str, seed: int, data, space, run_dir: Path) -> dict[str, Any]:
    """AdaShare's two answers (argmax, best-of-8) for one search seed; cached in ``answers.json``."""
    out = run_dir / "search" / variant / f"seed{seed}"
    table = {**spec.search["adashare"], **VARIANTS[variant], "seed": seed, "device": "cpu", "progress": False}
    config: AdaShareConfig = method_config("adashare", table, spec.source)
    cached = out / "answers.json"
    if cached.is_file():
        saved = json.loads(cached.read_text())
        if saved["config"] != config.to_dict():
            raise ValueError(f"{cached}: made with other AdaShare settings; delete {out} to rerun that search")
        return saved
    t0 = time.process_time()
    result = adashare_search(data, space, dataclasses.replace(config, final="sample"))
    info = result.info
    prob = info["select_prob"]
    learned = config.active_at(config.train.epochs - 1, len(prob))
    argmax = [[i < len(prob) - learned or p >= 0.5 for p in row] for i, row in enumerate(prob)]
    search_rounds = [h for h in info["history"] if h["phase"] == "search"]
    saved = {
        "config": config.to_dict(),
        "select_prob": prob,
        "answers": {"argmax": argmax, "best-of-8": info["policies"][0]["select"]},
        "samples": info["policies"],
        "final_tau": search_rounds[-1]["tau"],
        "select_prob_history": [h["select_prob"] for h in info["history"]],
        "seconds": result.seconds,
        "cpu_seconds": time.process_time() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(saved, indent=1) + "\n")
    return saved


def _train(name: str, graph: SharingGraph, seed: int, spec: StudySpec, data, space, run_dir: Path) -> dict[str, Any]:
    """Test / val metrics of ``graph`` retrained with the study's settings and training ``seed`` (cached)."""
    config: TrainConfig = dataclasses.replace(spec.train, seed=seed, device="cpu", progress=False)
    path = run_dir / "train" / name / f"seed{seed}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["train"] != config.identity() or SharingGraph.from_dict(saved["graph"]) != graph:
            raise ValueError(f"{path}: trained another graph or with other settings; delete it to retrain")
        return saved
    t0 = time.process_time()
    _, result = train_graph(graph.with_meta(name=name), data, space, config)
    saved = {
        "graph": graph.to_dict(),
        "train": config.identity(),
        "test": result.test,
        "val": result.val,
        "train_seconds": result.train_seconds,
        "cpu_seconds": time.process_time() - t0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"  trained {name} seed {seed}: {result.test} ({saved['cpu_seconds']:.0f} s CPU)", flush=True)
    return saved


def _stats(values: Sequence[float]) -> dict[str, float]:
    s = seed_stats(values)
    return {"mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}


def _compare(answer: Mapping[int, float], pool: Mapping[str, Mapping[int, float]], seeds: Sequence[int]) -> dict:
    """The answer's Δm by seed against the random pool's (``{policy: {seed: Δm}}``) at the same number of skips."""
    means = {k: statistics.mean(v[s] for s in seeds) for k, v in pool.items()}
    own = statistics.mean(answer[s] for s in seeds)
    diffs = [answer[s] - statistics.median(v[s] for v in pool.values()) for s in seeds]
    return {
        "delta_m": _stats([answer[s] for s in seeds]),
        "random_n": len(pool),
        "random_median": statistics.median(means.values()),
        "random_min": min(means.values()),
        "random_max": max(means.values()),
        "rank": 1 + sum(m > own for m in means.values()),
        "rank_of": len(pool) + 1,
        "minus_median_by_seed": diffs,
        "minus_median": _stats(diffs),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="studies/quickstart.toml")
    p.add_argument("--search-seeds", default="0,1,2", help="AdaShare search seeds")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of every retrained policy and baseline")
    p.add_argument("--random", type=int, default=8, help="random policies per number of skips (at least 8)")
    p.add_argument("--rng-seed", type=int, default=0, help="seed of the random policies' draw")
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="AdaShare settings (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", default="runs/adashare_random", help="cache of searches and trainings (resumes)")
    p.add_argument("--out", default="benchmarks/results/adashare_random.json")
    args = p.parse_args(argv)
    if args.random < 8:
        p.error("--random: at least 8 random policies per number of skips")
    variants = args.variant or ["quickstart"]
    search_seeds = [int(s) for s in args.search_seeds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    run_dir = Path(args.run_dir)
    spec = load_study(args.study)
    data = create_dataset(spec.data["name"], **{k: v for k, v in spec.data.items() if k != "name"})
    space = load_search_space(spec.space, input_shape=data.input_shape)
    directions = primary_directions(data)
    blocks, tasks = len(space.skippable), len(data.task_names)

    def trained(name: str, graph: SharingGraph) -> dict[int, dict[str, Any]]:
        return {s: _train(name, graph, s, spec, data, space, run_dir) for s in seeds}

    singles = {
        t: trained(f"single-{t}", SharingGraph.hard_sharing([t], space.layers, space.skippable)) for t in directions
    }
    reference = {
        t: {m: statistics.mean(singles[t][s]["test"][t][m] for s in seeds) for m in d} for t, d in directions.items()
    }

    def dm(runs: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
        return {s: delta_m(r["test"], reference, directions) for s, r in runs.items()}

    hard = dm(trained("hard", space.hard_sharing(data.task_names)))
    print(f"hard sharing: Δm {statistics.mean(hard.values()):+.2f} % (seeds {seeds})", flush=True)

    report_variants = {}
    for variant in variants:
        print(f"\nvariant {variant}: {VARIANTS[variant] or 'the study settings'}", flush=True)
        searches = {s: _search(spec, variant, s, data, space, run_dir) for s in search_seeds}
        answers = {
            (s, kind): tuple(tuple(row) for row in sel)
            for s, found in searches.items()
            for kind, sel in found["answers"].items()
        }
        for (s, kind), policy in answers.items():
            print(f"  search seed {s} {kind:<9} {_key(policy)}  ({_skips(policy)} skips)", flush=True)
        exclude = set(answers.values())
        pools = {
            k: random_policies(k, blocks, tasks, args.random, exclude, args.rng_seed)
            for k in sorted({_skips(a) for a in answers.values()})
        }
        scores = {  # no skips: hard sharing, trained above
            _key(policy): dm(trained("hard" if _skips(policy) == 0 else _key(policy), _graph(policy, data, space)))
            for policy in dict.fromkeys([*answers.values(), *itertools.chain(*pools.values())])
        }
        rows = []
        for (s, kind), policy in answers.items():
            k = _skips(policy)
            pool = {_key(q): scores[_key(q)] for q in pools[k]}
            row = {"search_seed": s, "final": kind, "policy": _key(policy), "skips": k}
            row["exhaustive"] = len(pool) < args.random
            # no other policy has k skips (k = 0: hard sharing): a random draw with k skips is this graph
            row["only_policy"] = not pool
            row.update(_compare(scores[_key(policy)], pool or {row["policy"]: scores[row["policy"]]}, seeds))
            row["rank_of"] -= row["only_policy"]
            row["select_prob"] = searches[s]["select_prob"]
            rows.append(row)
        verdicts = {}
        for kind in ("argmax", "best-of-8"):
            # answers with no other policy of their skip count (hard sharing) have no random alternative: left out
            compared = [
                (r, answers[(r["search_seed"], kind)]) for r in rows if r["final"] == kind and not r["only_policy"]
            ]
            if not compared:
                verdicts[kind] = {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
                verdicts[kind]["outcome"] = "no answer with a random alternative"
                continue
            mean, (low, high) = minus_random_median(
                [[scores[_key(policy)][s] for s in seeds] for _, policy in compared],
                [[[scores[_key(q)][s] for s in seeds] for q in pools[_skips(policy)]] for _, policy in compared],
            )
            word = "beats the random median beyond noise" if low > 0 else "within noise of the random median"
            verdicts[kind] = {
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n": len(compared),
                "distinct_answers": len({policy for _, policy in compared}),
                "outcome": "worse than the random median beyond noise" if high < 0 else word,
            }
        report_variants[variant] = {
            "settings": {**spec.search["adashare"], **VARIANTS[variant]},
            "searches": {str(s): v for s, v in searches.items()},
            "answers": rows,
            "random_pools": {str(k): [_key(q) for q in v] for k, v in pools.items()},
            "delta_m_by_policy": {k: {str(s): v for s, v in d.items()} for k, d in scores.items()},
            "verdict": verdicts,
        }
        _print_table(variant, rows, verdicts, seeds, search_seeds)
    report = {
        "benchmark": "adashare_random",
        "study": args.study,
        "data": dict(spec.data),
        "space": spec.space,
        "train": spec.train.identity(),
        "seeds": seeds,
        "search_seeds": search_seeds,
        "random_per_k": args.random,
        "rng_seed": args.rng_seed,
        "split": "test",
        "reference": "single-task test metrics averaged over the training seeds",
        "single_task_reference": reference,
        "hard_delta_m": {str(s): v for s, v in hard.items()},
        "threads": args.threads,
        "variants": report_variants,
        "seconds": time.perf_counter() - t_start,
        "cpu_seconds": time.process_time() - c_start,
    }
    return write_report(args.out, report)


def _ci(s: Mapping[str, float]) -> str:
    return f"{s['mean']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"


def _print_table(variant: str, rows: list[dict], verdicts: dict, seeds: list[int], search_seeds: list[int]) -> None:
    print(f"\n{variant}: Δm % on test vs single-task, training seeds {seeds}, 95 % t intervals")
    cells = ("seed", "final", "policy", "k", "Δm mean [95% CI]", "random median [min, max]", "rank", "answer − median")
    line = "{:>4} {:<9} {:<12} {:>2} {:<24} {:<26} {:>6} {:<24}"
    print(line.format(*cells))
    for r in rows:
        start = (r["search_seed"], r["final"], r["policy"], r["skips"], _ci(r["delta_m"]))
        if r["only_policy"]:
            print(line.format(*start, f"(the only policy with {r['skips']} skips)", "1/1", "0 by construction"))
            continue
        rand = f"{r['random_median']:+.2f} [{r['random_min']:+.2f}, {r['random_max']:+.2f}]"
        rank = f"{r['rank']}/{r['rank_of']}" + ("*" if r["exhaustive"] else "")
        print(line.format(*start, rand, rank, _ci(r["minus_median"])))
    print("(* fewer than --random policies exist at that k: all of them; rank 1 = best)")
    for kind, v in verdicts.items():
        print(f"{variant} {kind}: answer − random median over search seeds {search_seeds}: {_ci(v)} → {v['outcome']}")


if __name__ == "__main__":
    main()
