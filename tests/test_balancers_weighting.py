"""Loss-weighting balancers (uncertainty, DWA, RLW, FAMO) against the papers' formulas and the authors' code.

References: autograd of each paper's loss on a float64 network; Adam written out from Kingma & Ba (2015,
Algorithm 1, with PyTorch's L2 ``weight_decay`` added to the gradient); the MTAN code's DWA formula; and
FAMO's update re-typed from the authors' ``famo.py`` (their ``FAMO`` class), run side by side with ours.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_network, toy_data, toy_images

from nas_mtl.balancing import create_balancer
from nas_mtl.balancing.weighting import DWA, FAMO, FAMO_EPS, RLW, GradNorm, UncertaintyWeighting
from nas_mtl.data import TensorMultiTaskDataset
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.tasks import RegressionTask
from nas_mtl.train import TrainConfig, train

TASKS = (RegressionTask("a", 1), RegressionTask("b", 1), RegressionTask("c", 1))
NAMES = [t.name for t in TASKS]
F64_RTOL = 1e-10
"""float64 sums of a few hundred terms taken in another order: ~1e-14 relative, far below this."""


def _network(seed: int = 0) -> MultiTaskNetwork:
    # eval: BatchNorm uses its running statistics, the forward pass is deterministic
    return tiny_network(TASKS, seed=seed).double().eval()


def _batch(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = toy_images(n, g, torch.float64)
    y = {t: torch.randn(n, 1, generator=g, dtype=torch.float64) * (1 + i) for i, t in enumerate(NAMES)}
    return x, y


def _losses(net, x, y, tasks=NAMES):
    out = net(x)
    return {t: F.mse_loss(out[t], y[t]) for t in tasks}


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _reference_grads(net, loss_fn, batch=None):
    """Gradients of the scalar ``loss_fn(losses)`` by plain autograd (on ``batch``, default ``_batch()``)."""
    net.zero_grad(set_to_none=True)
    loss_fn(_losses(net, *(batch or _batch()))).backward()
    grads = _grads(net)
    net.zero_grad(set_to_none=True)
    return grads


def _assert_grads(got, want):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=F64_RTOL, atol=F64_RTOL * float(want[k].abs().max()))


class Adam:
    """Kingma & Ba (2015), Algorithm 1, on a float64 vector; PyTorch's ``weight_decay`` adds λθ to the gradient."""

    def __init__(self, theta, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
        self.theta, self.lr, self.wd, (self.b1, self.b2), self.eps = (
            np.array(theta, float),
            lr,
            weight_decay,
            betas,
            eps,
        )
        self.m, self.v, self.t = np.zeros_like(self.theta), np.zeros_like(self.theta), 0

    def step(self, grad, mask=None):
        mask = np.ones_like(self.theta, bool) if mask is None else mask  # entries without a gradient are skipped
        g = np.asarray(grad, float) + self.wd * self.theta
        self.t += 1
        self.m[mask] = self.b1 * self.m[mask] + (1 - self.b1) * g[mask]
        self.v[mask] = self.b2 * self.v[mask] + (1 - self.b2) * g[mask] ** 2
        m_hat, v_hat = self.m / (1 - self.b1**self.t), self.v / (1 - self.b2**self.t)
        self.theta[mask] -= self.lr * m_hat[mask] / (np.sqrt(v_hat[mask]) + self.eps)
        return self.theta


# ---------------------------------------------------------------------- uncertainty weighting
def test_uncertainty_gradient_and_log_variance_updates_follow_kendall_et_al():
    """The network gradient is that of Σ ½(e^{-s} L + s); s moves by Adam on ∂/∂s of the same loss."""
    net, balancer = _network(), UncertaintyWeighting(lr=0.1, init=0.3)
    balancer.prepare(net)
    s = np.full(3, 0.3)
    adam = Adam(s, lr=0.1)
    for step in range(3):
        losses = _losses(net, *_batch())
        values = np.array([float(losses[t].detach()) for t in NAMES])
        net.zero_grad(set_to_none=True)
        weights = balancer.backward(losses, net)
        got = _grads(net)
        np.testing.assert_allclose([weights[t] for t in NAMES], 0.5 * np.exp(-s), rtol=1e-15)
        sv = torch.tensor(s, requires_grad=True)
        want = _reference_grads(
            net, lambda ls, sv=sv: sum(0.5 * (torch.exp(-sv[i]) * ls[t] + sv[i]) for i, t in enumerate(NAMES))
        )
        _assert_grads(got, want)
        ds = torch.autograd.grad(sum(0.5 * (torch.exp(-sv[i]) * values[i] + sv[i]) for i in range(3)), sv)[0]
        balancer.after_step(lambda: pytest.fail("uncertainty weighting needs no extra forward pass"))
        s = adam.step(ds.numpy()).copy()
        np.testing.assert_allclose([float(balancer.log_var[t].detach()) for t in NAMES], s, rtol=1e-12)
        assert step < 2 or abs(s - 0.3).max() > 0.05  # it did move


def test_uncertainty_leaves_an_absent_tasks_variance_and_adam_state_alone():
    net, balancer = _network(), UncertaintyWeighting(lr=0.1)
    balancer.prepare(net)
    adam = Adam(np.zeros(3), lr=0.1)
    for present in (NAMES, ["a", "b"], NAMES):
        losses = _losses(net, *_batch(), tasks=present)
        values = {t: float(v.detach()) for t, v in losses.items()}
        net.zero_grad(set_to_none=True)
        weights = balancer.backward(losses, net)
        assert list(weights) == present
        theta = adam.theta
        grad = np.array([0.5 - 0.5 * math.exp(-theta[i]) * values.get(t, 0.0) for i, t in enumerate(NAMES)])
        adam.step(grad, mask=np.array([t in present for t in NAMES]))
        balancer.after_step(lambda: {})
    # per-parameter Adam: c's step count is 2, not 3 (torch's Adam keeps one step counter per parameter)
    assert float(balancer._optimizer.state[balancer.log_var["c"]]["step"]) == 2
    np.testing.assert_allclose([float(balancer.log_var[t].detach()) for t in ("a", "b")], adam.theta[:2], rtol=1e-12)


# ---------------------------------------------------------------------- DWA
def test_dwa_weights_follow_the_mtan_formula():
    """w_t = T exp(r_t / temp) / Σ exp(r_j / temp), r_t = L_t(e-1) / L_t(e-2); 1 for the first two epochs."""
    balancer = DWA(temperature=2.0)
    epochs = [{"a": 2.0, "b": 1.0, "c": 0.5}, {"a": 1.0, "b": 0.9, "c": 0.6}, {"a": 0.8, "b": 0.3, "c": 0.6}]
    loss = dict.fromkeys(NAMES, 1.0)
    assert balancer.weights_for(loss, None) == dict.fromkeys(NAMES, 1.0)
    for e, record in enumerate(epochs):
        balancer.end_epoch(record)
        if e == 0:
            assert balancer.weights_for(loss, None) == dict.fromkeys(NAMES, 1.0)
            continue
        r = np.array([record[t] / epochs[e - 1][t] for t in NAMES])
        want = 3 * np.exp(r / 2.0) / np.exp(r / 2.0).sum()
        np.testing.assert_allclose([balancer.weights_for(loss, None)[t] for t in NAMES], want, rtol=1e-14)


def _data(n_train=64, label_c=True):
    def split(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = toy_images(n, g)
        y = {t: x[:, :, : 2 + 2 * i].mean((1, 2, 3)).view(n, 1) * (1 + i) for i, t in enumerate(NAMES)}
        if not label_c and seed == 0:  # no label of c in the training split
            y["c"][:] = float("nan")
        return TensorMultiTaskDataset(x, y)

    return toy_data("toy", TASKS, split, sizes=(n_train, 32, 32))


def _float_net(seed=0):
    return tiny_network(TASKS, seed=seed)


def test_the_trainer_gives_dwa_each_epochs_mean_training_losses():
    balancer = DWA()
    result = train(_float_net(), _data(), TrainConfig(epochs=3, batch_size=16, progress=False, device="cpu"), balancer)
    last, before = result.history[-1]["train_loss"], result.history[-2]["train_loss"]
    r = np.array([last[t] / before[t] for t in NAMES])
    np.testing.assert_allclose(
        [balancer.weights[t] for t in NAMES], 3 * np.exp(r / 2) / np.exp(r / 2).sum(), rtol=1e-12
    )


# ---------------------------------------------------------------------- RLW
def test_rlw_draws_softmax_of_standard_normals_from_its_seed():
    net, balancer = _network(), RLW(seed=5)
    balancer.prepare(net)
    g = torch.Generator().manual_seed(5)
    seen = []
    for present in (NAMES, NAMES, ["a", "c"]):
        net.zero_grad(set_to_none=True)
        weights = balancer.backward(_losses(net, *_batch(), tasks=present), net)
        got = _grads(net)
        z = torch.randn(len(present), generator=g, dtype=torch.float64).numpy()
        np.testing.assert_allclose([weights[t] for t in present], np.exp(z) / np.exp(z).sum(), rtol=1e-14)
        want = _reference_grads(net, lambda ls, w=weights: sum(w[t] * ls[t] for t in w))
        _assert_grads(got, want)
        seen.append(weights)
    assert seen[0] != seen[1]


# ---------------------------------------------------------------------- FAMO
class AuthorsFAMO:
    """FAMO as in the authors' ``famo.py`` (Liu et al. 2023), on a loss vector; float64 logits here."""

    def __init__(self, n_tasks, gamma=0.01, w_lr=0.025, max_norm=1.0):
        self.min_losses = torch.zeros(n_tasks, dtype=torch.float64)
        self.w = torch.tensor([0.0] * n_tasks, dtype=torch.float64, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)
        self.max_norm = max_norm

    def get_weighted_loss(self, losses):
        self.prev_loss = losses
        z = F.softmax(self.w, -1)
        D = losses - self.min_losses + 1e-8
        c = (z / D).sum().detach()
        return (D.log() * z / c).sum()

    def update(self, curr_loss):
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (curr_loss - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()

    def backward(self, losses, shared_parameters):
        loss = self.get_weighted_loss(losses)
        loss.backward()
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(shared_parameters, self.max_norm)


@pytest.mark.parametrize("max_norm", [1.0, 0.0])
def test_famo_trains_exactly_as_the_authors_code(max_norm):
    """Five SGD steps on the same batches: the same network weights and logits as the authors' FAMO loop
    (backward, clip the shared gradient, step, recompute the losses on the batch, update)."""
    nets = [_network(), _network()]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets]
    ours = FAMO(gamma=0.01, lr=0.025, max_norm=max_norm).prepare(nets[0])
    theirs = AuthorsFAMO(3, max_norm=max_norm)
    trunk = [p for row in nets[1].blocks for p in row[0].parameters()]
    for step in range(5):
        x, y = _batch(step)
        opts[0].zero_grad(set_to_none=True)
        ours.backward(_losses(nets[0], x, y), nets[0])
        opts[0].step()
        ours.after_step(lambda x=x, y=y: _losses(nets[0], x, y))
        opts[1].zero_grad(set_to_none=True)
        theirs.backward(torch.stack(list(_losses(nets[1], x, y).values())), trunk)
        opts[1].step()
        with torch.no_grad():
            theirs.update(torch.stack(list(_losses(nets[1], x, y).values())))
        torch.testing.assert_close(ours.logits.detach(), theirs.w.detach(), rtol=1e-9, atol=1e-12)
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    assert ours.logits.detach().abs().max() > 0.01  # the weights did adapt


def test_famo_weight_update_by_hand():
    """δ_t = log L_t(before) − log L_t(after); the logits' gradient is J_softmaxᵀ δ = z ⊙ (δ − zᵀδ); Adam with
    L2 weight decay γ; the weights z_t / (c L_t), c = Σ z_t / L_t."""
    balancer = FAMO(gamma=0.1, lr=0.5)
    balancer._ensure(NAMES)
    adam = Adam(np.zeros(3), lr=0.5, weight_decay=0.1)
    xi = np.zeros(3)
    schedule = [([3.0, 1.0, 0.5], [2.0, 0.99, 0.5]), ([2.0, 1.0, 0.4], [1.5, 0.5, 0.41]), ([1.0, 0.5, 0.4], None)]
    for before, after in schedule:
        z = np.exp(xi) / np.exp(xi).sum()
        d = np.array(before) + FAMO_EPS
        weights = balancer.weights_for(dict(zip(NAMES, before)), None)
        np.testing.assert_allclose([weights[t] for t in NAMES], z / d / (z / d).sum(), rtol=1e-13)
        if after is None:
            break
        delta = np.log(d) - np.log(np.array(after) + FAMO_EPS)
        xi = adam.step(z * (delta - z @ delta)).copy()
        balancer.update(dict(zip(NAMES, after)))
        np.testing.assert_allclose(balancer.logits.detach().numpy(), xi, rtol=1e-12, atol=1e-15)
    assert np.argmin(xi) == 0  # the task whose loss fell fastest gets the smallest weight


def test_famo_refuses_negative_losses_and_an_absent_task_gets_no_delta():
    balancer = FAMO()
    balancer._ensure(NAMES)
    with pytest.raises(ValueError, match=r"famo: needs positive losses .*'b'"):
        balancer.weights_for({"a": 1.0, "b": -0.5}, None)
    weights = balancer.weights_for({"a": 1.0, "c": 2.0}, None)
    assert set(weights) == {"a", "c"}
    balancer.update({"a": 0.5, "c": 2.0})
    z = np.full(3, 1 / 3)
    delta = np.array([math.log((1 + FAMO_EPS) / (0.5 + FAMO_EPS)), 0.0, 0.0])
    grad = z * (delta - z @ delta)
    np.testing.assert_allclose(balancer.logits.detach().numpy(), Adam(np.zeros(3), 0.025, 0.01).step(grad), rtol=1e-12)


def test_famo_clips_only_the_shared_gradient():
    """Shared parameters: the weighted gradient scaled by torch's clip coefficient max_norm / (norm + 1e-6);
    heads: the weighted gradient as it is."""
    net, balancer = _network(), FAMO(max_norm=1e-3)
    balancer.prepare(net)
    net.zero_grad(set_to_none=True)
    weights = balancer.backward(_losses(net, *_batch()), net)
    got = _grads(net)
    want = _reference_grads(net, lambda ls: sum(weights[t] * ls[t] for t in NAMES))
    shared = {n for n, _ in net.named_parameters() if n.startswith("blocks.")}
    norm = float(torch.nn.utils.get_total_norm([want[n] for n in shared]))
    assert norm > 1e-2  # so the clip is active
    _assert_grads(got, {n: g * (1e-3 / (norm + 1e-6)) if n in shared else g for n, g in want.items()})


# ---------------------------------------------------------------------- GradNorm
def test_gradnorm_step_follows_the_papers_equations():
    """Chen et al. 2018, Algorithm 1, by hand: G_i = w_i ||∇_W L_i|| on the last shared block W,
    r_i = (L_i / L_i(0)) / mean, target mean(G) r_i^α held constant, L_grad = Σ |G_i − target_i| differentiated
    by autograd w.r.t. w; Adam on w; renormalised to Σ w = T. The network gets the gradient of Σ w_i L_i."""
    net, balancer = _network(), GradNorm(alpha=1.5, lr=0.1)
    balancer.prepare(net)
    w = np.ones(3)
    adam = Adam(w, lr=0.1)
    initial = None
    trunk_end = [p for p in net.blocks[-1][0].parameters()]
    for step in range(3):
        x, y = _batch(step)
        losses = _losses(net, x, y)
        values = np.array([float(losses[t].detach()) for t in NAMES])
        norms = np.array(
            [
                float(torch.nn.utils.get_total_norm(torch.autograd.grad(losses[t], trunk_end, retain_graph=True)))
                for t in NAMES
            ]
        )
        initial = values if initial is None else initial
        net.zero_grad(set_to_none=True)
        weights = balancer.backward(losses, net)
        got = _grads(net)
        np.testing.assert_allclose([weights[t] for t in NAMES], w, rtol=1e-15)
        want = _reference_grads(net, lambda ls, w=w: sum(w[i] * ls[t] for i, t in enumerate(NAMES)), (x, y))
        _assert_grads(got, want)
        wt = torch.tensor(w, requires_grad=True)
        big_g = wt * torch.tensor(norms)
        rate = torch.tensor(values / initial)
        target = (big_g.mean() * (rate / rate.mean()) ** 1.5).detach()
        grad_w = torch.autograd.grad((big_g - target).abs().sum(), wt)[0].numpy()
        balancer.after_step(lambda: pytest.fail("gradnorm needs no extra forward pass"))
        w = adam.step(grad_w).copy()
        w = w * 3 / w.sum()
        adam.theta = w.copy()  # the renormalised weights are Adam's parameters from here on
        np.testing.assert_allclose(balancer.weights.detach().numpy(), w, rtol=1e-12)
    assert abs(w - 1).max() > 0.05  # the weights moved


# ---------------------------------------------------------------------- in training
LOSS_WEIGHTING = ["uncertainty", "dwa", "rlw", "famo", "gradnorm"]


@pytest.mark.parametrize("name", LOSS_WEIGHTING)
def test_killed_run_resumes_to_the_same_weights(name, tmp_path, monkeypatch):
    """The balancer's state (log variances, epoch losses, generator, logits and their Adam) is checkpointed."""
    from test_train import _train_killed_in_epoch_two

    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, progress=False, device="cpu")
    reference = _float_net()
    train(reference, _data(), cfg, create_balancer(name))
    _train_killed_in_epoch_two(monkeypatch, _float_net(), _data(), cfg, create_balancer(name), run_dir=tmp_path)
    resumed = _float_net(seed=99)
    train(resumed, _data(), cfg, create_balancer(name), run_dir=tmp_path)
    for (k, v), (k2, v2) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSS_WEIGHTING)
def test_a_task_without_labels_gets_no_update_and_no_nan(name):
    net = _float_net()
    head_c = {k: v.clone() for k, v in net.heads[2].state_dict().items()}
    balancer = create_balancer(name)
    result = train(
        net, _data(label_c=False), TrainConfig(epochs=3, batch_size=16, progress=False, device="cpu"), balancer
    )
    for k, v in net.heads[2].state_dict().items():
        torch.testing.assert_close(v, head_c[k], rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert all(math.isfinite(v) for r in result.history for v in r["train_loss"].values())
    if name == "uncertainty":
        assert float(balancer.log_var["c"].detach()) == 0.0
    if name == "famo":
        assert torch.isfinite(balancer.logits).all()
    if name == "gradnorm":
        assert "c" not in balancer.initial and float(balancer.weights.detach().sum()) == pytest.approx(3.0)


def test_famo_recompute_leaves_batchnorm_statistics_as_one_pass_would():
    """FAMO's extra forward pass (training mode) does not count its batch twice in the running statistics."""
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.0, progress=False, device="cpu")  # lr 0: weights stay fixed
    nets = [_float_net(), _float_net()]
    train(nets[0], _data(), cfg, create_balancer("famo:max_norm=0"))
    train(nets[1], _data(), cfg, create_balancer("equal"))
    for (k, v), (_, w) in zip(nets[0].state_dict().items(), nets[1].state_dict().items()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_options_are_checked_and_round_trip_through_the_spec():
    for spec in (
        "uncertainty:init=-0.5,lr=0.01",
        "dwa:temperature=4.0",
        "rlw:seed=3",
        "famo:gamma=0.001,lr=0.025,max_norm=0.0",
    ):
        b = create_balancer(spec)
        assert create_balancer(b.spec).spec == b.spec
    with pytest.raises(ValueError, match="dwa: temperature must be > 0"):
        create_balancer("dwa:temperature=0")
    with pytest.raises(ValueError, match="famo: gamma must be a number >= 0"):
        create_balancer("famo:gamma=-1")
    with pytest.raises(TypeError, match="rlw: seed must be an integer"):
        create_balancer("rlw:seed=1.5")


@pytest.mark.parametrize("name", LOSS_WEIGHTING)
def test_a_reused_balancer_starts_afresh_at_prepare(name):
    """One instance trained twice gives the same network as a fresh instance (state reset by prepare; a resumed
    run loads its state after prepare)."""
    balancer = create_balancer(f"{name}:seed=1" if name == "rlw" else name)
    train(_float_net(), _data(), CFG3, balancer)
    again, fresh = _float_net(), _float_net()
    train(again, _data(), CFG3, balancer)
    train(fresh, _data(), CFG3, create_balancer(f"{name}:seed=1" if name == "rlw" else name))
    for (k, v), (_, w) in zip(again.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


CFG3 = TrainConfig(epochs=3, batch_size=16, progress=False, device="cpu")


def test_famo_works_on_a_plain_module_and_skips_a_non_finite_update():
    module = torch.nn.Linear(3, 2)
    balancer = FAMO().prepare(module)
    x = torch.randn(4, 3)
    out = module(x)
    balancer.backward({"u": out[:, 0].pow(2).mean(), "v": out[:, 1].pow(2).mean()}, module)
    before = balancer.logits.detach().clone()
    balancer.update({"u": float("nan"), "v": 1.0})
    assert torch.equal(balancer.logits.detach(), before)
    balancer.update({"u": 0.5, "v": -3.0})  # a negative loss after the step: log undefined, no update either
    assert torch.equal(balancer.logits.detach(), before)
