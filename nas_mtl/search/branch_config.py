"""The branch search's settings: :class:`BranchSearchConfig` (samplers, pruners, warm starts, budget) and
:class:`Setup` (how a worker process rebuilds the data and search space). See :mod:`nas_mtl.search.branching`."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning

from ..balancing.base import BALANCERS, parse_balancer
from ..config import config_from_dict, nested, option
from ..data import MultiTaskData, create_dataset
from ..data.base import DATASETS
from ..registry import is_reference, resolve_reference
from ..space import SearchSpace, backbone_reference, load_search_space
from .proxy import OBJECTIVES, ProxyConfig

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
        progress: print one line per finished trial (its proxy Δm, the best so far, its tree in words). Optuna's
            own INFO lines are not printed either way.
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
    progress: bool = False

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
        if not isinstance(self.progress, bool):
            raise ValueError(f"branch search config: progress must be true or false, got {self.progress!r}")
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


__all__ = ["PRUNERS", "SAMPLERS", "WARM_STARTS", "BranchSearchConfig", "Setup"]
