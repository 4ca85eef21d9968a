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
import functools
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from ..balancing.base import BALANCERS, check_stored_balancer, parse_balancer
from ..config import config_from_dict, nested, option
from ..data import MultiTaskData, create_dataset, data_fingerprint
from ..data.base import DATASETS
from ..graph import SharingGraph
from ..registry import is_reference, resolve_reference
from ..runs import check_settings
from ..space import SearchSpace, backbone_reference, load_search_space
from ..storage import CHILD_ENV, GRACE_S, HEARTBEAT_S, fail_stale, open_storage, redact, resolve, sqlite_url
from . import SearchMethod, SearchResult, register_search_method
from .budget import CostModel
from .exhaustive import count_trees
from .proxy import OBJECTIVES, Proxy, ProxyConfig, Scorer, check_proxy, graph_from_key, graph_key

SAMPLERS: dict[str, Callable[[int | None, int], optuna.samplers.BaseSampler]] = {
    # conditional (define-by-run) space: group-decomposed multivariate TPE (Falkner et al. 2018; Optuna)
    "tpe": lambda seed, n: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True),
    # NSGA-II (Deb et al. 2002) recombines only parameters every trial has; in this conditional encoding
    # (names carry their context) its crossover found nothing to act on in benchmarks/search_quality.py: it
    # drew exactly random search's trees at every seed (its seeded RandomSampler). Not the default.
    "nsga2": lambda seed, n: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n // 5))),
    "random": lambda seed, n: optuna.samplers.RandomSampler(seed=seed),
    "bruteforce": lambda seed, n: optuna.samplers.BruteForceSampler(seed=seed),
}
"""Sampler name -> ``factory(seed, n_trials)``; ``"auto"`` = tpe, for one objective or several (multi-objective
TPE, Ozaki et al. 2020: it models the conditional choices; NSGA-II samples them at random here)."""

PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5),
    "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
    # Hyperband (Li et al. 2018): successive halving in several brackets of early-stopping aggressiveness
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
    "none": lambda: optuna.pruners.NopPruner(),
}
"""Pruner name -> factory; ``"auto"`` = median (one objective) or none (several)."""

WARM_STARTS = ("hard", "independent", "affinity", "rsa")
"""Named trees a search can start from (:attr:`BranchSearchConfig.warm_start`), besides graph files."""
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
POLL_S = 0.5
CLAIMED = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ---------------------------------------------------------------------- parameterisation
def suggest_tree(trial: Trial, tasks: Sequence[str], layers: Sequence[str], branchable: Sequence[str]) -> SharingGraph:
    """Sample a branched tree through ``trial`` (see the module doc); every tree is reachable exactly once."""
    allowed = set(branchable)
    partition: list[tuple[str, ...]] = [tuple(tasks)]
    partitions = []
    for layer in layers:
        if layer in allowed:
            partition = [block for group in partition for block in _split(trial, layer, group)]
        partitions.append(partition)
    return SharingGraph.branched(tasks, layers, partitions)


def _split(trial: Trial, layer: str, group: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A set partition of ``group`` as a restricted-growth string of categorical choices."""
    labels = [0]
    for task in group[1:]:
        name = f"{layer}:{'+'.join(group)}:{task}@{'.'.join(map(str, labels))}"
        labels.append(trial.suggest_categorical(name, list(range(max(labels) + 2))))
    return _blocks(group, labels)


def _blocks(group: Sequence[str], labels: Sequence[int]) -> list[tuple[str, ...]]:
    """The blocks of a restricted-growth string, in the order of their first task."""
    blocks: dict[int, list[str]] = {}
    for task, label in zip(group, labels):
        blocks.setdefault(label, []).append(task)
    return [tuple(b) for b in blocks.values()]


def tree_params(graph: SharingGraph, layers: Sequence[str], branchable: Sequence[str]) -> dict[str, int]:
    """The parameters under which :func:`suggest_tree` draws ``graph`` (its inverse), e.g. to enqueue a known tree
    as a trial (``optuna.Study.enqueue_trial``); ValueError when ``graph`` is not a tree of these layers that
    splits only at ``branchable`` ones."""
    allowed, params = set(branchable), {}
    partition: list[tuple[str, ...]] = [tuple(graph.tasks)]
    for i, layer in enumerate(layers):
        if layer not in allowed:
            continue
        block_of = {t: k for k, block in enumerate(graph.partition(i)) for t in block}
        refined = []
        for group in partition:
            labels, seen = [0], {block_of[group[0]]: 0}
            for task in group[1:]:
                params[f"{layer}:{'+'.join(group)}:{task}@{'.'.join(map(str, labels))}"] = label = seen.setdefault(
                    block_of[task], len(seen)
                )
                labels.append(label)
            refined += _blocks(group, labels)
        partition = refined
    drawn = suggest_tree(optuna.trial.FixedTrial(params), graph.tasks, layers, branchable)
    if graph_key(drawn) != graph_key(graph):
        raise ValueError(
            f"warm start: {graph.meta.get('name', 'the graph')} is not a tree of this space that branches only at "
            f"{list(branchable)} ({graph.describe()})"
        )
    return params


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class BranchSearchConfig:
    """Settings of a tree search; every field is validated with an error naming it.

    Args:
        proxy: how candidates are scored.
        n_trials: finished trials (complete + pruned, duplicates included) over all workers and sessions.
        objectives: ``("delta_m",)`` or Δm plus costs, e.g. ``("delta_m", "params")`` (a Pareto front).
        sampler: a name in :data:`SAMPLERS`, or auto (tpe, also with several objectives).
        pruner: a name in :data:`PRUNERS`, or auto (median; none with several objectives).
        seed: sampler seed (worker k of a parallel run uses ``seed + k``).
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql://...``), ``journal:PATH`` (a
            JournalFileStorage, for several processes on one machine), or ``env:VAR`` / ``file:PATH`` holding the
            URL so no password lands in files or command lines (see nas_mtl.storage); None =
            ``sqlite:///RUN_DIR/study.db``.
        study_name: the study in the storage; workers join it by this name.
        top_k: single objective: how many of the best trees to return as candidates.
        duplicate_wait_s: how long a trial that drew a tree another worker is scoring waits for that score.
        workers: processes on this machine (this one + ``workers - 1`` ``nas-mtl worker`` processes).
        warm_start: trees enqueued as the first trials of a new study (``optuna.Study.enqueue_trial``; they count
            in ``n_trials``), so the sampler starts from what a user would try without a search: ``hard``
            (hard sharing), ``independent`` (every task on its own from the first branchable layer),
            ``affinity`` (the affinity search's grouping, TAG lookahead on a hard-sharing run as long as the
            proxy's warm start, branching at the first branchable layer; its cost is part of the search's),
            ``rsa`` (the tasks grouped by representation similarity of single-task networks trained as the
            proxy's warm start, Vandenhende et al. 2020's measure averaged over layers, the best-scoring number
            of groups; one tree per branchable layer, the groups splitting there: what to share is the
            search's question, which tasks go together the measure's answer), or a graph JSON file.
        shortlist: single objective: when > 0, the answer is chosen among the ``shortlist`` best distinct trees
            by the proxy after training each in full (:func:`~.shortlist.retrain_shortlist`: the proxy's
            fine-tuning settings with ``shortlist_epochs`` epochs, seed ``seed``; best validation Δm). With a
            ``budget``, 1 reserves the answer's own retrain in it without running it.
        shortlist_epochs: epochs of each shortlist training (the retrain the user will run).
        budget: total compute in hard-sharing trainings of ``shortlist_epochs`` epochs
            (:class:`~.budget.CostModel`, the same on every machine): the proxy's set-up, the warm start's
            affinity run, every tree scored and the shortlist. A tree that would not fit (with the shortlist of
            the best trees so far reserved) ends the search; ``n_trials`` still caps the trials. None: trials
            only.
    """

    proxy: ProxyConfig = nested(ProxyConfig())
    n_trials: int = 50
    objectives: tuple[str, ...] = ("delta_m",)
    sampler: str = option("auto", choices=("auto", *SAMPLERS))
    pruner: str = option("auto", choices=("auto", *PRUNERS))
    seed: int = 0
    storage: str | None = None
    study_name: str = option("branch", key="study")
    top_k: int = 5
    duplicate_wait_s: float = 600.0
    workers: int = 1
    warm_start: tuple[str, ...] = ()
    shortlist: int = 0
    shortlist_epochs: int = 30
    budget: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.proxy, ProxyConfig):
            raise TypeError(f"branch search config: proxy must be a ProxyConfig, got {type(self.proxy).__name__}")
        for name, low in (("n_trials", 1), ("top_k", 1), ("seed", 0), ("workers", 1), ("shortlist", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"branch search config: {name} must be an integer >= {low}, got {value!r}")
        objectives = tuple(self.objectives)
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or "delta_m" not in objectives or len(set(objectives)) != len(objectives):
            raise ValueError(
                f"branch search config: objectives must be distinct names from {list(OBJECTIVES)} including "
                f"'delta_m', got {list(objectives)}"
            )
        # Δm first: trial.values[0] is Δm everywhere (ranking, history, reports)
        objectives = ("delta_m", *(o for o in objectives if o != "delta_m"))
        object.__setattr__(self, "objectives", objectives)
        for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, name) not in ("auto", *allowed):
                raise ValueError(
                    f"branch search config: {name} must be one of {['auto', *allowed]}, got {getattr(self, name)!r}"
                )
        if self.multi_objective and self.pruner not in ("auto", "none"):
            raise ValueError(
                f"branch search config: pruner {self.pruner!r} with objectives {list(objectives)}: Optuna does not "
                "prune multi-objective studies (Trial.report is single-objective); use 'none' or 'auto'"
            )
        if self.storage is not None and (not isinstance(self.storage, str) or not self.storage):
            raise ValueError(f"branch search config: storage must be a non-empty URL or None, got {self.storage!r}")
        if not isinstance(self.study_name, str) or not self.study_name:
            raise ValueError(f"branch search config: study_name must be a non-empty string, got {self.study_name!r}")
        warm = tuple(self.warm_start)
        bad = [w for w in warm if not isinstance(w, str) or (w not in WARM_STARTS and not w.endswith(".json"))]
        if bad or len(set(warm)) != len(warm) or len(warm) > self.n_trials:
            raise ValueError(
                f"branch search config: warm_start must be distinct names from {list(WARM_STARTS)} or graph .json "
                f"files, at most n_trials ({self.n_trials}) of them, got {list(warm)}"
            )
        object.__setattr__(self, "warm_start", warm)
        budget = self.budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf
        ):
            raise ValueError(f"branch search config: budget must be a finite number > 0 or none, got {budget!r}")
        epochs = self.shortlist_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"branch search config: shortlist_epochs must be an integer >= 1, got {epochs!r}")
        if self.shortlist > self.top_k or (self.shortlist and self.multi_objective):
            raise ValueError(
                f"branch search config: shortlist ({self.shortlist}) must be at most top_k ({self.top_k}) and "
                "needs a single objective"
            )
        wait = self.duplicate_wait_s
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < math.inf:
            raise ValueError(f"branch search config: duplicate_wait_s must be a finite number >= 0, got {wait!r}")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]

    @property
    def sampler_name(self) -> str:
        """The sampler in :data:`SAMPLERS` that ``sampler`` names (auto resolved)."""
        return self.sampler if self.sampler != "auto" else "tpe"

    @property
    def pruner_name(self) -> str:
        """The pruner in :data:`PRUNERS` that ``pruner`` names (auto resolved)."""
        return self.pruner if self.pruner != "auto" else ("none" if self.multi_objective else "median")

    def make_sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return SAMPLERS[self.sampler_name](seed, self.n_trials)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return PRUNERS[self.pruner_name]()

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "proxy": self.proxy.to_dict(),
            "objectives": list(self.objectives),
            "warm_start": list(self.warm_start),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "branch search config") -> BranchSearchConfig:
        return config_from_dict(cls, data, source)


@dataclass(frozen=True)
class Setup:
    """How another process rebuilds the data and search space (recorded in the study for workers).

    Args:
        dataset: registry name; ``dataset_kwargs``: its options; space: search-space file path or name.
    """

    dataset: str
    dataset_kwargs: Mapping[str, Any]
    space: str

    @classmethod
    def of(cls, data: MultiTaskData, space: SearchSpace) -> Setup | None:
        """How to rebuild ``data`` and ``space`` in another process; None when either was not made from a
        registry name and a file (data built in Python, a space not loaded from a file)."""
        if data.origin is None or not Path(space.source).is_file():
            return None
        dataset = resolve_reference(data.origin["dataset"], Path.cwd())  # a FILE.py as another process finds it
        return cls(dataset, dict(data.origin["kwargs"]), str(Path(space.source).resolve()))

    def build(self, trusted: Collection[str] = (), source: str = "study record") -> tuple[MultiTaskData, SearchSpace]:
        """The data and space, for a process that read this setup from a record (a storage): the dataset and
        the space's backbone must be registered or listed in ``trusted`` (code references its user typed)."""
        DATASETS.check_stored(self.dataset, f"{source}: setup.dataset", trusted)
        data = create_dataset(self.dataset, **dict(self.dataset_kwargs))
        return data, load_search_space(self.space, input_shape=data.input_shape, trusted=tuple(trusted))

    def references(self, config: BranchSearchConfig) -> tuple[str, ...]:
        """The code references (the user's, typed in the search's own process) that a worker rebuilding this
        setup and ``config``'s proxy runs: what the search passes its workers as ``--trust``."""
        balancer = parse_balancer(config.proxy.balancer)[0]
        names = [
            self.dataset if self.dataset not in DATASETS else None,
            backbone_reference(self.space),
            balancer if balancer not in BALANCERS else None,
        ]
        return tuple(resolve_reference(n, Path.cwd()) for n in names if n is not None and is_reference(n))


# ---------------------------------------------------------------------- one trial
class _OverBudget(Exception):
    """This trial was created after the budget had been claimed by others, or its tree does not fit
    :attr:`BranchSearchConfig.budget` (it ends as FAIL)."""


class _QuietBudgetEnd(logging.Filter):
    """Drops Optuna's two warnings (with a traceback) about a trial that ended as :class:`_OverBudget`: the end of
    a budget, not an error."""

    def __init__(self) -> None:
        super().__init__()
        self.next_of: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "because of the following error: _OverBudget(" in message:
            self.next_of.add(message.split(" failed ")[0])  # "Trial N"
            return False
        head = message.split(" failed with value ")[0]
        if head in self.next_of:
            self.next_of.discard(head)
            return False
        return True


logging.getLogger("optuna.study._optimize").addFilter(_QuietBudgetEnd())


def _worker_id() -> str:
    """``host:pid:thread``, recorded on every trial a worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


@dataclass(frozen=True, eq=False)
class TreeObjective:
    """The Optuna objective: sample a tree, reuse an equal tree's score if the study has one, else score it."""

    study: optuna.Study
    scorer: Scorer
    tasks: tuple[str, ...]
    layers: tuple[str, ...]
    branchable: tuple[str, ...]
    config: BranchSearchConfig
    worker: str = field(default_factory=_worker_id)
    costs: CostModel | None = None

    def __call__(self, trial: Trial) -> float | list[float]:
        trials = self.study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in trials) >= self.config.n_trials:
            trial.set_user_attr("over_budget", True)
            self.study.stop()
            raise _OverBudget(f"trial {trial.number}: the budget of {self.config.n_trials} trials is claimed")
        graph = suggest_tree(trial, self.tasks, self.layers, self.branchable)
        key = graph_key(graph)
        trial.set_user_attr("key", key)
        trial.set_user_attr("worker", self.worker)
        owner = self._owner(trial.number, key)
        if owner is not None:
            trial.set_user_attr("duplicate_of", owner.number)
            if owner.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"tree {key} was pruned in trial {owner.number}")
            assert owner.values is not None
            return owner.values[0] if len(owner.values) == 1 else list(owner.values)
        if self.config.budget is not None:
            self._claim_budget(trial, graph)
        report = None if self.config.multi_objective else functools.partial(_report, trial)
        score = self.scorer.score(graph, report)
        trial.set_user_attr("score", score.to_dict())
        values = [score.objective(o) for o in self.config.objectives]
        return values[0] if len(values) == 1 else values

    def _claim_budget(self, trial: Trial, graph: SharingGraph) -> None:
        """Record this tree's cost on ``trial``, or end the search when it does not fit :attr:`~BranchSearchConfig
        .budget` beside what was spent and the shortlist of the best trees so far."""
        assert self.costs is not None and self.config.budget is not None
        cost = self.costs.proxy_trial(graph, self.config.proxy)
        spent = spent_budget(self.study)  # this trial has no cost recorded yet
        reserve = sum(
            self.costs.training(graph_from_key(k, self.tasks, self.layers), self.config.shortlist_epochs)
            for k in _best_keys(self.study.get_trials(deepcopy=False), self.config.shortlist)
        )
        if spent + cost + reserve > self.config.budget:
            trial.set_user_attr("over_budget", True)
            self.study.set_user_attr(BUDGET_SPENT_ATTR, True)
            self.study.stop()
            raise _OverBudget(
                f"trial {trial.number}: tree cost {cost:.2f} + spent {spent:.2f} + shortlist {reserve:.2f} exceeds "
                f"the budget of {self.config.budget} hard-sharing trainings"
            )
        trial.set_user_attr("cost", cost)

    def _owner(self, number: int, key: str) -> FrozenTrial | None:
        """A finished trial with the same tree; waits while an earlier trial is still scoring it."""
        deadline = time.monotonic() + self.config.duplicate_wait_s
        while True:
            same = [
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.number != number and t.user_attrs.get("key") == key
            ]
            done = [t for t in same if t.state in FINISHED]
            if done:
                return min(done, key=lambda t: t.number)
            if not any(t.state == TrialState.RUNNING and t.number < number and _alive(t) for t in same):
                return None  # nobody (alive) is scoring it: score it here
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)


def _best_keys(trials: Sequence[FrozenTrial], n: int) -> list[str]:
    """The ``n`` best distinct trees of the finished single-objective ``trials`` (highest Δm first)."""
    keys: dict[str, None] = {}
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and "key" in t.user_attrs]
    for t in sorted(done, key=lambda t: (-t.values[0], t.number)):
        keys.setdefault(t.user_attrs["key"])
    return list(keys)[:n]


def _alive(trial: FrozenTrial) -> bool:
    """Whether the worker running ``trial`` may still be alive: False only for a process of this machine that is
    gone (or a zombie, killed and not yet reaped); workers elsewhere are left to the storage's heartbeat."""
    host, _, rest = str(trial.user_attrs.get("worker", "")).partition(":")
    pid = rest.split(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a killed child its parent has not waited for yet is a zombie ("Z") but still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _report(trial: Trial, epoch: int, value: float) -> None:
    trial.report(value, epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"Δm {value:.3f} after fine-tuning epoch {epoch}")


class _StopWhenClaimed:
    """Callback: stop this worker once ``n_trials`` trials are running or finished in the study; raise after
    ``max_failures`` consecutive failed trials of this worker (a bug, not a bad tree)."""

    def __init__(self, n_trials: int, max_failures: int = 3) -> None:
        self.n_trials, self.max_failures, self.failures = n_trials, max_failures, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and not trial.user_attrs.get("over_budget")
        self.failures = self.failures + 1 if failed else 0
        if self.failures >= self.max_failures:
            raise RuntimeError(f"{self.failures} trials in a row failed (last: {trial.number}); see the warnings above")
        if len(study.get_trials(deepcopy=False, states=CLAIMED)) >= self.n_trials or study.user_attrs.get(
            BUDGET_SPENT_ATTR
        ):
            study.stop()


def _optimize(objective: TreeObjective, wait: bool = False, on_wait: Callable[[], object] = lambda: None) -> int:
    """Run trials until the study's budget is claimed and no trial runs anywhere; returns how many trials this
    process ran.

    With ``wait`` (storages with heartbeats), it waits while other processes' trials run, calling ``on_wait``
    between looks: a trial whose worker dies stops its heartbeats, and after the grace period
    :func:`optuna.storages.fail_stale_trials` (here, or in any other process) fails it, which frees its place in
    the budget for a trial run here. So a search (or a joined worker) never ends with a dead worker's trial
    RUNNING, and a worker joining after the grace period fails such a trial and reruns its place.
    """
    study, n = objective.study, objective.config.n_trials
    before = sum(t.user_attrs.get("worker") == objective.worker for t in study.get_trials(deepcopy=False))
    while True:
        fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        spent = bool(study.user_attrs.get(BUDGET_SPENT_ATTR))
        if not spent and (waiting or sum(t.state in CLAIMED for t in trials) < n):
            study.optimize(
                objective,
                callbacks=[_StopWhenClaimed(n)],
                catch=(_OverBudget, FloatingPointError),
                gc_after_trial=False,
            )
        elif wait and any(t.state == TrialState.RUNNING for t in trials):
            on_wait()
            time.sleep(POLL_S)
        else:
            break
    return sum(t.user_attrs.get("worker") == objective.worker for t in study.get_trials(deepcopy=False)) - before


# ---------------------------------------------------------------------- search
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
    with _WorkerProcesses(url, config, workers, Path(run_dir), trusted) as procs:
        _optimize(objective, heartbeats(url), lambda: procs.fail_orphans(objective.study))
    if procs.fail_orphans(objective.study):  # a worker died mid-trial: its trials go back into the budget, run here
        _optimize(objective, heartbeats(url))
    stale = [*stale, *procs.orphans]
    # the search's cost over all its sessions (a resumed study adds this session's wall time to the record)
    before = float(objective.study.user_attrs.get(SECONDS_ATTR, 0.0))
    total = before + time.perf_counter() - t0
    objective.study.set_user_attr(SECONDS_ATTR, total)
    result = _result(objective, url, total, stale)
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


def plot_history(study: optuna.Study, path: str | Path) -> None:
    """Δm per trial (finished; pruned at their last report) and best so far, to ``path`` (PNG)."""
    from ..plots import history_plot

    trials = study.get_trials(deepcopy=False)
    complete = [(t.number, t.values[0]) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [
        (t.number, t.intermediate_values[max(t.intermediate_values)])
        for t in trials
        if t.state == TrialState.PRUNED and t.intermediate_values
    ]
    history_plot(complete, pruned, "Δm (%)", f"Optuna study {study.study_name!r}", path)


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
    study = optuna.create_study(
        storage=storage, study_name=config.study_name, directions=config.directions, load_if_exists=True
    )
    record = _check_record(study, data, space, config)
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
    stale = _fail_running(study, storage)
    study = _attach(config.study_name, storage, config, config.seed)
    objective = TreeObjective(study, scorer, data.task_names, space.layers, space.branchable, config, costs=costs)
    return objective, url, stale


def warm_start_trees(
    data: MultiTaskData, space: SearchSpace, config: BranchSearchConfig, run_dir: Path
) -> dict[str, SharingGraph]:
    """The trees of ``config.warm_start`` by name (see :class:`BranchSearchConfig`; ``rsa`` gives ``rsa@LAYER``
    per branchable layer); ``affinity`` runs the affinity search in ``run_dir/affinity``, ``rsa`` in
    ``run_dir/rsa`` (both resumable)."""
    tasks, trees = data.task_names, {}
    if not space.branchable and any(w in ("independent", "affinity", "rsa") for w in config.warm_start):
        raise ValueError(f"warm_start: search space {space.name!r} has no branchable layer")
    for name in config.warm_start:
        if name == "hard":
            trees[name] = space.hard_sharing(tasks)
        elif name == "independent":
            at = space.layers.index(space.branchable[0])
            trees[name] = SharingGraph.from_groups(tasks, space.layers, [[t] for t in tasks], at, space.skippable)
        elif name == "affinity":
            from .affinity import AffinityConfig, affinity_search

            affinity = AffinityConfig(train=config.proxy.warmstart, branch_at=space.branchable[0], plots=False)
            trees[name] = affinity_search(data, space, affinity, run_dir / "affinity").graph
        elif name == "rsa":
            from .affinity import AffinityConfig, affinity_search

            rsa = AffinityConfig(train=config.proxy.warmstart, measures=("rsa",), plots=False)
            groups = affinity_search(data, space, rsa, run_dir / "rsa").info["measures"]["rsa"]["groups"]
            for layer in space.branchable:
                at = space.layers.index(layer)
                trees[f"rsa@{layer}"] = SharingGraph.from_groups(tasks, space.layers, groups, at, space.skippable)
        else:
            trees[name] = SharingGraph.load(name)
    return trees


def spent_budget(study: optuna.Study) -> float:
    """Hard-sharing trainings ``study`` has spent: its set-up and every tree scored (claimed trials' costs)."""
    trials = study.get_trials(deepcopy=False, states=CLAIMED)
    return float(study.user_attrs.get(SETUP_COST_ATTR, 0.0)) + sum(float(t.user_attrs.get("cost", 0)) for t in trials)


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


def warm_start_cost(costs: CostModel, config: BranchSearchConfig) -> float:
    """Units the warm start's affinity runs spend: ``rsa`` trains each task alone, ``affinity`` one hard-sharing
    network whose every step also takes a lookahead step and loss per task (counted as one more training per
    task, an upper bound)."""
    epochs = config.proxy.warmstart.epochs
    hard = costs.space.hard_sharing(costs.data.task_names)
    cost = costs.singles(epochs) if "rsa" in config.warm_start else 0.0
    if "affinity" in config.warm_start:
        cost += costs.training(hard, epochs) * (1 + len(costs.data.task_names))
    return cost


def run_worker(
    storage: str,
    study_name: str,
    run_dir: str | Path,
    seed: int | None = None,
    trusted: Collection[str] = (),
) -> int:
    """Join the branch-search study ``study_name`` in ``storage`` and run trials until its budget is claimed.

    Everything else (data, space, proxy, budget) comes from the study; the warm start is loaded from (or
    trained into) ``run_dir``, which the caller names (a storage record never says where a worker writes; the
    search's own folder, recorded as ``run_dir`` in the study, is the usual choice). Returns the trials run here.
    The record is data: its dataset, space backbone and balancer must be registered names (or installed entry
    points), or code references listed in ``trusted`` (``nas-mtl worker --trust``).
    """
    handle = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=handle)
    except KeyError:  # optuna: "Record does not exist."
        known = [s.study_name for s in optuna.get_all_study_summaries(handle)]
        raise ValueError(f"study {study_name!r} not found in {redact(storage)!r}; studies there: {known}") from None
    record = study.user_attrs.get(STUDY_ATTR)
    if not isinstance(record, Mapping) or record.get("format") != STUDY_FORMAT:
        raise ValueError(f"study {study_name!r} in {redact(storage)!r} was not created by nas-mtl search branch")
    if record.get("setup") is None:
        raise ValueError(
            f"study {study_name!r} records no dataset setup (started from Python without setup=); workers cannot join"
        )
    source = f"study {study_name!r} in {redact(storage)!r}"
    raw = record.get("config")
    proxy = raw.get("proxy") if isinstance(raw, Mapping) else None
    if isinstance(proxy, Mapping) and "balancer" in proxy:  # before the config, whose checks build the balancer
        check_stored_balancer(proxy["balancer"], f"{source}: config.proxy.balancer", trusted)
    config = BranchSearchConfig.from_dict(raw, f"{source}: config")
    setup = record["setup"]
    if not isinstance(setup, Mapping) or set(setup) != {f.name for f in dataclasses.fields(Setup)}:
        raise ValueError(f"{source}: setup: expected a table with dataset, dataset_kwargs and space")
    data, space = Setup(**setup).build(trusted, source)
    _check_record(study, data, space, config)
    study = _attach(study_name, handle, config, seed)
    reference = record.get("reference")
    if reference is not None and not _is_metric_table(reference):
        raise ValueError(f"{source}: reference: expected {{task: {{metric: number}}}} or null")
    proxy = Proxy.prepare(data, space, config.proxy, run_dir, reference=reference)
    costs = CostModel(data, space, config.shortlist_epochs)
    objective = TreeObjective(study, proxy, data.task_names, space.layers, space.branchable, config, costs=costs)
    return _optimize(objective, heartbeats(storage))


def study_storage(config: BranchSearchConfig, run_dir: str | Path) -> str:
    """The storage spec a branch search in ``run_dir`` opens: ``config.storage``, else ``RUN_DIR/study.db``."""
    return config.storage or sqlite_url(Path(run_dir) / "study.db")


def _is_metric_table(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(m, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in m.values())
        for m in value.values()
    )


def heartbeats(storage: str) -> bool:
    """Whether the storage (spec) records heartbeats (RDB storages; a journal file does not)."""
    return not resolve(storage).startswith("journal:")


def _attach(study_name: str, storage: BaseStorage, config: BranchSearchConfig, seed: int | None) -> optuna.Study:
    """The study with this session's pruner and sampler, seeded by ``seed`` and the number of trials so far
    (a resumed run must not redraw the proposals of its first session)."""
    n = len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    mixed = None if seed is None else int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
    return optuna.load_study(
        study_name=study_name, storage=storage, sampler=config.make_sampler(mixed), pruner=config.make_pruner()
    )


def _check_record(
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


def _fail_running(
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


class _WorkerProcesses:
    """Context manager: ``n - 1`` ``nas-mtl worker`` subprocesses (logs in RUN_DIR/workers/), joined on exit;
    stopped if this process fails. Each process gets ``cpu_count // n`` torch threads. A worker that dies (killed,
    or an error) is reported with a warning, not as a failure of the search: :meth:`fail_orphans` then fails the
    trial it left RUNNING so that this process runs it again."""

    def __init__(
        self, url: str, config: BranchSearchConfig, n: int, run_dir: Path, trusted: Sequence[str] = ()
    ) -> None:
        self.url, self.config, self.n, self.run_dir, self.trusted = url, config, n, run_dir, tuple(trusted)
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.failed: list[tuple[subprocess.Popen, int, Path]] = []
        self.orphans: list[int] = []
        self.threads = torch.get_num_threads()

    def __enter__(self) -> _WorkerProcesses:
        if self.n == 1:
            return self
        share = max(1, (os.cpu_count() or 1) // self.n)
        torch.set_num_threads(share)
        (self.run_dir / "workers").mkdir(exist_ok=True)
        for k in range(1, self.n):
            log = self.run_dir / "workers" / f"worker-{k}.log"
            cmd = [
                sys.executable,
                "-m",
                "nas_mtl.cli",
                "worker",
                "--storage",
                f"env:{CHILD_ENV}",  # the URL (and any password) through the environment, not the command line
                "--study",
                self.config.study_name,
                "--out",
                str(self.run_dir),
                "--seed",
                str(self.config.seed + k),
                "--threads",
                str(share),
                "--exit-with-parent",
                *(arg for name in self.trusted for arg in ("--trust", name)),
            ]
            env = {**os.environ, CHILD_ENV: resolve(self.url)}
            with log.open("w") as fh:
                self.procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), log))
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        torch.set_num_threads(self.threads)
        if exc_type is not None:
            for proc, _log in self.procs:
                proc.terminate()
        self.failed = [(proc, rc, log) for proc, log in self.procs if (rc := proc.wait()) != 0]
        for _proc, rc, log in self.failed if exc_type is None else ():
            how = f"was killed (signal {-rc})" if rc < 0 else f"exited with code {rc}"
            warnings.warn(
                f"branch search: worker {how} (log {log}); its running trial is failed and the budget completed "
                "by this process",
                stacklevel=2,
            )

    def fail_orphans(self, study: optuna.Study) -> list[int]:
        """Mark FAIL the trials that workers which died (so far) left RUNNING (they would count against the budget);
        returns their numbers (all of them are kept in :attr:`orphans`)."""
        dead = tuple(f"{socket.gethostname()}:{proc.pid}:" for proc, _log in self.procs if proc.poll() not in (None, 0))
        if not dead:
            return []
        failed = _fail_running(
            study, study._storage, of=lambda t: str(t.user_attrs.get("worker", "")).startswith(dead), why="worker_died"
        )
        self.orphans += failed
        return failed


def _result(objective: TreeObjective, url: str, seconds: float, stale: list[int]) -> SearchResult:
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
