"""Hard-branch (tree) search with Optuna: single-objective (Δm) or multi-objective (Δm vs params / MACs),
TPE by default, resumable, with several worker processes or machines sharing one Optuna storage.

Trees (Vandenhende et al., "Branched Multi-Task Networks", BMVC 2020; Guo et al., "Learning to Branch for
Multi-Task Learning", ICML 2020) are sampled through Optuna's define-by-run API. Layers are walked in order;
at a branchable layer every current task group splits into a set partition of itself, chosen as a
restricted-growth string: the group's first task gets label 0, the i-th task a label in
``[0, 1 + max(previous labels)]``. Each choice is a categorical parameter whose name carries its whole
context (layer, group, task, previous labels), so a name always has the same distribution and the map from
parameter assignments to trees is a bijection onto :func:`~nas_mtl.graph.enumerate_trees`.

Candidates are scored by the warm-start proxy (:mod:`nas_mtl.search.proxy`); Δm after each fine-tuning
epoch is reported so a median or successive-halving pruner (Jamieson & Talwalkar 2016; Li et al. 2020)
stops bad trials (single objective only: Optuna does not prune multi-objective studies).

Deduplication: a trial whose tree an earlier trial already scored returns that trial's values (user attr
``duplicate_of``) without training; if that trial is still running in another worker, it waits for it
(up to ``duplicate_wait_s``; not for a worker of this machine that is gone). Two trials sampling the same new
tree within the few milliseconds between sampling and recording its key both train it; the proxy is
deterministic, so both get the same values.

Budget: ``n_trials`` counts finished trials (complete or pruned, duplicates included) over all workers and
sessions. A trial is within budget iff fewer than ``n_trials`` earlier-numbered trials are running or
finished (trial numbers are assigned atomically by the storage), so concurrent workers never overshoot;
the rare trial that loses that race is marked FAIL with user attr ``over_budget``.

Resume: rerunning :func:`branch_search` on the same storage continues the study (finished trials kept) up to
the budget; RUNNING trials left by a killed run are marked FAIL first, so restart it only when no worker of
the study is running (a worker whose trial is failed under it stops with an error). ``nas-mtl worker``
processes never fail other trials, except through the heartbeat of RDB storages: a worker silent for the grace
period (:data:`GRACE_S` s by default) is presumed dead and its trial failed by whichever process looks next;
on RDB storages the search and every worker stay until no trial runs, so a dead worker's place in the budget is
rerun by a survivor (or by a worker joining later). On a journal file, the trial of a joined worker killed
while the others go on stays RUNNING (and counted) until the search is restarted; workers the search started
itself are watched as processes, so their trials are failed and rerun at once on any storage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import optuna

from ..data import MultiTaskData
from ..space import SearchSpace
from ..storage import GRACE_S, HEARTBEAT_S, open_storage, sqlite_url
from . import SearchMethod, SearchResult, register_search_method
from .branch_config import PRUNERS, SAMPLERS, WARM_STARTS, BranchSearchConfig, Setup
from .branch_objective import FIGURES, POLL_S, TreeObjective, optuna_quiet, run_trials
from .branch_result import plot_history, search_result
from .branch_study import (
    BUDGET_SPENT_ATTR,
    CLAIMED,
    FINISHED,
    SECONDS_ATTR,
    SETUP_COST_ATTR,
    STUDY_ATTR,
    STUDY_FORMAT,
    attach_study,
    check_study_record,
    fail_running_trials,
    heartbeats,
    spent_budget,
    study_storage,
)
from .branch_trees import suggest_tree, tree_params, warm_start_cost, warm_start_trees
from .branch_workers import fail_orphans, run_worker, worker_processes
from .budget import CostModel
from .proxy import Proxy, Scorer, check_proxy, graph_from_key, graph_key


def branch_search(
    data: MultiTaskData,
    space: SearchSpace,
    config: BranchSearchConfig,
    run_dir: str | Path,
    *,
    setup: Setup | None = None,
    scorer: Scorer | None = None,
) -> SearchResult:
    """Search the trees of ``space`` (branching only at ``space.branchable``) for ``data``'s tasks.

    Creates or resumes the study (:func:`create_branch_study`) and runs trials until ``config.n_trials``
    are finished. ``config.workers`` > 1 starts ``workers - 1`` ``nas-mtl worker`` processes beside this one
    (each with ``cpu_count // workers`` torch threads, logs in ``run_dir/workers``); they rebuild data and
    space from ``setup`` (default: :meth:`Setup.of` ``data`` and ``space``), which is then required.

    Returns:
        graph: the best tree (highest Δm; with several objectives, the Pareto member with the highest Δm);
        candidates: the Pareto front (several objectives) or the ``top_k`` trees, best Δm first.
    """
    t0 = time.perf_counter()
    workers = config.workers
    if workers > 1 and setup is None:
        setup = Setup.of(data, space)
    if workers > 1 and (setup is None or scorer is not None):
        raise ValueError(
            "workers > 1 needs setup= (how workers rebuild the data and space: data from create_dataset and a "
            "space from a file give it) and the default proxy"
        )
    objective, url, stale = _open(data, space, config, Path(run_dir), setup, scorer)
    trusted = () if setup is None else setup.references(config)  # the user's code this search already runs
    orphans: list[int] = []  # trials that workers which died left RUNNING, failed here
    with worker_processes(url, config, workers, Path(run_dir), trusted) as procs:
        run_trials(objective, heartbeats(url), lambda: orphans.extend(fail_orphans(procs, objective.study)))
    if failed := fail_orphans(procs, objective.study):  # a worker died mid-trial: its trials go back into the budget
        orphans += failed
        run_trials(objective, heartbeats(url))  # and are run here
    stale = [*stale, *orphans]
    # the search's cost over all its sessions (a resumed study adds this session's wall time to the record)
    before = float(objective.study.user_attrs.get(SECONDS_ATTR, 0.0))
    total = before + time.perf_counter() - t0
    objective.study.set_user_attr(SECONDS_ATTR, total)
    result = search_result(objective, url, total, stale)
    plot_history(objective.study, Path(run_dir) / "history.png")
    if config.shortlist:
        from .shortlist import retrain_shortlist

        train = dataclasses.replace(config.proxy.finetune, epochs=config.shortlist_epochs, seed=config.seed)
        costs, left = objective.costs, None
        if config.budget is not None and costs is not None:
            left = config.budget - spent_budget(objective.study)
        result = retrain_shortlist(
            data, space, result, config.shortlist, train, run_dir, config.proxy.balancer, costs, left
        )
    return result


def create_branch_study(
    data: MultiTaskData,
    space: SearchSpace,
    config: BranchSearchConfig,
    run_dir: str | Path,
    *,
    setup: Setup | None = None,
    scorer: Scorer | None = None,
) -> optuna.Study:
    """Create or resume the study of a branch search without running trials (``nas-mtl worker`` runs them).

    Opens ``config.storage`` (default ``sqlite:///RUN_DIR/study.db``), checks that an existing study was made
    for the same tasks, layers, objectives and proxy, records what workers need (config, ``setup``, run
    folder, Δm reference), trains or reloads the warm start in ``run_dir`` (unless ``scorer`` replaces the
    proxy, e.g. a table of stored scores) and marks trials a killed run left RUNNING as FAIL.
    """
    return _open(data, space, config, Path(run_dir), setup, scorer)[0].study


def _name_metrics(study: optuna.Study, objectives: Sequence[str]) -> None:
    """The objectives' names in the study (optuna-dashboard shows them instead of "Objective 0"): the proxy's Δm
    is not the report's retrained Δm."""
    import warnings

    names = ["proxy_delta_m" if o == "delta_m" else o for o in objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def _open(
    data: MultiTaskData,
    space: SearchSpace,
    config: BranchSearchConfig,
    run_dir: Path,
    setup: Setup | None,
    scorer: Scorer | None,
) -> tuple[TreeObjective, str, list[int]]:
    """:func:`create_branch_study`; returns the objective (with the study), the storage URL, the stale trials."""
    run_dir.mkdir(parents=True, exist_ok=True)
    url = study_storage(config, run_dir)
    storage = open_storage(url)
    with optuna_quiet():  # "A new study created in RDB ...": the search says what it opens itself
        study = optuna.create_study(
            storage=storage, study_name=config.study_name, directions=config.directions, load_if_exists=True
        )
    record = check_study_record(study, data, space, config)
    _name_metrics(study, config.objectives)
    costs = CostModel(data, space, config.shortlist_epochs)
    if config.budget is not None and SETUP_COST_ATTR not in study.user_attrs:  # priced before anything trains
        study.set_user_attr(SETUP_COST_ATTR, _check_budget(costs, config))
    if scorer is None:
        scorer = Proxy.prepare(data, space, config.proxy, run_dir, reference=record.get("reference"))
    study.set_user_attr(
        STUDY_ATTR,
        {
            **record,
            "config": config.to_dict(),
            "setup": None if setup is None else dataclasses.asdict(setup),
            "run_dir": str(run_dir.resolve()),
            "reference": getattr(scorer, "reference", None),
        },
    )
    new = not study.get_trials(deepcopy=False)
    study.set_user_attr(BUDGET_SPENT_ATTR, False)  # a resumed search may have been given more
    if config.warm_start and new:  # a new study: its first trials
        distinct: dict[str, str] = {}  # e.g. rsa's tree where its one group is hard sharing, enqueued once
        for name, graph in warm_start_trees(data, space, config, run_dir).items():
            distinct.setdefault(graph_key(graph), name)
        if len(distinct) > config.n_trials:
            raise ValueError(
                f"branch search config: warm_start {list(config.warm_start)} gives {len(distinct)} distinct trees, "
                f"more than n_trials ({config.n_trials})"
            )
        for key, name in distinct.items():
            graph = graph_from_key(key, data.task_names, space.layers)
            study.enqueue_trial(tree_params(graph, space.layers, space.branchable), user_attrs={"warm_start": name})
    stale = fail_running_trials(study, storage)
    study = attach_study(config.study_name, storage, config, config.seed)
    objective = TreeObjective(
        study, scorer, data.task_names, space.layers, space.branchable, config, costs=costs, figures=run_dir / FIGURES
    )
    return objective, url, stale


def _check_budget(costs: CostModel, config: BranchSearchConfig) -> float:
    """The set-up's cost (proxy references, warm start's affinity run); ValueError, before anything trains, when
    ``config.budget`` cannot also pay for the cheapest tree (hard sharing) and its retrain."""
    assert config.budget is not None
    setup = costs.proxy_setup(config.proxy) + warm_start_cost(costs, config)
    hard = costs.space.hard_sharing(costs.data.task_names)
    least = setup + costs.proxy_trial(hard, config.proxy)
    least += costs.training(hard, config.shortlist_epochs) if config.shortlist else 0.0
    if least > config.budget:
        raise ValueError(
            f"branch search config: budget {config.budget} hard-sharing trainings does not cover the set-up "
            f"({setup:.2f}) and one tree with its retrain; it needs at least {least:.2f}"
        )
    return setup


@register_search_method("branch")
def _method() -> SearchMethod:
    return SearchMethod(
        BranchSearchConfig,
        branch_search,
        check=lambda data, space, config: check_proxy(data, config.proxy),
        help="Optuna tree search: TPE on Δm, or on Δm vs params/MACs (a Pareto front); resumable, multi-process",
    )


__all__ = [
    "BranchSearchConfig",
    "CLAIMED",
    "FINISHED",
    "GRACE_S",
    "HEARTBEAT_S",
    "POLL_S",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_ATTR",
    "STUDY_FORMAT",
    "WARM_STARTS",
    "Setup",
    "TreeObjective",
    "branch_search",
    "create_branch_study",
    "heartbeats",
    "open_storage",
    "plot_history",
    "run_worker",
    "sqlite_url",
    "study_storage",
    "suggest_tree",
    "tree_params",
    "spent_budget",
    "warm_start_cost",
    "warm_start_trees",
]
