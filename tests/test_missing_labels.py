"""Missing labels: losses, gradients, balancers and metrics use each task's labelled samples only.

References are hand computations on the labelled subset alone: torch's plain loss functions on the rows
(entries, pixels) that carry a label, a forward pass of those rows only, and the two-task closed forms of
MGDA (Sener & Koltun 2018, Algorithm 1) and PCGrad (Yu et al. 2020, Algorithm 1).
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_network, tiny_space, toy_data, toy_images

from nas_mtl.balancing import create_balancer, list_balancers
from nas_mtl.data import TensorMultiTaskDataset
from nas_mtl.tasks import (
    ClassificationTask,
    DenseRegressionTask,
    MultiLabelTask,
    RegressionTask,
    SegmentationTask,
    SurfaceNormalTask,
    labelled_losses,
)
from nas_mtl.train import TrainConfig, evaluate, train

F64_RTOL = 1e-10
"""float64 sums of a few hundred terms taken in another order: ~1e-14 relative, far below this."""

NAN = float("nan")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- per task kind: loss and metrics
def _classification(g):
    spec = ClassificationTask("c", 4)
    target = torch.randint(0, 4, (12,), generator=g)
    target[[1, 4, 5, 9]] = -1
    return spec, torch.randn(12, 4, generator=g, dtype=torch.float64), target, target != -1


def _multilabel(g):
    spec = MultiLabelTask("m", 3)
    target = torch.randint(0, 2, (12, 3), generator=g).double()
    target[2, 1] = target[7] = NAN  # one label of sample 2, every label of sample 7
    return spec, torch.randn(12, 3, generator=g, dtype=torch.float64), target, ~torch.isnan(target)


def _regression(g):
    spec = RegressionTask("r", 2)
    target = torch.randn(12, 2, generator=g, dtype=torch.float64)
    target[[0, 3], 0] = NAN
    target[6] = NAN
    return spec, torch.randn(12, 2, generator=g, dtype=torch.float64), target, ~torch.isnan(target)


def _reference(spec, pred, target, mask):
    """The loss and metrics of the labelled entries alone, by hand."""
    if isinstance(spec, ClassificationTask):
        p, t = pred[mask], target[mask]
        return F.cross_entropy(p, t), {"accuracy": float((p.argmax(1) == t).double().mean())}
    if isinstance(spec, MultiLabelTask):
        p, t = pred[mask], target[mask]
        hit = (p > 0) == (t > 0.5)
        f1 = []
        for j in range(target.shape[1]):
            col = mask[:, j]
            pj, tj = pred[col, j] > 0, target[col, j] > 0.5
            tp, fp, fn = (int((pj & tj).sum()), int((pj & ~tj).sum()), int((~pj & tj).sum()))
            f1.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        return F.binary_cross_entropy_with_logits(p, t), {"accuracy": float(hit.double().mean()), "f1": np.mean(f1)}
    d = pred[mask] - target[mask]
    e = d.detach()
    return d.square().mean(), {"mae": float(e.abs().mean()), "rmse": math.sqrt(float(e.square().mean()))}


@pytest.mark.parametrize("make", [_classification, _multilabel, _regression])
def test_image_level_loss_gradient_and_metrics_are_those_of_the_labelled_entries(make):
    spec, pred, target, mask = make(_gen(1))
    pred.requires_grad_(True)
    loss = spec.loss(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    ref_pred = pred.detach().clone().requires_grad_(True)
    ref_loss, ref_metrics = _reference(spec, ref_pred, target, mask)
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_pred)
    torch.testing.assert_close(loss, ref_loss, rtol=F64_RTOL, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=F64_RTOL, atol=1e-15)
    assert torch.isfinite(grad).all() and not grad[~spec.labelled(target)].any()
    meter = spec.new_meter()
    for rows in (slice(0, 5), slice(5, 12)):  # two batches: the sums do not depend on the batching
        meter.update(pred[rows], target[rows])
    got = meter.compute()
    assert got == pytest.approx(ref_metrics, rel=F64_RTOL)


def test_dense_losses_and_metrics_skip_missing_pixels():
    g = _gen(2)
    seg = SegmentationTask("s", 3)
    pred = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[1] = -1  # the second image has no segmentation label at all
    target[0, 0] = -1
    mask = target != -1
    p = pred.permute(0, 2, 3, 1)[mask]
    torch.testing.assert_close(seg.loss(pred, target), F.cross_entropy(p, target[mask]), rtol=F64_RTOL, atol=0)
    assert seg.labelled(target).tolist() == [True, False]
    acc = float((p.argmax(1) == target[mask]).double().mean())
    meter = seg.new_meter()
    meter.update(pred, target)
    assert meter.compute()["pixel_acc"] == pytest.approx(acc, rel=F64_RTOL)

    depth = DenseRegressionTask("d")
    dp = torch.randn(2, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    dt = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64) + 0.5
    dt[0, 0, 1, :] = NAN
    dt[0, 0, 2, :] = 0.0  # MTAN's "no depth" stays invalid too
    valid = torch.isfinite(dt) & (dt != 0)
    loss = depth.loss(dp, dt)
    torch.testing.assert_close(loss, (dp[valid] - dt[valid]).abs().mean(), rtol=F64_RTOL, atol=0)
    (grad,) = torch.autograd.grad(loss, dp)
    assert torch.isfinite(grad).all() and not grad[~valid].any()

    normals = SurfaceNormalTask("n")
    npred = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    nt = F.normalize(torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), dim=1)
    nt[1, :, 0, 0] = NAN
    ok = ~torch.isnan(nt).any(1)
    loss = normals.loss(npred, nt)
    cos = (F.normalize(npred, dim=1) * nt).sum(1)[ok]
    torch.testing.assert_close(loss, (1 - cos).mean(), rtol=F64_RTOL, atol=0)
    (grad,) = torch.autograd.grad(loss, npred)
    assert torch.isfinite(grad).all() and not grad.permute(0, 2, 3, 1)[~ok].any()


@pytest.mark.parametrize("make", [_classification, _multilabel, _regression])
def test_a_batch_without_labels_gives_zero_loss_and_no_nan(make):
    spec, pred, target, _ = make(_gen(3))
    target = torch.full_like(target, -1) if spec.TARGET_INTEGER else torch.full_like(target, NAN)
    pred.requires_grad_(True)
    loss = spec.loss(pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    assert float(loss.detach()) == 0.0 and not grad.any()
    assert not spec.labelled(target).any()
    losses, counts = labelled_losses({spec.name: pred}, {spec.name: target}, [spec])
    assert losses == {} and counts == {spec.name: 0}
    meter = spec.new_meter()
    meter.update(pred, target)
    with pytest.raises(ValueError, match="no labelled sample"):
        meter.compute()


def test_targets_are_still_checked():
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\] \(or ignore_index -1\)"):
        ClassificationTask("c", 4).validate_target(torch.tensor([0, 5, -1]), 3)
    with pytest.raises(ValueError, match="0 or 1"):
        MultiLabelTask("m", 2).validate_target(torch.tensor([[0.0, 0.5], [NAN, 1.0]]), 2)
    MultiLabelTask("m", 2).validate_target(torch.tensor([[0.0, NAN], [NAN, 1.0]]), 2)
    with pytest.raises(ValueError, match="ignore_index 2 is a class id"):
        ClassificationTask("c", 4, ignore_index=2)


# ---------------------------------------------------------------------- gradients through a network
TASKS = (ClassificationTask("a", 3), RegressionTask("b", 2), MultiLabelTask("c", 2))


def _network():
    # eval: BatchNorm per sample, so a subset's forward equals the full batch's rows
    return tiny_network(TASKS).double().eval()


def _batch(drop_c: bool):
    g = _gen(4)
    x = toy_images(10, g, torch.float64)
    a = torch.randint(0, 3, (10,), generator=g)
    a[[0, 2, 3, 7]] = -1
    b = torch.randn(10, 2, generator=g, dtype=torch.float64)
    b[[1, 2]] = NAN
    b[5, 1] = NAN
    c = torch.randint(0, 2, (10, 2), generator=g).double()
    c[[4, 8]] = NAN
    if drop_c:
        c[:] = NAN  # task c has no label in this batch
    return x, {"a": a, "b": b, "c": c}


def _subset_grads(net, x, y, present):
    """Each present task's gradient from a forward of its labelled samples only (plain torch losses)."""
    params = [p for _, p in net.named_parameters()]
    out = {}
    for t in present:
        if t == "a":
            rows = y["a"] != -1
            loss = F.cross_entropy(net(x[rows], tasks=["a"])["a"], y["a"][rows])
        else:
            rows = (~torch.isnan(y[t])).any(1)
            pred = net(x[rows], tasks=[t])[t]
            keep = ~torch.isnan(y[t][rows])
            if t == "b":
                loss = (pred[keep] - y[t][rows][keep]).square().mean()
            else:
                loss = F.binary_cross_entropy_with_logits(pred[keep], y[t][rows][keep])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[t] = {n: torch.zeros_like(p) if gr is None else gr for (n, p), gr in zip(net.named_parameters(), grads)}
    return out


def _flat(grads, names):
    return torch.cat([grads[n].reshape(-1) for n in names]).numpy()


def _balanced(net, balancer, x, y):
    net.zero_grad(set_to_none=True)
    losses, _ = labelled_losses(net(x), y, TASKS)
    b = create_balancer(balancer)
    b.prepare(net)
    b.backward(losses, net)
    b.detach()
    return sorted(losses), {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("balancer", ["equal", "mgda", "pcgrad"])
@pytest.mark.parametrize("drop_c", [False, True])
def test_balanced_gradients_equal_the_labelled_subsets(balancer, drop_c):
    net = _network()
    x, y = _batch(drop_c)
    present, grads = _balanced(net, balancer, x, y)
    assert present == (["a", "b"] if drop_c else ["a", "b", "c"])
    ref = _subset_grads(net, x, y, present)
    trunk = [n for n, _ in net.named_parameters() if n.startswith("blocks.")]
    g = np.stack([_flat(ref[t], trunk) for t in present])
    if balancer == "equal":
        expected = g.sum(0)
    elif balancer == "mgda" and drop_c:  # two tasks: Sener & Koltun's closed form
        w = np.clip((g[1] - g[0]) @ g[1] / ((g[0] - g[1]) @ (g[0] - g[1])), 0, 1)
        expected = w * g[0] + (1 - w) * g[1]
    elif balancer == "mgda":  # the min-norm point of three: checked by its optimality conditions below
        expected = None
    elif drop_c:  # PCGrad with two tasks: each projected off the other when they conflict
        dot = g[0] @ g[1]
        proj = [g[i] - (min(dot, 0.0) / (g[1 - i] @ g[1 - i])) * g[1 - i] for i in range(2)]
        expected = proj[0] + proj[1]
    else:
        expected = None
    got = _flat(grads, trunk)
    if expected is not None:
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-7 * np.abs(expected).max())
    elif balancer == "mgda":  # the min-norm element d of the hull: in it, and <d, g_t> >= |d|^2 for every t
        alpha, *_ = np.linalg.lstsq(g.T, got, rcond=None)
        np.testing.assert_allclose(g.T @ alpha, got, rtol=1e-7, atol=1e-7 * np.abs(got).max())
        assert alpha.min() > -1e-6 and abs(alpha.sum() - 1) < 1e-6
        assert (g @ got >= (got @ got) * (1 - 1e-6)).all()
    else:  # PCGrad, three tasks: the update lies in the span of the labelled subsets' gradients
        coef, *_ = np.linalg.lstsq(g.T, got, rcond=None)
        np.testing.assert_allclose(g.T @ coef, got, rtol=1e-7, atol=1e-7 * np.abs(got).max())
    for j, t in enumerate(t.name for t in TASKS):  # heads: their own task's gradient, none without labels
        names = [n for n, _ in net.named_parameters() if n.startswith(f"heads.{j}.")]
        if t in present:
            np.testing.assert_allclose(_flat(grads, names), _flat(ref[t], names), rtol=1e-9, atol=1e-12)
        else:
            assert all(grads[n] is None for n in names)


# ---------------------------------------------------------------------- training end to end
def _split(n, seed, label_c: bool):
    g = _gen(seed)
    x = toy_images(n, g)
    a = torch.randint(0, 3, (n,), generator=g)
    x[:, :, :4, :4] += a.view(n, 1, 1, 1).float()
    a[torch.rand(n, generator=g) < 0.3] = -1
    b = x.mean((1, 2, 3)).view(n, 1).repeat(1, 2)
    b[torch.rand(n, generator=g) < 0.5, 0] = NAN
    c = (x[:, :, 4:, 4:].mean((1, 2, 3)) > 0).float().view(n, 1).repeat(1, 2)
    if not label_c:
        c[:] = NAN
    return TensorMultiTaskDataset(x, {"a": a, "b": b, "c": c})


BUILT_IN = list_balancers()
"""Every registered balancer (a new one is checked without a line here)."""


@pytest.mark.parametrize("balancer", BUILT_IN)
def test_training_with_a_task_unlabelled_in_train_leaves_its_head_untouched(balancer):
    data = toy_data("partial", TASKS, lambda n, seed: _split(n, seed, label_c=seed > 0), sizes=(96, 48, 48))
    net = tiny_network(TASKS)
    head_c = {k: v.clone() for k, v in net.heads[2].state_dict().items()}
    cfg = TrainConfig(epochs=2, batch_size=16, progress=False, device="cpu")
    result = train(net, data, cfg, create_balancer(balancer))
    for k, v in net.heads[2].state_dict().items():
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(v, head_c[k], rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert result.history[-1]["train_loss"]["c"] == 0.0  # no labelled sample to average over
    assert all(math.isfinite(v) for m in result.val.values() for v in m.values())
    with pytest.raises(ValueError, match="task 'c': no labelled sample"):
        evaluate(net, data.train, TASKS)


def test_searches_run_on_partially_labelled_data(tmp_path):
    """AdaShare and the TAG lookahead train on batches where some tasks lack labels (some with none at all)."""
    from nas_mtl.config import build_config
    from nas_mtl.search.adashare import AdaShareConfig, adashare_search
    from nas_mtl.search.affinity import AffinityConfig, measure_affinity

    train_split = _split(64, 0, True)
    train_split.targets["c"][8:] = NAN  # of 8 shuffled batches of 8 per pass, about 3 have no label of c
    data = toy_data("partial", TASKS, lambda n, seed: train_split if seed == 0 else _split(n, seed, True), (64, 32, 32))
    space = tiny_space(depths=(2, 2))
    base = {"epochs": 2, "batch_size": 8, "progress": False, "device": "cpu"}
    cfg = build_config(AdaShareConfig, {**base, "warmup_epochs": 1, "weight_steps": 8, "policy_steps": 4})
    result = adashare_search(data, space, cfg, tmp_path / "adashare")
    space.check_graph(result.graph)
    history = json.loads((tmp_path / "adashare" / "policy_history.json").read_text())["history"]
    assert all(math.isfinite(v) for r in history for v in r["train_loss"].values())
    tag = measure_affinity(data, space, build_config(AffinityConfig, {**base, "epochs": 2}), tmp_path)
    assert np.isfinite(tag.matrix).all() and tag.matrix.shape == (3, 3)
    assert 0 < tag.samples < 16  # steps without a label of c are not measured
