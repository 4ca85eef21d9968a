"""Affinity-based task grouping: measure how tasks interact, group them, build a SharingGraph.

Measures (see :mod:`.affinity_measures`): TAG lookahead affinity and gradient cosine, recorded during
one hard-sharing training run; RSA / linear CKA between single-task networks, layer by layer.
T x T affinities become task groups (:func:`~.grouping.group_tasks`) that branch at one layer
(``SharingGraph.from_groups``, as TAG trains one network per group); layer-wise similarities become
a branched tree (:func:`~.grouping.layerwise_tree`, Vandenhende et al. 2020).

Measured matrices are cached in ``RUN_DIR/affinity/MEASURE.json`` so finished measurements are
reused; the single-task networks of RSA / CKA live (checkpointed) in ``RUN_DIR/single``.

Deviations from the papers:

- TAG (Fifty et al. 2021): the lookahead is the plain SGD step of Eq. 2 (size ``lookahead_lr``, default
  the training lr) whatever the training optimiser (Adam by default), so it is not the update the
  optimiser actually makes; affinities are averaged uniformly over every ``every``-th step. TAG's network
  selection picks *at most* k groups that may *overlap* (a task trained in several groups is served by
  the one with the highest affinity onto it), by branch and bound; here groups are a partition into
  exactly k (or the best-scoring k) groups, because a SharingGraph gives each task one path, and a task
  alone scores 0. TAG trains one network per group; here groups branch at ``branch_at`` (in
  ``resnet_small`` the stem is not branchable, so it stays shared).
- Vandenhende et al. (2020): RSA is taken at every block output (flattened) on ``probe_size`` validation
  images, from single-task networks trained from scratch with the same seed (the paper: ImageNet-pretrained
  networks, a few chosen locations). The tree minimises the paper's summed clustering cost under a
  parameter budget; ``min_split`` and the groups from the layer-averaged similarity are additions, as is
  linear CKA (Kornblith et al. 2019) as an alternative to RSA.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..balancing import create_balancer
from ..baselines import train_graph, train_single_tasks
from ..config import nested, option
from ..data import MultiTaskData, data_fingerprint, iterate_batches
from ..graph import SharingGraph
from ..runs import check_settings, read_json, write_json_atomic
from ..space import SearchSpace
from ..train import TrainConfig
from . import SearchMethod, SearchResult, register_search_method
from .affinity_measures import (
    REPRESENTATION_MEASURES,
    TRAINING_MEASURES,
    AffinityRecorder,
    layer_features,
    layer_similarity,
)
from .grouping import (
    GROUPING_METHODS,
    Groups,
    check_grouping_args,
    check_params_budget,
    group_tasks,
    layerwise_tree,
)

MEASURES = TRAINING_MEASURES + REPRESENTATION_MEASURES
AFFINITY_DIR = "affinity"


@dataclass(frozen=True, eq=False)
class AffinityResult:
    """One measured task affinity.

    Args:
        measure: one of :data:`MEASURES`.
        tasks: task names, the order of every matrix axis.
        matrix: (T, T) affinity, higher = better together; ``matrix[i, j]`` is i's effect on j for
            lookahead, symmetric otherwise. For RSA / CKA, the mean of ``layers`` over layers.
        seconds: wall time of the measurement, including the training it needed.
        overhead_seconds: the part spent measuring (hooks, features), not training.
        samples: measured training steps (lookahead, gradcos) or probe images (RSA, CKA).
        layers: (L, T, T) per-layer similarity (RSA, CKA), else None.
        layer_names: the backbone blocks of ``layers``.
        history: (E, T, T) per-epoch averages (lookahead, gradcos), else None.
        settings: what the measurement depended on (a cache is reused only for equal settings).
    """

    measure: str
    tasks: tuple[str, ...]
    matrix: np.ndarray
    seconds: float
    overhead_seconds: float
    samples: int
    layers: np.ndarray | None = None
    layer_names: tuple[str, ...] = ()
    history: np.ndarray | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "tasks": list(self.tasks),
            "matrix": self.matrix.tolist(),
            "seconds": self.seconds,
            "overhead_seconds": self.overhead_seconds,
            "samples": self.samples,
            "layers": None if self.layers is None else self.layers.tolist(),
            "layer_names": list(self.layer_names),
            "history": None if self.history is None else self.history.tolist(),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AffinityResult:
        def array(key: str) -> np.ndarray | None:
            return None if data.get(key) is None else np.asarray(data[key], dtype=float)

        return cls(
            data["measure"],
            tuple(data["tasks"]),
            np.asarray(data["matrix"], dtype=float),
            float(data["seconds"]),
            float(data["overhead_seconds"]),
            int(data["samples"]),
            array("layers"),
            tuple(data.get("layer_names", ())),
            array("history"),
            data.get("settings", {}),
        )


@dataclass(frozen=True)
class AffinityConfig:
    """Settings of an affinity search.

    Args:
        train: the hard-sharing run that lookahead and gradcos are recorded in, and the single-task networks
            rsa and cka compare.
        measures: affinity measures (lookahead, gradcos, rsa, cka; comma-separated); the first gives the graph.
        k: number of task groups (none: the best-scoring number).
        grouping: how affinities become groups.
        branch_at: branchable layer (name or index) where groups split (none: the first branchable one).
        params_budget: rsa/cka trees: max backbone params in units of one backbone (1 = hard sharing).
        min_split: rsa/cka trees: split a branch only where two tasks differ by more than this.
        every: lookahead/gradcos: measure every N training steps.
        lookahead_lr: lookahead SGD step (none: the training lr).
        probe_size: rsa/cka: validation images compared.
        balancer: loss balancer (a name, or NAME:KEY=VALUE,...) of the hard-sharing run.
        plots: write the heatmap / dendrogram PNGs.
    """

    train: TrainConfig = nested(TrainConfig(epochs=5))
    measures: tuple[str, ...] = option(("lookahead",), key="measure")
    k: int | None = None
    grouping: str = option("auto", choices=GROUPING_METHODS)
    branch_at: int | str | None = None
    params_budget: float = 2.0
    min_split: float = 0.0
    every: int = 1
    lookahead_lr: float | None = None
    probe_size: int = 200
    balancer: str = "equal"
    plots: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"affinity: train must be a TrainConfig, got {type(self.train).__name__}")
        measures = self.measures
        if isinstance(measures, str) or not measures or any(m not in MEASURES for m in measures):
            raise ValueError(f"affinity: measures must be a non-empty list from {list(MEASURES)}, got {measures!r}")
        object.__setattr__(self, "measures", tuple(measures))
        probe = self.probe_size
        if isinstance(probe, bool) or not isinstance(probe, int) or probe < 3:
            raise ValueError(f"affinity: probe_size must be an integer >= 3, got {probe!r}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"affinity: every must be an integer >= 1, got {self.every!r}")
        check_params_budget(self.params_budget)
        try:
            create_balancer(self.balancer)
        except (TypeError, ValueError) as err:
            raise ValueError(f"affinity: balancer: {err}") from None


def measure_affinity(
    data: MultiTaskData,
    space: SearchSpace,
    config: AffinityConfig,
    run_dir: str | Path,
    measure: str = "lookahead",
) -> AffinityResult:
    """Measure one task affinity, or load it from ``run_dir/affinity/MEASURE.json``.

    "lookahead" and "gradcos" come from one hard-sharing training run (``config.train`` and
    ``config.balancer``) with an :class:`~.affinity_measures.AffinityRecorder` hook measuring every
    ``config.every`` steps with lookahead step ``config.lookahead_lr`` (default: the training lr); both are
    cached from that one run. The run itself is not checkpointed (a killed measurement starts over). "rsa"
    and "cka" train one network per task (``run_dir/single``, resumable) and compare their block outputs on
    the first ``config.probe_size`` validation images.
    """
    if measure not in MEASURES:
        raise ValueError(f"affinity: measure must be one of {list(MEASURES)}, got {measure!r}")
    train, every, probe_size, balancer = config.train, config.every, config.probe_size, config.balancer
    lookahead_lr = config.lookahead_lr
    folder = Path(run_dir) / AFFINITY_DIR
    training = measure in TRAINING_MEASURES
    settings: dict[str, Any] = {
        "data": data_fingerprint(data),
        "tasks": list(data.task_names),
        "config": train.identity(),
    }
    lr = train.lr if lookahead_lr is None else lookahead_lr
    if training:
        settings |= {"every": every, "lookahead_lr": lr, "balancer": balancer}
    else:
        settings["probe_size"] = probe_size
    cached = _load_cached(folder / f"{measure}.json", settings)
    if cached is not None:
        return cached
    if training:
        results = _measure_training(data, space, train, every, lr, balancer)
    else:
        results = {measure: _measure_representation(data, space, train, Path(run_dir), measure, probe_size)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        results[name] = replace(result, settings=settings)
        write_json_atomic(results[name].to_dict(), folder / f"{name}.json")
    return results[measure]


def _load_cached(path: Path, settings: Mapping[str, Any]) -> AffinityResult | None:
    if not path.is_file():
        return None
    keys = ("measure", "tasks", "matrix", "seconds", "overhead_seconds", "samples")
    result = AffinityResult.from_dict(read_json(path, "cached affinity", keys, "delete it to measure again"))
    check_settings(result.settings, settings, path, "cached affinity")
    return result


def _measure_training(
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    every: int,
    lr: float,
    balancer: str,
) -> dict[str, AffinityResult]:
    recorder = AffinityRecorder(data.tasks, lr, every)
    graph = space.hard_sharing(data.task_names).with_meta(name="affinity")
    t0 = time.perf_counter()
    train_graph(graph, data, space, config, create_balancer(balancer), step_hooks=[recorder])
    seconds = time.perf_counter() - t0
    return {
        m: AffinityResult(
            m,
            data.task_names,
            recorder.matrix(m),
            seconds,
            recorder.seconds,
            recorder.steps,
            history=recorder.per_epoch(m),
        )
        for m in TRAINING_MEASURES
    }


def _measure_representation(
    data: MultiTaskData, space: SearchSpace, config: TrainConfig, run_dir: Path, measure: str, probe_size: int
) -> AffinityResult:
    singles = train_single_tasks(data, space, config, run_dir / "single")
    t0 = time.perf_counter()
    x, _ = next(iterate_batches(data.val, probe_size, shuffle=False))
    features = []
    for net, _ in singles.values():
        device = next(net.parameters()).device
        features.append([f.cpu() for f in layer_features(net, x.to(device))])
    layers = layer_similarity(features, measure)
    overhead = time.perf_counter() - t0
    train_seconds = sum(res.train_seconds for _, res in singles.values())  # also right when reused from disk
    return AffinityResult(
        measure,
        data.task_names,
        layers.mean(0),
        train_seconds + overhead,
        overhead,
        x.shape[0],
        layers=layers,
        layer_names=space.layers,
    )


def check_affinity_search(data: MultiTaskData, space: SearchSpace, config: AffinityConfig) -> None:
    """ValueError if ``config`` cannot run on ``data`` and ``space`` (checked before a study trains anything)."""
    _branch_index(config.branch_at, space)
    check_grouping_args(len(data.task_names), config.k, config.grouping)
    if len(data.train) < config.train.batch_size:
        raise ValueError(
            f"affinity: batch_size {config.train.batch_size} exceeds the {len(data.train)} training samples"
        )


def _branch_index(branch_at: int | str | None, space: SearchSpace) -> int:
    """Layer index where groups get their own branches: a branchable layer's name or index."""
    if branch_at is None:
        if not space.branchable:
            raise ValueError(f"branch_at: search space {space.name!r} has no branchable layer")
        return space.layers.index(space.branchable[0])
    if isinstance(branch_at, str) and branch_at.isdigit() and branch_at not in space.layers:
        branch_at = int(branch_at)  # "2" from a study file or a flag: a layer index, as before typed configs
    index = space.layers.index(branch_at) if branch_at in space.layers else branch_at
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(space.layers):
        raise ValueError(f"branch_at: expected a layer name or index, got {branch_at!r}; layers: {list(space.layers)}")
    if space.layers[index] not in space.branchable:
        raise ValueError(
            f"branch_at: layer {space.layers[index]!r} is not branchable in space {space.name!r} "
            f"(branchable: {list(space.branchable)})"
        )
    return index


def affinity_search(
    data: MultiTaskData, space: SearchSpace, config: AffinityConfig, run_dir: str | Path
) -> SearchResult:
    """Measure each affinity in ``config.measures``, group the tasks, and return the first measure's graph.

    A T x T measure (lookahead, gradcos) gives ``k`` groups (``grouping`` method) branching at
    ``branch_at`` (default: the first branchable layer); a layer-wise measure (rsa, cka) gives the
    lowest-cost tree within ``params_budget`` (see :func:`~.grouping.layerwise_tree`), and its groups
    from the layer-averaged similarity. The other measures' graphs are candidates. ``info`` holds, per
    measure, the groups, graph, matrix and costs; heatmaps and dendrograms go to ``run_dir/affinity``.
    """
    k, grouping = config.k, config.grouping
    check_affinity_search(data, space, config)  # before any training, not after
    index = _branch_index(config.branch_at, space)
    tasks = data.task_names
    folder = Path(run_dir) / AFFINITY_DIR
    t0 = time.perf_counter()
    graphs: list[SharingGraph] = []
    info: dict[str, Any] = {"branch_at": space.layers[index], "k": k, "grouping": grouping, "measures": {}}
    measured: list[AffinityResult] = []
    for m in dict.fromkeys(config.measures):
        result = measure_affinity(data, space, config, run_dir, m)
        measured.append(result)
        groups: Groups = group_tasks(result.matrix, tasks, k, grouping)
        if result.layers is None:
            graph = SharingGraph.from_groups(tasks, space.layers, groups, index, space.skippable)
        else:
            graph = layerwise_tree(1.0 - result.layers, tasks, space, config.params_budget, config.min_split)
        graph = graph.with_meta(name=f"affinity:{m}", measure=m)
        graphs.append(graph)
        info["measures"][m] = {
            "groups": [list(g) for g in groups],
            "graph": graph.to_dict(),
            "matrix": result.matrix.tolist(),
            "seconds": result.seconds,
            "overhead_seconds": result.overhead_seconds,
            "samples": result.samples,
        }
        if config.plots:
            _plot(result, folder)
    info["session_seconds"] = time.perf_counter() - t0
    return SearchResult(
        "affinity",
        graphs[0],
        _total_seconds(measured, info["session_seconds"]),
        candidates=tuple(dict.fromkeys(g for g in graphs[1:] if g != graphs[0])),
        info=info,
    )


def _total_seconds(measured: Sequence[AffinityResult], session: float) -> float:
    """The search's cost over all sessions: each measurement's recorded time (lookahead and gradcos share one
    training run; rsa and cka share the single-task networks), at least this session's wall time."""
    training = max((r.seconds for r in measured if r.measure in TRAINING_MEASURES), default=0.0)
    representation = [r for r in measured if r.measure not in TRAINING_MEASURES]
    nets = max((r.seconds - r.overhead_seconds for r in representation), default=0.0)
    return max(session, training + nets + sum(r.overhead_seconds for r in representation))


def _plot(result: AffinityResult, folder: Path) -> None:
    from .affinity_plots import plot_affinity, plot_dendrogram, plot_layer_affinities  # matplotlib: only to plot

    name = result.measure
    plot_affinity(result.matrix, result.tasks, f"{name} affinity", folder / f"{name}_heatmap.png")
    if len(result.tasks) > 2:
        plot_dendrogram(result.matrix, result.tasks, f"{name} dendrogram", folder / f"{name}_dendrogram.png")
    if result.layers is not None:
        plot_layer_affinities(
            result.layers, result.layer_names, result.tasks, f"{name} per layer", folder / f"{name}_layers.png"
        )


@register_search_method("affinity")
def _affinity_method() -> SearchMethod:
    return SearchMethod(
        AffinityConfig,
        affinity_search,
        check=check_affinity_search,
        help="task grouping from measured task affinity (TAG lookahead, gradient cosine, RSA/CKA trees)",
    )


__all__ = [
    "MEASURES",
    "AffinityConfig",
    "AffinityResult",
    "affinity_search",
    "check_affinity_search",
    "measure_affinity",
]
