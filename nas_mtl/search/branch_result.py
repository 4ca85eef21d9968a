"""What a branch search returns (:func:`search_result`: the best trees, the Pareto front, the trial counts) and
its history figure (:func:`plot_history`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..storage import redact, resolve
from . import SearchResult
from .branch_objective import TreeObjective
from .branch_study import BUDGET_SPENT_ATTR
from .exhaustive import count_trees
from .proxy import graph_from_key


def search_result(objective: TreeObjective, url: str, seconds: float, stale: list[int]) -> SearchResult:
    """The search's answer from its study: the best distinct trees (``top_k``, or the Pareto front with several
    objectives), the trial counts, the storage (password hidden) and the trials failed as ``stale``."""
    study, config = objective.study, objective.config
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        spent = " (the budget did not fit a tree)" if study.user_attrs.get(BUDGET_SPENT_ATTR) else ""
        raise RuntimeError(f"study {config.study_name!r}: no trial completed ({len(trials)} trials){spent}")
    pool = study.best_trials if config.multi_objective else complete
    ranked: dict[str, FrozenTrial] = {}
    for t in sorted(pool, key=lambda t: (-t.values[0], t.number)):
        ranked.setdefault(t.user_attrs["key"], t)
    chosen = list(ranked.values()) if config.multi_objective else list(ranked.values())[: config.top_k]
    graphs = tuple(
        graph_from_key(t.user_attrs["key"], objective.tasks, objective.layers).with_meta(
            method="branch", trial=t.number, **dict(zip(config.objectives, t.values))
        )
        for t in chosen
    )
    states = Counter(t.state.name for t in trials)
    info = {
        "study": config.study_name,
        "storage": redact(resolve(url)),
        "config": {**config.to_dict(), "storage": None if config.storage is None else redact(config.storage)},
        "n_trees_in_space": count_trees(len(objective.tasks), len(objective.branchable)),
        "trials": {
            **{s.lower(): states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
            "duplicates": sum("duplicate_of" in t.user_attrs for t in trials),
            "trees_scored": len({t.user_attrs["key"] for t in trials if "score" in t.user_attrs}),
            "stale_failed": stale,
            "workers": len({t.user_attrs.get("worker") for t in trials} - {None}),
        },
        "trial_seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.datetime_complete and t.datetime_start
        ),
        "best": [
            {"trial": t.number, "key": t.user_attrs["key"], **dict(zip(config.objectives, t.values))} for t in chosen
        ],
    }
    return SearchResult("branch", graphs[0], seconds, graphs, info)


def plot_history(study: optuna.Study, path: str | Path) -> None:
    """The proxy's Δm per trial (finished; pruned at their last report) and best so far, to ``path`` (PNG).

    Labelled as the proxy's: a trial's score is the search proxy's Δm (a short, subset or warm-started training
    against its own reference), not comparable with the report's retrained Δm."""
    from ..plots import history_plot

    trials = study.get_trials(deepcopy=False)
    complete = [(t.number, t.values[0]) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [
        (t.number, t.intermediate_values[max(t.intermediate_values)])
        for t in trials
        if t.state == TrialState.PRUNED and t.intermediate_values
    ]
    title = f"Optuna study {study.study_name!r}: proxy scores (not the report's retrained Δm)"
    history_plot(complete, pruned, "proxy Δm (%)", title, path)


__all__ = ["plot_history", "search_result"]
