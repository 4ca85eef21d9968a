"""The final choice from a retrained shortlist: a proxy narrows the space, full trainings pick the answer.

A proxy that ranks trees like a retrain on the whole space can still misplace the few best ones: on the families
benchmark every short-training proxy ranks the planted tree below independent networks, because what sharing
gives there (three times the labels per feature) shows only once the networks near convergence
(``benchmarks/results/families_fidelity.json``). When the budget allows, the search's ``n`` best distinct trees by
the proxy are therefore trained as the user will train the answer, on the training set, and the one with the best
validation Δm is returned. Standley et al. (2020) and Fifty et al. (2021) end the same way: candidate groupings
are trained in full before the final selection.

Validation Δm is taken against the shortlist's own mean per task and metric, a reference that moves no tree's
rank against another's beyond the per-task weighting every Δm has; test data are never read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..balancing import create_balancer
from ..baselines import primary_directions, train_graph
from ..data import MultiTaskData
from ..graph import SharingGraph
from ..metrics import delta_m
from ..runs import run_path
from ..space import SearchSpace
from ..train import TrainConfig
from . import SearchResult
from .budget import CostModel
from .proxy import graph_key

SHORTLIST_DIR = "shortlist"
"""Folder (in the search's run folder) of the shortlist's trainings, one per tree, resumable."""


def retrain_shortlist(
    data: MultiTaskData,
    space: SearchSpace,
    result: SearchResult,
    n: int,
    train: TrainConfig,
    run_dir: str | Path,
    balancer: str = "equal",
    costs: CostModel | None = None,
    budget: float | None = None,
) -> SearchResult:
    """``result`` with its answer chosen among its first ``n`` distinct candidates by validation Δm after
    training each with ``train`` (in ``run_dir/shortlist/<i>``, resumable); candidates reordered by that Δm,
    the shortlist recorded in ``info["shortlist"]``, its training time added to ``seconds``.

    With ``budget`` (hard-sharing trainings left, priced by ``costs``), a candidate whose training does not fit
    what is left is passed over; with fewer than two trained, the proxy's first place stands untrained.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"shortlist: n must be an integer >= 1, got {n!r}")
    t0 = time.perf_counter()
    pool: dict[str, SharingGraph] = {}
    for g in (*result.candidates, result.graph):
        pool.setdefault(graph_key(g), g)
    shortlist, left = [], budget
    for g in list(pool.values())[:n]:
        price = 0.0 if costs is None else costs.training(g, train.epochs)
        if left is None or price <= left + 1e-9:
            shortlist.append(g)
            left = None if left is None else left - price
    if len(shortlist) < 2:
        return result
    directions = primary_directions(data)
    val, seconds = [], []
    for i, graph in enumerate(shortlist):
        folder = run_path(Path(run_dir) / SHORTLIST_DIR, str(i))
        _, trained = train_graph(graph, data, space, train, create_balancer(balancer), folder)
        val.append(trained.val)
        seconds.append(trained.train_seconds)
    scores = shortlist_scores(val, directions)
    order = sorted(range(len(shortlist)), key=lambda i: (-scores[i], i))
    ranked = tuple(shortlist[i].with_meta(shortlist_val_delta_m=scores[i]) for i in order)
    trained = {graph_key(g) for g in shortlist}
    rest = tuple(g for g in result.candidates if graph_key(g) not in trained)
    info = {
        **result.info,
        "shortlist": [
            {
                "key": graph_key(shortlist[i]),
                "graph": shortlist[i].describe(),
                "proxy_rank": i + 1,
                "val_delta_m": scores[i],
                "train_seconds": seconds[i],
            }
            for i in order
        ],
        "shortlist_train": train.to_dict(),
        "shortlist_cost": None if costs is None else sum(costs.training(g, train.epochs) for g in shortlist),
    }
    return SearchResult(result.method, ranked[0], result.seconds + time.perf_counter() - t0, ranked + rest, info)


def shortlist_scores(val: Sequence[dict], directions: dict[str, dict[str, bool]]) -> list[float]:
    """Validation Δm of each of ``val`` (per-tree metrics) against their mean per task and primary metric."""
    reference = {t: {m: float(np.mean([v[t][m] for v in val])) for m in ms} for t, ms in directions.items()}
    return [delta_m(v, reference, directions) for v in val]


__all__ = ["SHORTLIST_DIR", "retrain_shortlist", "shortlist_scores"]
