"""Task specs: what a task's head looks like, its loss, its metrics and which direction is better.

One frozen dataclass per task kind, registered in :data:`TASK_KINDS` (``create_task(kind, name, ...)``).
Dense losses and metrics follow the NYUv2 conventions of MTAN (Liu et al., "End-to-End Multi-Task
Learning with Attention", CVPR 2019) and LibMTL: depth pixels whose target is 0 in every channel and
normal pixels whose target has norm 0 are invalid; mIoU comes from one confusion matrix over the
whole evaluation set.

Missing labels: a sample may lack a target for some tasks. Integer targets mark it with the task's
``ignore_index`` (-1 by default), floating targets with NaN (per entry: a multi-label sample may lack some
labels only); dense tasks keep their invalid-pixel conventions too. Losses average over the labelled entries
of the batch only (0, with zero gradient, when there are none) and metrics count labelled entries only, so a
task's numbers equal those computed on its labelled samples alone. :func:`labelled_losses` leaves a task
without any label in a batch out of that step (no gradient; balancers see only the other tasks).

Heads (:mod:`~nas_mtl.heads`), metric accumulation (:mod:`~nas_mtl.meters`) and the missing-label conventions
(:mod:`~nas_mtl.labels`) live in their own modules; :class:`DenseHead`, :func:`pooled_head`, :class:`MetricMeter`
and :data:`Stats` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import DenseHead, pooled_head
from .labels import check_ignore_index, class_range, fill_nan, is_int, per_sample
from .meters import MetricMeter, Stats, histogram_median, ratio
from .runs import check_name

ANGLE_BIN_DEGREES = 0.01
"""Resolution of the angle histogram behind ``median_angle`` (the median is exact to this many degrees)."""


@dataclass(frozen=True)
class TaskSpec(ABC):
    """One task: builds its head, computes its loss and metrics, checks its targets.

    Subclasses set ``kind`` (the registry name), ``METRICS`` (metric -> higher is better, the first
    one primary), ``DENSE`` (per-pixel output at the input size), ``UNIT`` (L2-normalised output),
    ``TARGET_INTEGER`` (int64 targets, else floating) and ``TARGET_LAYOUT`` (the target's dimensions:
    B batch, C ``out_channels``, H and W any size).

    Args:
        name: the task's name (unique in a dataset).
        metric: the primary metric (what Δm and the searches use); default the kind's first metric.
    """

    name: str
    metric: str | None = field(default=None, kw_only=True)

    kind: ClassVar[str] = ""
    METRICS: ClassVar[dict[str, bool]] = {}
    DENSE: ClassVar[bool] = False
    UNIT: ClassVar[bool] = False
    TARGET_INTEGER: ClassVar[bool] = False
    TARGET_LAYOUT: ClassVar[str] = "BC"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.kind} task: name must be a non-empty string, got {self.name!r}")
        check_name(self.name, f"{self.kind} task name")  # names become folders (single-task runs) and file names
        for f in dataclasses.fields(self):
            if f.name.startswith("num_"):
                value, low = getattr(self, f.name), 2 if f.name == "num_classes" else 1
                if not is_int(value) or value < low:
                    raise ValueError(f"task {self.name!r}: {f.name} must be an integer >= {low}, not {value!r}")
        if self.metric is not None and self.metric not in self.METRICS:
            raise ValueError(
                f"task {self.name!r} ({self.kind}): metric must be one of {list(self.METRICS)}, got {self.metric!r}"
            )

    # --- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Channels (features) the head predicts."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss of one batch: mean over its labelled samples / valid pixels, 0 without any."""

    @abstractmethod
    def labelled(self, target: Tensor) -> Tensor:
        """(B,) bool: which samples of a batch carry a label for this task (at least one labelled entry)."""

    @abstractmethod
    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        """Per-batch sums the metrics are computed from."""

    @abstractmethod
    def _finalize(self, sums: Stats) -> dict[str, float]:
        """Metrics from the summed stats."""

    def _target_shape(self, batch_size: int) -> tuple[int | None, ...]:
        """Expected target shape; ``None`` = any size (dense spatial dims)."""
        sizes = {"B": batch_size, "C": self.out_channels, "H": None, "W": None}
        return tuple(sizes[d] for d in self.TARGET_LAYOUT)

    def _check_values(self, target: Tensor) -> str | None:
        """A description of out-of-range target values, or None when they are fine."""
        return None

    # --- shared behaviour ----------------------------------------------------------------------
    def build_head(self, feature_shape: tuple[int, int, int], input_hw: tuple[int, int]) -> nn.Module:
        """The task head mapping a (B, C, H, W) feature map to this task's prediction.

        Args:
            feature_shape: (C, H, W) of the backbone feature map.
            input_hw: (H, W) of the network input; dense heads predict at this size.
        """
        if self.DENSE:
            return DenseHead(feature_shape[0], self.out_channels, input_hw, unit=self.UNIT)
        return pooled_head(feature_shape[0], self.out_channels)

    @property
    def metric_directions(self) -> dict[str, bool]:
        """``{metric: True if higher is better}``."""
        return dict(self.METRICS)

    @property
    def primary_metric(self) -> str:
        return self.metric or next(iter(self.METRICS))

    def new_meter(self) -> MetricMeter:
        """A fresh accumulator of this task's metrics over an evaluation set (labelled samples only; computing
        it raises when the set had none)."""

        def stats(pred: Tensor, target: Tensor) -> Stats:
            return {**self._stats(pred, target), "labelled": self.labelled(target).sum()}

        return MetricMeter(stats, self._finalize)

    def validate_target(self, target: Tensor, batch_size: int) -> None:
        """Raise ValueError naming the task when ``target`` has the wrong shape, dtype or values."""
        want = self._target_shape(batch_size)
        dtype = "dtype torch.int64" if self.TARGET_INTEGER else "a floating dtype"
        layout = "(" + ", ".join("*" if s is None else str(s) for s in want) + ")"
        ok_dtype = target.dtype == torch.int64 if self.TARGET_INTEGER else target.is_floating_point()
        ok_shape = target.dim() == len(want) and all(
            w is None or w == s for w, s in zip(want, target.shape, strict=True)
        )
        if not (ok_dtype and ok_shape):
            raise ValueError(
                f"task {self.name!r} ({self.kind}): expected target shape {layout} with {dtype}, "
                f"got shape {tuple(target.shape)} and dtype {target.dtype}"
            )
        problem = self._check_values(target)
        if problem:
            raise ValueError(f"task {self.name!r} ({self.kind}): {problem}")

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., field: value, ...}`` (JSON-ready; ``metric`` only when set); inverse of :meth:`from_dict`."""
        fields = dataclasses.asdict(self)
        if fields["metric"] is None:
            del fields["metric"]
        return {"kind": self.kind, **fields}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild a spec written by :meth:`to_dict`; errors name the bad key."""
        if "kind" not in data:
            raise ValueError(f"task spec: missing key 'kind' (one of {sorted(TASK_KINDS)}) in {dict(data)}")
        kind = data["kind"]
        if kind not in TASK_KINDS:
            raise ValueError(f"task spec: unknown kind {kind!r}; known: {', '.join(sorted(TASK_KINDS))}")
        spec_cls = TASK_KINDS[kind]
        if not issubclass(spec_cls, cls):
            raise ValueError(f"task spec: kind {kind!r} is not a {cls.__name__}")
        allowed = [f.name for f in dataclasses.fields(spec_cls)]
        fields = {k: v for k, v in data.items() if k != "kind"}
        unknown = sorted(set(fields) - set(allowed))
        if unknown:
            raise ValueError(f"task spec ({kind}): unknown key(s) {unknown}; allowed: {allowed}")
        missing = [f.name for f in dataclasses.fields(spec_cls) if f.name not in fields and _required(f)]
        if missing:
            raise ValueError(f"task spec ({kind}): missing key(s) {missing}")
        return spec_cls(**fields)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


TASK_KINDS: dict[str, type[TaskSpec]] = {}
"""Task kind name -> spec class."""


def _register(kind: str) -> Callable[[type[TaskSpec]], type[TaskSpec]]:
    def deco(cls: type[TaskSpec]) -> type[TaskSpec]:
        cls.kind = kind
        TASK_KINDS[kind] = cls
        return cls

    return deco


def create_task(kind: str, name: str, **kwargs: Any) -> TaskSpec:
    """Build a task spec by kind, e.g. ``create_task("classification", "left", num_classes=10)``."""
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(sorted(TASK_KINDS))}")
    try:
        return TASK_KINDS[kind](name, **kwargs)
    except TypeError as err:
        allowed = [f.name for f in dataclasses.fields(TASK_KINDS[kind])]
        raise TypeError(f"task kind {kind!r}: {err}; fields: {allowed}") from None


# --- image-level tasks ---------------------------------------------------------------------------
@_register("classification")
@dataclass(frozen=True)
class ClassificationTask(TaskSpec):
    """Single-label classification: cross-entropy; accuracy. Targets int64 (B,) in [0, num_classes), or
    ``ignore_index`` for a sample without a label."""

    num_classes: int
    ignore_index: int = -1
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True}
    TARGET_INTEGER: ClassVar[bool] = True
    TARGET_LAYOUT: ClassVar[str] = "B"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ignore_index(self.name, self.ignore_index, self.num_classes)

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def _check_values(self, target: Tensor) -> str | None:
        return class_range(target, self.num_classes, self.ignore_index)

    def labelled(self, target: Tensor) -> Tensor:
        return target != self.ignore_index

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = self.labelled(target)
        if bool(valid.all()):
            return F.cross_entropy(pred, target)
        total = F.cross_entropy(pred, target, ignore_index=self.ignore_index, reduction="sum")
        return total / valid.sum().clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        valid = self.labelled(target)
        correct = ((pred.argmax(dim=1) == target) & valid).sum()
        return {"correct": correct, "count": valid.sum()}

    def _finalize(self, sums: Stats) -> dict[str, float]:
        return {"accuracy": float(sums["correct"] / sums["count"])}


@_register("multilabel")
@dataclass(frozen=True)
class MultiLabelTask(TaskSpec):
    """Several binary labels per image: BCE with logits; mean per-label accuracy and macro F1.

    Targets float (B, num_labels) in {0, 1}, NaN for a missing label; a logit > 0 predicts 1. F1 of a label
    with no positive target nor prediction counts as 0 (scikit-learn's ``zero_division=0``).
    """

    num_labels: int
    METRICS: ClassVar[dict[str, bool]] = {"accuracy": True, "f1": True}

    @property
    def out_channels(self) -> int:
        return self.num_labels

    def _check_values(self, target: Tensor) -> str | None:
        if target.numel() and ((target != 0) & (target != 1) & ~torch.isnan(target)).any():
            return "multi-label targets must be 0 or 1 (NaN: missing)"
        return None

    def labelled(self, target: Tensor) -> Tensor:
        return per_sample(~torch.isnan(target))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = ~torch.isnan(target)
        if bool(valid.all()):
            return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype))
        each = F.binary_cross_entropy_with_logits(pred, fill_nan(target).to(pred.dtype), reduction="none")
        return torch.where(valid, each, torch.zeros_like(each)).sum() / valid.sum().clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        valid = ~torch.isnan(target)
        p, t = pred > 0, target > 0.5
        return {
            "tp": (p & t & valid).sum(0),
            "fp": (p & ~t & valid).sum(0),
            "fn": (~p & t & valid).sum(0),
            "correct": ((p == t) & valid).sum(),
            "count": valid.sum(),
        }

    def _finalize(self, sums: Stats) -> dict[str, float]:
        f1 = ratio(2 * sums["tp"], 2 * sums["tp"] + sums["fp"] + sums["fn"])
        return {"accuracy": float(sums["correct"] / sums["count"]), "f1": float(f1.mean())}


@_register("regression")
@dataclass(frozen=True)
class RegressionTask(TaskSpec):
    """Image-level regression: MSE loss; MAE and RMSE over all outputs. Targets float (B, num_outputs), NaN
    for a missing value."""

    num_outputs: int = 1
    METRICS: ClassVar[dict[str, bool]] = {"mae": False, "rmse": False}

    @property
    def out_channels(self) -> int:
        return self.num_outputs

    def labelled(self, target: Tensor) -> Tensor:
        return per_sample(~torch.isnan(target))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = ~torch.isnan(target)
        if bool(valid.all()):
            return F.mse_loss(pred, target.to(pred.dtype))
        sq = (pred - fill_nan(target).to(pred.dtype)).square()
        return torch.where(valid, sq, torch.zeros_like(sq)).sum() / valid.sum().clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        valid = ~torch.isnan(target)
        diff = pred.double()[valid] - target.double()[valid]
        return {
            "abs": diff.abs().sum(),
            "sq": diff.square().sum(),
            "count": torch.tensor(diff.numel(), device=diff.device),
        }

    def _finalize(self, sums: Stats) -> dict[str, float]:
        n = sums["count"]
        return {"mae": float(sums["abs"] / n), "rmse": math.sqrt(float(sums["sq"] / n))}


# --- dense (per-pixel) tasks ---------------------------------------------------------------------
@_register("segmentation")
@dataclass(frozen=True)
class SegmentationTask(TaskSpec):
    """Semantic segmentation: per-pixel cross-entropy; mIoU and pixel accuracy.

    Targets int64 (B, H, W); pixels equal to ``ignore_index`` count nowhere. mIoU is the mean IoU
    over the classes present in the union of targets and predictions, from one confusion matrix
    accumulated over the evaluation set.
    """

    num_classes: int
    ignore_index: int = -1
    METRICS: ClassVar[dict[str, bool]] = {"miou": True, "pixel_acc": True}
    DENSE: ClassVar[bool] = True
    TARGET_INTEGER: ClassVar[bool] = True
    TARGET_LAYOUT: ClassVar[str] = "BHW"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ignore_index(self.name, self.ignore_index, self.num_classes)

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def _check_values(self, target: Tensor) -> str | None:
        return class_range(target, self.num_classes, self.ignore_index)

    def labelled(self, target: Tensor) -> Tensor:
        return per_sample(target != self.ignore_index)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = (target != self.ignore_index).sum()
        total = F.cross_entropy(pred, target, ignore_index=self.ignore_index, reduction="sum")
        return total / valid.clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        k = self.num_classes
        valid = target != self.ignore_index
        pairs = target[valid] * k + pred.argmax(dim=1)[valid]
        return {"confusion": torch.bincount(pairs, minlength=k * k).view(k, k)}

    def _finalize(self, sums: Stats) -> dict[str, float]:
        conf = sums["confusion"]
        hits = conf.diagonal()
        union = conf.sum(0) + conf.sum(1) - hits
        present = union > 0
        miou = float((hits[present] / union[present]).mean()) if present.any() else 0.0
        return {"miou": miou, "pixel_acc": float(ratio(hits.sum(), conf.sum()))}


@_register("dense_regression")
@dataclass(frozen=True)
class DenseRegressionTask(TaskSpec):
    """Per-pixel regression (depth-like): L1 over valid pixels; absolute and relative error.

    Targets float (B, num_outputs, H, W). A pixel is valid when its target summed over channels is
    non-zero (MTAN's depth convention) and no channel is NaN. ``rel_err`` = mean |pred - target| / |target|
    over valid entries with a non-zero target.
    """

    num_outputs: int = 1
    METRICS: ClassVar[dict[str, bool]] = {"abs_err": False, "rel_err": False}
    DENSE: ClassVar[bool] = True
    TARGET_LAYOUT: ClassVar[str] = "BCHW"

    @property
    def out_channels(self) -> int:
        return self.num_outputs

    @staticmethod
    def _valid(target: Tensor) -> Tensor:
        """(B, C, H, W) bool: valid pixel, broadcast over channels."""
        finite = ~torch.isnan(target).any(dim=1, keepdim=True)
        return (finite & (fill_nan(target).sum(dim=1, keepdim=True) != 0)).expand_as(target)

    def labelled(self, target: Tensor) -> Tensor:
        return per_sample(self._valid(target))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        valid = self._valid(target)
        err = (pred - fill_nan(target).to(pred.dtype)).abs()
        return torch.where(valid, err, torch.zeros_like(err)).sum() / valid.sum().clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        valid = self._valid(target)
        t = target.double()[valid]
        err = (pred.double()[valid] - t).abs()
        nz = t != 0
        return {
            "abs": err.sum(),
            "count": torch.tensor(err.numel(), device=err.device),
            "rel": (err[nz] / t[nz].abs()).sum(),
            "rel_count": nz.sum(),
        }

    def _finalize(self, sums: Stats) -> dict[str, float]:
        return {
            "abs_err": float(ratio(sums["abs"], sums["count"])),
            "rel_err": float(ratio(sums["rel"], sums["rel_count"])),
        }


@_register("normals")
@dataclass(frozen=True)
class SurfaceNormalTask(TaskSpec):
    """Surface normals: unit 3-vector per pixel; loss 1 - cosine similarity over valid pixels.

    Targets float (B, 3, H, W); a pixel is valid when its target has non-zero norm and no NaN. Metrics are the
    angle between prediction and target in degrees (MTAN / Eigen & Fergus 2015): mean, median
    (from a histogram of :data:`ANGLE_BIN_DEGREES` bins, so memory stays constant) and the fraction
    of pixels within 11.25 degrees.
    """

    METRICS: ClassVar[dict[str, bool]] = {"mean_angle": False, "median_angle": False, "within_11_25": True}
    DENSE: ClassVar[bool] = True
    UNIT: ClassVar[bool] = True
    TARGET_LAYOUT: ClassVar[str] = "BCHW"

    @property
    def out_channels(self) -> int:
        return 3

    @staticmethod
    def _cosine(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine similarity at valid pixels (1-D) and the (B, H, W) validity mask."""
        valid = target.norm(dim=1) > 0  # False where a channel is NaN
        cos = (F.normalize(pred, dim=1) * F.normalize(fill_nan(target), dim=1)).sum(dim=1)
        return cos[valid], valid

    def labelled(self, target: Tensor) -> Tensor:
        return per_sample(target.norm(dim=1) > 0)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        cos, valid = self._cosine(pred, target.to(pred.dtype))
        return (1 - cos).sum() / valid.sum().clamp_min(1)

    def _stats(self, pred: Tensor, target: Tensor) -> Stats:
        cos, _ = self._cosine(pred.double(), target.double())
        angle = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
        bins = round(180 / ANGLE_BIN_DEGREES)
        index = (angle / ANGLE_BIN_DEGREES).long().clamp_max(bins - 1)
        return {
            "sum": angle.sum(),
            "count": torch.tensor(angle.numel(), device=angle.device),
            "within": (angle < 11.25).sum(),
            "hist": torch.bincount(index, minlength=bins),
        }

    def _finalize(self, sums: Stats) -> dict[str, float]:
        n = sums["count"]
        return {
            "mean_angle": float(ratio(sums["sum"], n)),
            "median_angle": histogram_median(sums["hist"], ANGLE_BIN_DEGREES),
            "within_11_25": float(ratio(sums["within"], n)),
        }


def labelled_losses(
    out: Mapping[str, Tensor], targets: Mapping[str, Tensor], specs: Sequence[TaskSpec]
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Each task's loss on one batch, for the tasks with a label in it, and every task's labelled-sample count.

    A task with no labelled sample in the batch is left out of the losses (count 0): it gets no gradient from
    this step and balancers combine the other tasks only.
    """
    losses, counts = {}, {}
    for t in specs:
        counts[t.name] = int(t.labelled(targets[t.name]).sum())
        if counts[t.name]:
            losses[t.name] = t.loss(out[t.name], targets[t.name])
    return losses, counts


__all__ = [
    "ANGLE_BIN_DEGREES",
    "ClassificationTask",
    "DenseHead",
    "DenseRegressionTask",
    "MetricMeter",
    "MultiLabelTask",
    "RegressionTask",
    "SegmentationTask",
    "Stats",
    "SurfaceNormalTask",
    "TASK_KINDS",
    "TaskSpec",
    "create_task",
    "labelled_losses",
    "pooled_head",
]
