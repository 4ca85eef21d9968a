"""A branch search's Optuna study: where it is stored, the record workers join by (:data:`STUDY_ATTR`), the
session's sampler and pruner, and the trials counted against the budget. See :mod:`nas_mtl.search.branching`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..data import MultiTaskData, data_fingerprint
from ..runs import check_settings
from ..space import SearchSpace
from ..storage import resolve, sqlite_url
from .branch_config import BranchSearchConfig

STUDY_ATTR = "nas_mtl"
"""Study user attr holding everything a worker needs to join (format :data:`STUDY_FORMAT`)."""
STUDY_FORMAT = "nas_mtl.branch_study/1"
SECONDS_ATTR = "nas_mtl_seconds"
"""Study user attr: wall seconds of the search's sessions so far (the result's cost adds them up)."""
SETUP_COST_ATTR = "nas_mtl_setup_cost"
"""Study user attr: what the search spent before its first trial (proxy set-up, warm start's affinity run), in
hard-sharing trainings (:class:`~.budget.CostModel`)."""
BUDGET_SPENT_ATTR = "nas_mtl_budget_spent"
"""Study user attr: a tree did not fit :attr:`BranchSearchConfig.budget` this session (no more trials)."""
CLAIMED = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_storage(config: BranchSearchConfig, run_dir: str | Path) -> str:
    """The storage spec a branch search in ``run_dir`` opens: ``config.storage``, else ``RUN_DIR/study.db``."""
    return config.storage or sqlite_url(Path(run_dir) / "study.db")


def heartbeats(storage: str) -> bool:
    """Whether the storage (spec) records heartbeats (RDB storages; a journal file does not)."""
    return not resolve(storage).startswith("journal:")


def attach_study(study_name: str, storage: BaseStorage, config: BranchSearchConfig, seed: int | None) -> optuna.Study:
    """The study with this session's pruner and sampler, seeded by ``seed`` and the number of trials so far
    (a resumed run must not redraw the proposals of its first session)."""
    n = len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    mixed = None if seed is None else int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
    return optuna.load_study(
        study_name=study_name, storage=storage, sampler=config.make_sampler(mixed), pruner=config.make_pruner()
    )


def check_study_record(
    study: optuna.Study, data: MultiTaskData, space: SearchSpace, config: BranchSearchConfig
) -> dict[str, Any]:
    """The study's record (with what this session checks); raise ValueError if it was created for other data
    (:func:`~nas_mtl.data.data_fingerprint`), tasks, layers, objectives, proxy, sampler or pruner (``n_trials``
    may grow)."""
    want = {
        "format": STUDY_FORMAT,
        "data": data_fingerprint(data),
        "tasks": list(data.task_names),
        "layers": list(space.layers),
        "branchable": list(space.branchable),
        "objectives": list(config.objectives),
        "proxy": config.proxy.to_dict(),
        "sampler": config.sampler_name,
        "pruner": config.pruner_name,
    }
    record = study.user_attrs.get(STUDY_ATTR)
    if record is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(f"study {study.study_name!r} has trials but no {STUDY_ATTR!r} record; use another study")
        return want
    check_settings({k: record.get(k) for k in want}, want, f"study {study.study_name!r}", "search")
    return {**record, **want}


def fail_running_trials(
    study: optuna.Study, storage: BaseStorage, of: Callable[[FrozenTrial], bool] = lambda t: True, why: str = "stale"
) -> list[int]:
    """Mark RUNNING trials FAIL (those ``of`` selects; default all, left by a killed run), with user attr ``why``;
    returns their numbers."""
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not of(t):
            continue
        storage.set_trial_user_attr(t._trial_id, why, True)
        try:
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            stale.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile
            pass
    return stale


def spent_budget(study: optuna.Study) -> float:
    """Hard-sharing trainings ``study`` has spent: its set-up and every tree scored (claimed trials' costs)."""
    trials = study.get_trials(deepcopy=False, states=CLAIMED)
    return float(study.user_attrs.get(SETUP_COST_ATTR, 0.0)) + sum(float(t.user_attrs.get("cost", 0)) for t in trials)


__all__ = [
    "BUDGET_SPENT_ATTR",
    "CLAIMED",
    "FINISHED",
    "SECONDS_ATTR",
    "SETUP_COST_ATTR",
    "STUDY_ATTR",
    "STUDY_FORMAT",
    "attach_study",
    "check_study_record",
    "fail_running_trials",
    "heartbeats",
    "spent_budget",
    "study_storage",
]
