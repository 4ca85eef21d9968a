"""Task specs: losses and metrics against independent references (scikit-learn, numpy, torch)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, mean_absolute_error, mean_squared_error

from nas_mtl.tasks import (
    TASK_KINDS,
    ClassificationTask,
    DenseRegressionTask,
    MultiLabelTask,
    RegressionTask,
    SegmentationTask,
    SurfaceNormalTask,
    TaskSpec,
    create_task,
)

BATCHES = (5, 7, 3)  # uneven batch sizes: metrics must not average batch averages
HW = (6, 5)
EPS32 = torch.finfo(torch.float32).eps


def _f32_rel(n: int) -> float:
    """Relative rounding bound of a float32 mean of ``n`` non-negative terms, each good to a few eps: 2 n eps."""
    return 2 * n * EPS32


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sample(task: TaskSpec, b: int, g: torch.Generator, hw: tuple[int, int] = HW) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (prediction, valid target) pair for ``task`` with batch size ``b`` (dense: at ``hw``)."""
    h, w = hw
    if isinstance(task, ClassificationTask):
        return torch.randn(b, task.num_classes, generator=g), torch.randint(0, task.num_classes, (b,), generator=g)
    if isinstance(task, MultiLabelTask):
        return torch.randn(b, task.num_labels, generator=g), torch.randint(
            0, 2, (b, task.num_labels), generator=g
        ).float()
    if isinstance(task, RegressionTask):
        return torch.randn(b, task.num_outputs, generator=g), torch.randn(b, task.num_outputs, generator=g)
    if isinstance(task, SegmentationTask):
        target = torch.randint(0, task.num_classes - 1, (b, h, w), generator=g)  # last class never occurs
        target[torch.rand(b, h, w, generator=g) < 0.2] = task.ignore_index
        return torch.randn(b, task.num_classes, h, w, generator=g), target
    if isinstance(task, DenseRegressionTask):
        target = torch.rand(b, task.num_outputs, h, w, generator=g) + 0.5
        target[:, :, torch.rand(h, w, generator=g) < 0.3] = 0  # invalid pixels (0 in every channel)
        return torch.randn(b, task.num_outputs, h, w, generator=g), target
    target = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    target[:, :, torch.rand(h, w, generator=g) < 0.3] = 0  # invalid: zero norm
    return target + 0.6 * torch.randn(b, 3, h, w, generator=g), target


def _accumulate(task: TaskSpec, seed: int = 0) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Metrics over several uneven batches, plus all predictions and targets concatenated."""
    g, meter, preds, targets = _gen(seed), task.new_meter(), [], []
    for b in BATCHES:
        pred, target = _sample(task, b, g)
        meter.update(pred, target)
        preds.append(pred)
        targets.append(target)
    return meter.compute(), torch.cat(preds), torch.cat(targets)


ALL_TASKS = (
    ClassificationTask("cls", 4),
    MultiLabelTask("ml", 5),
    RegressionTask("reg", 2),
    SegmentationTask("seg", 5),
    DenseRegressionTask("depth"),
    DenseRegressionTask("flow", num_outputs=2),
    SurfaceNormalTask("normal"),
)


# --- metrics against references ------------------------------------------------------------------
def test_classification_accuracy_matches_sklearn():
    metrics, pred, target = _accumulate(ClassificationTask("c", 4))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(target.numpy(), pred.argmax(1).numpy()))


def test_multilabel_accuracy_and_macro_f1_match_sklearn():
    task = MultiLabelTask("m", 5)
    g, meter, preds, targets = _gen(1), task.new_meter(), [], []
    for b in BATCHES:
        pred, target = _sample(task, b, g)
        target[:, 4] = 0  # a label with no positive target ...
        pred[:, 4] = -1.0  # ... and no positive prediction: F1 counts as 0 (zero_division=0)
        meter.update(pred, target)
        preds.append((pred > 0).int().numpy())
        targets.append(target.int().numpy())
    p, t = np.concatenate(preds), np.concatenate(targets)
    metrics = meter.compute()
    per_label_acc = np.mean([accuracy_score(t[:, j], p[:, j]) for j in range(5)])
    assert metrics["accuracy"] == pytest.approx(per_label_acc)
    assert metrics["f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0))


def test_regression_errors_match_sklearn():
    metrics, pred, target = _accumulate(RegressionTask("r", num_outputs=2))
    t, p = target.double().numpy(), pred.double().numpy()  # the meter sums in float64; so does the reference
    assert metrics["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(t, p)))


def test_segmentation_miou_and_pixel_acc_match_sklearn():
    task = SegmentationTask("s", 5)  # class 4 never occurs in targets; it counts only if predicted
    metrics, pred, target = _accumulate(task)
    valid = target != -1
    t, p = target[valid].numpy(), pred.argmax(1)[valid].numpy()
    assert metrics["miou"] == pytest.approx(jaccard_score(t, p, average="macro"))
    assert metrics["pixel_acc"] == pytest.approx(accuracy_score(t, p))


def test_segmentation_miou_skips_classes_absent_from_union():
    task = SegmentationTask("s", 4)
    meter = task.new_meter()
    target = torch.tensor([[[0, 0, 1, -1]]])
    pred = F.one_hot(torch.tensor([[[0, 1, 1, 3]]]), 4).permute(0, 3, 1, 2).float()
    meter.update(pred, target)
    # class 0: 1/2, class 1: 1/2, classes 2 and 3 absent (the pixel predicted 3 is ignored)
    assert meter.compute() == {"miou": pytest.approx(0.5), "pixel_acc": pytest.approx(2 / 3)}


@pytest.mark.parametrize("channels", [1, 2])
def test_dense_regression_errors_match_numpy_with_hand_mask(channels):
    metrics, pred, target = _accumulate(DenseRegressionTask("d", num_outputs=channels))
    p, t = pred.double().numpy(), target.double().numpy()
    n, c, h, w = t.shape
    mask = np.zeros_like(t, dtype=bool)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                mask[i, :, y, x] = t[i, :, y, x].sum() != 0
    assert 0 < mask.mean() < 1
    err = np.abs(p - t)[mask]
    assert metrics["abs_err"] == pytest.approx(err.mean())
    assert metrics["rel_err"] == pytest.approx((err / np.abs(t[mask])).mean())


def test_normal_angles_match_numpy_arccos():
    metrics, pred, target = _accumulate(SurfaceNormalTask("n"))
    p, t = pred.double().numpy(), target.double().numpy()
    norms = np.linalg.norm(t, axis=1)
    valid = norms > 0
    p_unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = np.einsum("nchw,nchw->nhw", p_unit, t / np.where(valid, norms, 1)[:, None])[valid]
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert metrics["mean_angle"] == pytest.approx(angles.mean())
    assert metrics["median_angle"] == pytest.approx(np.median(angles), abs=0.02)  # histogram of 0.01 deg bins
    assert metrics["within_11_25"] == pytest.approx((angles < 11.25).mean())
    assert 0 < metrics["within_11_25"] < 1


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind + "-" + t.name)
def test_metrics_do_not_depend_on_batching(task):
    metrics, pred, target = _accumulate(task, seed=3)
    whole = task.new_meter()
    whole.update(pred, target)
    assert whole.compute() == pytest.approx(metrics)


def test_meter_without_updates_raises():
    with pytest.raises(ValueError, match="before any update"):
        ClassificationTask("c", 3).new_meter().compute()


# --- losses against closed forms --------------------------------------------------------------------
def test_image_level_losses_match_functional_and_closed_form():
    g = _gen(4)
    pred, target = _sample(ClassificationTask("c", 4), 6, g)
    assert ClassificationTask("c", 4).loss(pred, target) == pytest.approx(float(F.cross_entropy(pred, target)))
    pred, target = _sample(MultiLabelTask("m", 3), 6, g)
    x, y = pred.double().numpy(), target.double().numpy()
    bce = np.mean(np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * y)
    assert float(MultiLabelTask("m", 3).loss(pred, target)) == pytest.approx(bce, rel=_f32_rel(pred.numel()))
    pred, target = _sample(RegressionTask("r", 2), 6, g)
    assert float(RegressionTask("r", 2).loss(pred, target)) == pytest.approx(float(((pred - target) ** 2).mean()))


def test_segmentation_loss_ignores_pixels_and_is_finite_when_all_ignored():
    task = SegmentationTask("s", 5)
    pred, target = _sample(task, 4, _gen(5))
    assert float(task.loss(pred, target)) == pytest.approx(float(F.cross_entropy(pred, target, ignore_index=-1)))
    assert float(task.loss(pred, torch.full_like(target, -1))) == 0.0


def test_dense_losses_average_over_valid_pixels():
    depth = DenseRegressionTask("d")
    pred, target = _sample(depth, 3, _gen(6))
    p, t = pred.numpy(), target.numpy()
    valid = t[:, 0] != 0
    expected = np.abs(p - t)[:, 0][valid].mean()
    assert float(depth.loss(pred, target)) == pytest.approx(expected, rel=_f32_rel(int(valid.sum())))
    normal = SurfaceNormalTask("n")
    pred, target = _sample(normal, 3, _gen(7))
    p, t = pred.double().numpy(), target.double().numpy()
    valid = np.linalg.norm(t, axis=1) > 0
    cos = (p * t).sum(1) / np.linalg.norm(p, axis=1)  # targets are unit vectors where valid
    expected = (1 - cos[valid]).mean()
    assert float(normal.loss(pred, target)) == pytest.approx(expected, rel=_f32_rel(3 * int(valid.sum())))


# --- heads ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind + "-" + t.name)
def test_head_output_shape_and_loss_backward(task):
    head = task.build_head((8, 3, 4), (12, 16))
    out = head(torch.randn(2, 8, 3, 4, generator=_gen(8)))
    like, target = _sample(task, 2, _gen(9), hw=(12, 16))
    assert out.shape == like.shape
    if isinstance(task, SurfaceNormalTask):
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 12, 16), rtol=0, atol=_f32_rel(3))
    task.validate_target(target, 2)
    loss = task.loss(out, target)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in head.parameters())


# --- target validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "target", "match"),
    [
        (ClassificationTask("left", 10), torch.zeros(4, dtype=torch.float32), r"'left'.*int64.*float32"),
        (ClassificationTask("left", 10), torch.zeros(4, 1, dtype=torch.long), r"'left'.*\(4\).*\(4, 1\)"),
        (ClassificationTask("left", 10), torch.full((4,), 10), r"'left'.*\[0, 9\]"),
        (MultiLabelTask("attrs", 3), torch.zeros(4, 2), r"'attrs'.*\(4, 3\)"),
        (MultiLabelTask("attrs", 3), torch.full((4, 3), 2.0), r"'attrs'.*0 or 1"),
        (RegressionTask("size"), torch.zeros(4), r"'size'.*\(4, 1\)"),
        (SegmentationTask("seg", 3), torch.zeros(4, 1, 5, 5, dtype=torch.long), r"'seg'.*\(4, \*, \*\)"),
        (SegmentationTask("seg", 3), torch.full((4, 5, 5), 3), r"'seg'.*ignore_index -1"),
        (DenseRegressionTask("depth"), torch.zeros(4, 5, 5), r"'depth'.*\(4, 1, \*, \*\)"),
        (SurfaceNormalTask("normal"), torch.zeros(3, 3, 5, 5), r"'normal'.*\(4, 3, \*, \*\)"),
    ],
)
def test_validate_target_errors_name_task_and_expectation(task, target, match):
    with pytest.raises(ValueError, match=match):
        task.validate_target(target, 4)


def test_validate_target_accepts_ignored_pixels():
    SegmentationTask("seg", 3).validate_target(torch.tensor([[[0, 2], [-1, 1]]]), 1)


# --- specs, serialisation, registry --------------------------------------------------------------------
@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.kind + "-" + t.name)
def test_to_dict_from_dict_round_trip_through_json(task):
    data = json.loads(json.dumps(task.to_dict()))
    assert data["kind"] == task.kind
    assert TaskSpec.from_dict(data) == task
    assert type(task).from_dict(data) == task


def test_from_dict_errors_name_the_key():
    with pytest.raises(ValueError, match="missing key 'kind'"):
        TaskSpec.from_dict({"name": "a"})
    with pytest.raises(ValueError, match="unknown kind 'detection'.*classification"):
        TaskSpec.from_dict({"kind": "detection", "name": "a"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['classes'\].*num_classes"):
        TaskSpec.from_dict({"kind": "classification", "name": "a", "classes": 3})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['num_classes'\]"):
        TaskSpec.from_dict({"kind": "classification", "name": "a"})
    with pytest.raises(ValueError, match="is not a RegressionTask"):
        RegressionTask.from_dict({"kind": "classification", "name": "a", "num_classes": 3})


def test_create_task_and_registry():
    assert set(TASK_KINDS) == {
        "classification",
        "multilabel",
        "regression",
        "segmentation",
        "dense_regression",
        "normals",
    }
    assert create_task("segmentation", "seg", num_classes=13) == SegmentationTask("seg", 13, ignore_index=-1)
    with pytest.raises(ValueError, match="unknown task kind 'depth'; known: classification, dense_regression"):
        create_task("depth", "d")
    with pytest.raises(TypeError, match="'classification'.*num_class"):
        create_task("classification", "c", num_class=3)


def test_spec_fields_are_validated():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        ClassificationTask("c", 1)
    with pytest.raises(ValueError, match="num_outputs must be an integer >= 1"):
        RegressionTask("r", num_outputs=0)
    with pytest.raises(ValueError, match="ignore_index 0 is a class id"):
        SegmentationTask("s", 3, ignore_index=0)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        SurfaceNormalTask("")


def test_metric_directions_and_primary():
    assert ClassificationTask("c", 2).metric_directions == {"accuracy": True}
    assert RegressionTask("r").primary_metric == "mae"
    assert SegmentationTask("s", 3).primary_metric == "miou"
    assert DenseRegressionTask("d").metric_directions == {"abs_err": False, "rel_err": False}
    assert SurfaceNormalTask("n").metric_directions == {
        "mean_angle": False,
        "median_angle": False,
        "within_11_25": True,
    }
    for task in ALL_TASKS:
        metrics, _, _ = _accumulate(task)
        assert set(metrics) == set(task.metric_directions)
