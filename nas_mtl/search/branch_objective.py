"""One trial of a branch search (:class:`TreeObjective`: sample a tree, reuse a duplicate's score, claim its
budget, score it) and the loop that runs trials until the study's budget is claimed (:func:`run_trials`). See
:mod:`nas_mtl.search.branching` for the budget and deduplication rules."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from ..graph import SharingGraph
from ..storage import fail_stale
from .branch_config import BranchSearchConfig
from .branch_study import BUDGET_SPENT_ATTR, CLAIMED, FINISHED, spent_budget
from .branch_trees import suggest_tree
from .budget import CostModel
from .proxy import Scorer, graph_from_key, graph_key

POLL_S = 0.5
"""Seconds between two looks at the study while waiting for another worker's trial."""
TREE_ATTR = "tree"
"""A trial's user attribute: its tree in plain words (:meth:`SharingGraph.describe`); optuna-dashboard shows it
beside the parameters, whose names encode the tree for the sampler (``LAYER:GROUP:TASK@LABELS``)."""
FIGURES = "artifacts"
"""The folder (in the search's) of each trial's topology drawing, an Optuna artifact: ``optuna-dashboard STORAGE
--artifact-dir RUN_DIR/artifacts`` shows it with the trial."""


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
    figures: Path | None = None  # where each scored tree's topology drawing goes (an Optuna artifact); None: none

    def __call__(self, trial: Trial) -> float | list[float]:
        trials = self.study.get_trials(deepcopy=False, states=CLAIMED)
        if sum(t.number < trial.number for t in trials) >= self.config.n_trials:
            trial.set_user_attr("over_budget", True)
            self.study.stop()
            raise _OverBudget(f"trial {trial.number}: the budget of {self.config.n_trials} trials is claimed")
        graph = suggest_tree(trial, self.tasks, self.layers, self.branchable)
        key = graph_key(graph)
        trial.set_user_attr("key", key)
        trial.set_user_attr(TREE_ATTR, graph.describe())
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
        if self.figures is not None:
            try:  # a drawing is for the dashboard: it never costs the trial
                _upload_topology(trial, graph, self.figures)
            except Exception as err:  # matplotlib, a full disk, the artifact store
                warnings.warn(f"trial {trial.number}: topology drawing not stored ({err})", stacklevel=2)
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


def _upload_topology(trial: Trial, graph: SharingGraph, folder: Path) -> None:
    """The tree's drawing as an artifact of ``trial`` in a file store at ``folder``."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from ..plots import draw_topology

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        path = Path(tmp) / f"trial{trial.number}_topology.png"
        draw_topology(graph, f"trial {trial.number}", path)
        upload_artifact(artifact_store=FileSystemArtifactStore(str(folder)), file_path=str(path), study_or_trial=trial)


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


class _TrialLine:
    """Callback: one line per finished trial on stderr (``config.progress``), in place of Optuna's INFO lines."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("over_budget"):
            return
        finished = study.get_trials(deepcopy=False, states=FINISHED)  # over every worker and session
        if trial.state == TrialState.COMPLETE and trial.values:
            done = [t for t in finished if t.state == TrialState.COMPLETE and t.values]
            best = max(done, key=lambda t: (t.values[0], -t.number))
            value = f"proxy Δm {trial.values[0]:+.2f} (best {best.values[0]:+.2f}, trial {best.number})"
        else:
            value = trial.state.name.lower()
        same = trial.user_attrs.get("duplicate_of")
        tree = f"same tree as trial {same}" if same is not None else trial.user_attrs.get(TREE_ATTR, "")
        line = f"branch trial {trial.number} ({len(finished)}/{self.n_trials} finished): {value}; {tree}"
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines (a trial's raw parameters and value) off while trials run: the search's own progress
    line says it readably; Optuna's warnings still show."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def run_trials(objective: TreeObjective, wait: bool = False, on_wait: Callable[[], object] = lambda: None) -> int:
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
            lines = [_TrialLine(n)] if objective.config.progress else []
            with optuna_quiet():
                study.optimize(
                    objective,
                    callbacks=[_StopWhenClaimed(n), *lines],
                    catch=(_OverBudget, FloatingPointError),
                    gc_after_trial=False,
                )
        elif wait and any(t.state == TrialState.RUNNING for t in trials):
            on_wait()
            time.sleep(POLL_S)
        else:
            break
    return sum(t.user_attrs.get("worker") == objective.worker for t in study.get_trials(deepcopy=False)) - before


__all__ = ["FIGURES", "POLL_S", "TREE_ATTR", "TreeObjective", "optuna_quiet", "run_trials"]
