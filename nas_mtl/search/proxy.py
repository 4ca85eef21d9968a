"""Candidate scoring shared by branch search and exhaustive search: a short training, validation Δm.

By default (``inherit = False``) every candidate is trained from scratch for ``finetune.epochs`` on a fixed
``subset`` of the training set (a third), as Standley et al. (2020) estimate a network's final quality from a
short training: on the families benchmark (benchmarks/families_fidelity.py, 24 trees, 2 seeds) 20 of the
retrain's 30 epochs on a third of the data rank trees like the retrain at Spearman 0.91 [0.78, 0.95] and put the
planted tree second or third, at 0.29 of a retrain per tree, where the inheriting proxy below reached 0.76 and
put it below independent networks (what sharing gives there shows only near convergence). Set ``proxy_epochs``
to about two thirds of the epochs the answer will be trained for.

With ``inherit = True`` the proxy follows the inheritance protocol of weight-sharing evolutionary NAS (Elsken et al.,
"Efficient Multi-Objective Neural Architecture Search via Lamarckian Evolution", ICLR 2019): a hard-sharing
network is trained once; every candidate graph starts as a copy of it (each branch copy inherits the
trunk block its tasks ran in, :class:`~nas_mtl.network.MultiTaskNetwork` ``inherit=``) and is fine-tuned
for a few epochs; its score is Δm (Maninis et al. 2019, Eq. 5) of the validation metrics against a
reference. The score is a deterministic function of the graph (same seed, same data order for every
candidate: common random numbers, so differences between candidates are not shuffling noise), which
makes deduplication exact and lets a search be compared with the exhaustive ground truth tree by tree.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..balancing import create_balancer
from ..baselines import primary_directions, train_graph, train_single_tasks
from ..config import config_from_dict, nested, option
from ..data import MultiTaskData, TensorMultiTaskDataset
from ..graph import SharingGraph, graph_from_key, graph_key
from ..metrics import delta_m
from ..network import MultiTaskNetwork
from ..space import SearchSpace
from ..train import Metrics, StepContext, TrainConfig, evaluate, resolve_device, seed_everything, train

REFERENCES = ("single", "hard")
OBJECTIVES = {"delta_m": "maximize", "params": "minimize", "macs": "minimize"}
"""Objective name -> Optuna direction; ``params`` / ``macs`` are the exact cost of the candidate."""

Report = Callable[[int, float], None]
"""``report(epoch, delta_m)`` after every fine-tuning epoch but the last; may raise to stop (pruning)."""


PROXY_TRAIN = ("epochs", "batch_size", "lr", "seed", "device", "precision")
"""The training options a proxy exposes: epochs for each phase; batch size, lr, seed, device and precision for both."""


@dataclass(frozen=True)
class ProxyConfig:
    """How candidates are scored.

    Args:
        warmstart: training of the hard-sharing network every candidate inherits from (and of the
            single-task references when ``reference="single"``).
        finetune: the per-candidate training (``epochs`` >= 1, default 7: two thirds of the default training's
            10; its ``seed`` is shared by all candidates).
        reference: what Δm is measured against: ``"single"`` = single-task networks trained with
            ``warmstart`` (the definition of Δm used by the baselines, T extra trainings once);
            ``"hard"`` = the warm-start model's own validation metrics (no extra training; Δm then reads
            "gain over hard sharing", a per-task re-weighting of the same quantity).
        subset: fraction of the training set each candidate trains on (a fixed random subset; default a third).
        balancer: loss balancer (a name, or NAME:KEY=VALUE,...) for all proxy training.
        inherit: False (default): every candidate trains from scratch with ``finetune`` on ``subset``, and the
            reference networks are trained so too, so Δm compares like with like; no warm start is trained
            (``warmstart`` then only trains a warm start's affinity run). True: candidates start from the
            warm start's weights (Elsken et al. 2019's inheritance, below).
    """

    warmstart: TrainConfig = nested(
        TrainConfig(epochs=5),
        only=PROXY_TRAIN,
        rename={"epochs": "warmstart_epochs"},
        helps={
            "warmstart_epochs": "epochs of the hard-sharing warm start",
            "seed": "training seed (and the sampler seed of a tree search)",
        },
    )
    finetune: TrainConfig = nested(
        TrainConfig(epochs=7),
        only=PROXY_TRAIN,
        rename={"epochs": "proxy_epochs"},
        helps={"proxy_epochs": "training (or, inheriting, fine-tuning) epochs per candidate"},
    )
    reference: str = option("single", choices=REFERENCES)
    subset: float = 1 / 3
    balancer: str = "equal"
    inherit: bool = False

    def __post_init__(self) -> None:
        for name in ("warmstart", "finetune"):
            if not isinstance(getattr(self, name), TrainConfig):
                raise TypeError(f"proxy config: {name} must be a TrainConfig, got {type(getattr(self, name)).__name__}")
        if self.finetune.epochs < 1:
            raise ValueError(f"proxy config: finetune.epochs must be >= 1, got {self.finetune.epochs}")
        if self.reference not in REFERENCES:
            raise ValueError(f"proxy config: reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        if not isinstance(self.inherit, bool):
            raise ValueError(f"proxy config: inherit must be true or false, got {self.inherit!r}")
        if isinstance(self.subset, bool) or not isinstance(self.subset, (int, float)) or not 0 < self.subset <= 1:
            raise ValueError(f"proxy config: subset must be a fraction in (0, 1], got {self.subset!r}")
        try:
            create_balancer(self.balancer)  # a name or a spec such as "mgda:normalization=l2"
        except (TypeError, ValueError) as err:
            raise ValueError(f"proxy config: balancer: {err}") from None

    def seeded(self, number: int) -> ProxyConfig:
        """This config for seed number ``number`` of a seeded ground truth: the warm-start and fine-tuning seeds
        (hence the warm start, the fine-tuning order and the fine-tuning subset) moved on by ``number``."""
        if number == 0:
            return self
        return dataclasses.replace(
            self,
            warmstart=dataclasses.replace(self.warmstart, seed=self.warmstart.seed + number),
            finetune=dataclasses.replace(self.finetune, seed=self.finetune.seed + number),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "proxy config") -> ProxyConfig:
        return config_from_dict(cls, data, source)


@dataclass(frozen=True)
class Score:
    """A candidate's proxy score.

    Args:
        delta_m: validation Δm (%) after fine-tuning, vs the proxy's reference.
        curve: validation Δm after each fine-tuning epoch (the last entry is ``delta_m``).
        val: validation metrics after fine-tuning; ``test`` likewise (recorded, never optimised).
        params: exact parameter count; ``macs``: exact per-sample MACs (heads included).
        seconds: wall time of building, fine-tuning and evaluating the candidate.
    """

    delta_m: float
    curve: tuple[float, ...]
    val: Metrics
    test: Metrics
    params: int
    macs: int
    seconds: float

    def objective(self, name: str) -> float:
        """The value of objective ``name`` (one of :data:`OBJECTIVES`)."""
        if name not in OBJECTIVES:
            raise ValueError(f"objective: unknown {name!r}; allowed: {list(OBJECTIVES)}")
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "curve": list(self.curve)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        return cls(**{**data, "curve": tuple(data["curve"])})


class Scorer(Protocol):
    """Anything that scores graphs: the real :class:`Proxy`, or a table of stored scores."""

    def score(self, graph: SharingGraph, report: Report | None = None) -> Score: ...


@dataclass(frozen=True, eq=False)
class Proxy:
    """The warm-start proxy, ready to score graphs of ``space``; build it with :meth:`prepare`.

    Args:
        network: the trained hard-sharing network candidates inherit from (None: ``config.inherit`` is False).
        reference: ``{task: {primary metric: value}}`` Δm is measured against.
    """

    data: MultiTaskData
    space: SearchSpace
    config: ProxyConfig
    network: MultiTaskNetwork | None
    reference: Metrics
    _train_data: MultiTaskData = field(repr=False)
    setup_seconds: float = 0.0
    """Training time of the warm start and the single-task references (over all sessions of the run folder)."""

    @classmethod
    def prepare(
        cls,
        data: MultiTaskData,
        space: SearchSpace,
        config: ProxyConfig,
        run_dir: str | Path,
        reference: Metrics | None = None,
    ) -> Proxy:
        """Train (or resume / reload) the warm start in ``run_dir/warmstart`` and the references in
        ``run_dir/single``; a given ``reference`` (e.g. the one a study recorded) is used as is. Without
        ``config.inherit`` no warm start is trained, and the references train with ``config.finetune`` on the
        fine-tuning subset, as every candidate does."""
        run_dir = Path(run_dir)
        balancer = create_balancer(config.balancer)
        directions = primary_directions(data)
        train_data = _subset(data, config)
        network, seconds, val = None, 0.0, None
        if config.inherit or (reference is None and config.reference == "hard"):
            hard = space.hard_sharing(data.task_names).with_meta(name="warmstart")
            how, on = (config.warmstart, data) if config.inherit else (config.finetune, train_data)
            trained, result = train_graph(hard, on, space, how, balancer, run_dir / "warmstart")
            network = trained if config.inherit else None
            seconds, val = result.train_seconds, result.val
        if reference is None:
            if config.reference != "hard":
                how, on = (config.warmstart, data) if config.inherit else (config.finetune, train_data)
                singles = train_single_tasks(on, space, how, run_dir / "single", balancer)
                val = {t: res.val[t] for t, (_, res) in singles.items()}
                seconds += sum(res.train_seconds for _, res in singles.values())
            reference = {t: {m: float(val[t][m]) for m in d} for t, d in directions.items()}
        missing = sorted(set(directions) - set(reference))
        if missing:
            raise ValueError(f"proxy reference: no metrics for task(s) {missing}")
        return cls(data, space, config, network, dict(reference), train_data, seconds)

    def delta_m(self, metrics: Metrics) -> float:
        """Δm (%) of ``metrics`` against the reference, over each task's primary metric."""
        return delta_m(metrics, self.reference, primary_directions(self.data))

    def _val_delta_m(self, network: MultiTaskNetwork) -> float:
        cfg = self.config.finetune
        metrics = evaluate(network, self.data.val, self.data.tasks, cfg.eval_batch_size, resolve_device(cfg.device))
        return self.delta_m(metrics)

    def score(self, graph: SharingGraph, report: Report | None = None) -> Score:
        """Inherit from the warm start (or start from scratch), fine-tune, and score ``graph`` (see the module
        doc)."""
        self.space.check_graph(graph)
        t0 = time.perf_counter()
        cfg = self.config.finetune
        seed_everything(cfg.seed)  # the same for every graph: the score is a function of the graph alone
        network = MultiTaskNetwork.from_tasks(
            graph, self.space.backbone, self.data.tasks, inherit=self.network if self.config.inherit else None
        )
        curve: list[float] = []

        def on_step(ctx: StepContext) -> None:
            # the first step of a new epoch scores the previous one. Its forward has already moved the BatchNorm
            # running statistics by one batch; the end-of-epoch validation train() records differs by that, and
            # could replace this extra evaluation, but would change which trials a pruner stops (kept as it was:
            # searches stay bitwise what they were)
            if ctx.epoch > len(curve):
                curve.append(self._val_delta_m(ctx.network))
                if report is not None:
                    report(len(curve), curve[-1])

        # without a pruner (no report) the curve is the validations train() makes after each epoch anyway: the
        # extra evaluation per epoch, as costly as the training itself on a third of the data, is not made
        result = train(
            network,
            self._train_data,
            cfg,
            create_balancer(self.config.balancer),
            desc=graph_key(graph),
            step_hooks=[on_step] if report is not None else [],
        )
        if report is None:
            curve = [self.delta_m(h["val"]) for h in result.history[:-1]]
        curve.append(self.delta_m(result.val))
        cost = network.cost()
        return Score(curve[-1], tuple(curve), result.val, result.test, cost.params, cost.macs, time.perf_counter() - t0)


def check_proxy(data: MultiTaskData, config: ProxyConfig) -> None:
    """ValueError if the proxy cannot train on ``data`` (checked before a study trains anything)."""
    n = len(data.train)
    k = round(config.subset * n)
    if n < config.warmstart.batch_size:
        raise ValueError(f"proxy config: batch_size {config.warmstart.batch_size} exceeds the {n} training samples")
    if k < config.finetune.batch_size:
        raise ValueError(
            f"proxy config: subset {config.subset} keeps {k} of {n} training samples, fewer than "
            f"finetune.batch_size={config.finetune.batch_size} (training drops incomplete batches)"
        )


def _subset(data: MultiTaskData, config: ProxyConfig) -> MultiTaskData:
    """``data`` with a fixed random ``config.subset`` of its training set (at least one batch)."""
    check_proxy(data, config)
    n = len(data.train)
    k = round(config.subset * n)
    if k == n:
        return data
    index = (
        torch.randperm(n, generator=torch.Generator().manual_seed(config.finetune.seed), device="cpu")[:k].sort().values
    )
    if isinstance(data.train, TensorMultiTaskDataset):
        train_set: Any = TensorMultiTaskDataset(*data.train.batch(index))
    else:
        train_set = torch.utils.data.Subset(data.train, index.tolist())
    return dataclasses.replace(data, train=train_set)


__all__ = [
    "OBJECTIVES",
    "PROXY_TRAIN",
    "Proxy",
    "ProxyConfig",
    "REFERENCES",
    "Report",
    "Score",
    "Scorer",
    "graph_from_key",
    "check_proxy",
    "graph_key",
]
