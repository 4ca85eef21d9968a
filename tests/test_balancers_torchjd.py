"""Gram-matrix balancers against torchjd's implementations (written by others) and against their definitions.

Every method maps the Gram matrix G = J Jᵀ of the task gradients to weights w; the update is Jᵀ w. The same
float64 Jacobians go to torchjd's aggregator and to ours; the updates are compared. Jacobians: generic,
conflicting (a task gradient nearly opposite another), rank-deficient (more tasks than dimensions, a duplicated
task) and badly scaled (gradient norms 1e-3 .. 1e3).
"""

import numpy as np
import pytest
import torch
from helpers import tiny_network, toy_images

from nas_mtl.balancing import create_balancer
from nas_mtl.balancing import gramian as gm
from nas_mtl.tasks import RegressionTask, labelled_losses

tj = pytest.importorskip("torchjd.aggregation", reason="torchjd is a test dependency: pip install -e '.[test]'")
tjl = pytest.importorskip("torchjd.linalg")

EPS = np.finfo(np.float64).eps


def _jacobians():
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    generic = randn(3, 40)
    conflict = randn(3, 40)
    conflict[1] = -0.9 * conflict[0] + 0.2 * randn(40)
    duplicate = randn(4, 40)
    duplicate[3] = duplicate[1]
    return {
        "generic": generic,
        "five_tasks": randn(5, 40),
        "conflicting": conflict,
        "more_tasks_than_dims": randn(4, 3),
        "duplicated_task": duplicate,
        "badly_scaled": randn(4, 40) * torch.tensor([1e-3, 1.0, 1e3, 10.0], dtype=torch.float64)[:, None],
    }


JACOBIANS = _jacobians()
FULL_RANK = ("generic", "five_tasks", "conflicting", "badly_scaled")


def _cond(j: torch.Tensor) -> float:
    s = torch.linalg.svdvals(j)
    s = s[s > s[0] * len(s) * EPS]
    return float(s[0] / s[-1])


def _close(ours: np.ndarray, theirs: np.ndarray, rtol: float) -> None:
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= rtol * scale, (np.abs(ours - theirs).max() / scale, rtol)


def _exact_rtol(j: torch.Tensor) -> float:
    """Two exact float64 solves of one linear-algebra problem differ by about eps x cond(G) = eps x cond(J)²
    (pseudo-inverse, eigen-decomposition and active-set QP alike); a factor 100 for the T x T operations."""
    return 100 * EPS * _cond(j) ** 2


@pytest.mark.parametrize("case", list(JACOBIANS))
def test_imtl_g_matches_torchjd(case):
    j = JACOBIANS[case]
    ours = gm.imtl_g_weights((j @ j.T).numpy()) @ j.numpy()
    _close(ours, tj.IMTLG()(j).numpy(), _exact_rtol(j))


@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
@pytest.mark.parametrize("case", list(JACOBIANS))
def test_aligned_mtl_matches_torchjd_times_t(case, scale):
    """torchjd averages the aligned gradients; the authors' code (and ours) sums them: a factor T."""
    j = JACOBIANS[case]
    ours = gm.aligned_mtl_weights((j @ j.T).numpy(), scale) @ j.numpy()
    _close(ours / len(j), tj.AlignedMTL(scale_mode=scale)(j).numpy(), _exact_rtol(j))


@pytest.mark.parametrize("case", list(JACOBIANS))
def test_upgrad_matches_torchjd(case):
    """torchjd's quadprog needs a positive-definite G: unregularised where G is, else with a ridge of 1e-12 x its
    trace, which moves the update by about that much relative to the largest gradient."""
    j = JACOBIANS[case]
    reg = 0.0 if case in FULL_RANK else 1e-12
    theirs = tj.UPGrad(projector=tjl.QuadprogProjector(norm_eps=0.0, reg_eps=reg))(j).numpy()
    ours = gm.upgrad_weights((j @ j.T).numpy()) @ j.numpy()
    _close(ours, theirs, max(_exact_rtol(j), 1e-9) if case in FULL_RANK else 1e-7)
    # and the defining property: no task's loss increases to first order (the update is in the dual cone)
    assert (j.numpy() @ ours >= -1e-12 * np.abs(j.numpy() @ ours).max()).all()


@pytest.mark.parametrize("case", list(JACOBIANS))
def test_cagrad_matches_torchjd(case):
    """Both solve one convex problem (SLSQP here, CLARABEL's interior point there) to ~1e-9 in w. Where the
    optimum is a vertex at a tiny gradient, the update divides by that gradient's norm and magnifies the solvers'
    error in w: there the objective values are compared (ours no worse), else the updates."""
    j = JACOBIANS[case]
    gram = (j @ j.T).numpy()
    ours = gm.cagrad_weights(gram, c=0.4, rescale=0) @ j.numpy()
    theirs = tj.CAGrad(c=0.4, norm_eps=0.0)(j).numpy()
    if case != "badly_scaled":  # both solvers reach the optimum value to ~1e-8, so w (a flat minimum) to ~1e-4
        _close(ours, theirs, 1e-3)
    n = len(gram)
    b = np.full(n, 1.0 / n)
    radius = 0.4 * np.sqrt(b @ gram @ b)

    def objective(update):  # the inner problem's value at the w behind an update: g_w = (update - g0) / λ
        w, *_ = np.linalg.lstsq(j.numpy().T, update, rcond=None)
        w = (w - b) / max((w - b).sum(), 1e-300)
        return w @ gram @ b + radius * np.sqrt(max(w @ gram @ w, 0.0))

    if case in FULL_RANK:
        assert objective(ours) <= objective(theirs) + 1e-7 * abs(objective(theirs))
    assert np.allclose(gm.cagrad_weights(gram, 0.4, 1), gm.cagrad_weights(gram, 0.4, 0) / 1.16, rtol=1e-12)


@pytest.mark.parametrize("case", list(JACOBIANS))
def test_nash_mtl_solves_the_bargaining_equation_and_matches_torchjd_where_it_converges(case):
    """Ours is exact: G α = 1/α to float64 precision (for G normalised as the authors do). torchjd runs the
    authors' 20 convex-concave steps, which stop at ||G α − 1/α|| < 1e-3 or do not converge on hard cases:
    compared where its own residual says it converged, to the tolerance that residual allows."""
    j = JACOBIANS[case]
    gram = (j @ j.T).numpy()
    try:
        alpha = gm.nash_mtl_weights(gram, max_norm=0.0)
    except FloatingPointError:  # no solution: a non-negative combination of the gradients vanishes
        assert case in ("more_tasks_than_dims",), case
        return
    np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-9)
    theirs_update = tj.NashMTL(n_tasks=len(j), max_norm=0.0)(j).numpy()
    theirs, *_ = np.linalg.lstsq(j.numpy().T, theirs_update, rcond=None)
    residual = np.linalg.norm(gram @ theirs - 1 / np.clip(theirs, 1e-300, None))
    if case in FULL_RANK and residual < 1e-3 * np.linalg.norm(1 / alpha):
        # α' = α + δ with (G + diag(1/α²)) δ ≈ residual to first order: |δ| ≤ residual x ||(G + diag(1/α²))⁻¹||
        bound = residual * np.linalg.norm(np.linalg.inv(gram + np.diag(1 / alpha**2)), 2)
        assert np.abs(theirs - alpha).max() <= 2 * bound + 1e-12
    capped = gm.nash_mtl_weights(gram, max_norm=1e-3)
    assert np.sqrt(capped @ gram @ capped) == pytest.approx(1e-3, rel=1e-12)


def test_nash_mtl_cases_torchjd_converged_on():
    """The comparison above must not be vacuous: torchjd converged on some of the Jacobians."""
    converged = 0
    for case in FULL_RANK:
        j = JACOBIANS[case]
        g = (j @ j.T).numpy()
        w, *_ = np.linalg.lstsq(j.numpy().T, tj.NashMTL(n_tasks=len(j), max_norm=0.0)(j).numpy(), rcond=None)
        converged += np.linalg.norm(g @ w - 1 / np.clip(w, 1e-300, None)) < 1e-3 * np.linalg.norm(1 / w)
    assert converged >= 2


# ---------------------------------------------------------------------- the registered balancers on a network
TASKS = tuple(RegressionTask(t, 2) for t in ("x", "y", "z"))
AGGREGATORS = {
    "imtl-g": lambda: tj.IMTLG(),
    "upgrad": lambda: tj.UPGrad(projector=tjl.QuadprogProjector(norm_eps=0.0, reg_eps=0.0)),
    "aligned-mtl": lambda: tj.AlignedMTL(),
    "cagrad:rescale=0": lambda: tj.CAGrad(c=0.4, norm_eps=0.0),
}


def _hard_sharing_batch(widths, depths):
    """A float64 hard-sharing net on tasks x, y, z (eval mode), a batch for it and its trunk parameters."""
    net = tiny_network(TASKS, widths=widths, depths=depths).double().eval()
    g = torch.Generator().manual_seed(1)
    x = toy_images(8, g, torch.float64)
    y = {t.name: torch.randn(8, 2, generator=g, dtype=torch.float64) * (k + 1) for k, t in enumerate(TASKS)}
    return net, x, y, [p for n, p in net.named_parameters() if n.startswith("blocks.")]


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_balancers_on_hard_sharing_equal_torchjd_on_the_trunk_jacobian(name):
    net, x, y, trunk = _hard_sharing_batch(widths=(4,), depths=(1,))
    losses, _ = labelled_losses(net(x), y, TASKS)
    jac = torch.stack(
        [torch.cat([d.reshape(-1) for d in torch.autograd.grad(v, trunk, retain_graph=True)]) for v in losses.values()]
    )
    expected = AGGREGATORS[name]()(jac).numpy()
    net.zero_grad(set_to_none=True)
    balancer = create_balancer(name)
    balancer.prepare(net)
    weights = balancer.backward(labelled_losses(net(x), y, TASKS)[0], net)
    got = torch.cat([p.grad.reshape(-1) for p in trunk]).numpy()
    if name == "aligned-mtl":
        expected = expected * len(TASKS)
    _close(got, expected, 1e-3 if name.startswith("cagrad") else max(_exact_rtol(jac), 1e-10))
    assert set(weights) == {"x", "y", "z"}


UB_AGGREGATORS = {"imtl-g-ub": (lambda: tj.IMTLG(), 1), "aligned-mtl-ub": (lambda: tj.AlignedMTL(), len(TASKS))}


@pytest.mark.parametrize("name", list(UB_AGGREGATORS))
def test_ub_variants_equal_torchjd_on_the_representation_jacobian_then_one_trunk_backward(name):
    """IMTL-G on the shared feature (Liu et al. 2021) and Aligned-MTL-UB (Senushkin et al. 2023): torchjd's
    aggregation of the Jacobian w.r.t. the trunk output Z, back-propagated once through the trunk; the heads get
    their own task's gradient."""
    net, x, y, trunk = _hard_sharing_batch(widths=(4, 8), depths=(1, 1))
    captured = []
    hook = net.blocks[-1][0].register_forward_hook(lambda m, a, out: captured.append(out))
    losses, _ = labelled_losses(net(x), y, TASKS)
    z = captured[-1]
    jac = torch.stack([torch.autograd.grad(v, z, retain_graph=True)[0].reshape(-1) for v in losses.values()])
    make, factor = UB_AGGREGATORS[name]
    aggregated = make()(jac) * factor
    expected = torch.cat([d.reshape(-1) for d in torch.autograd.grad(z, trunk, aggregated.view_as(z))]).numpy()
    own = {
        t: torch.autograd.grad(losses[t], list(h.parameters()), retain_graph=True) for t, h in zip(losses, net.heads)
    }
    net.zero_grad(set_to_none=True)
    balancer = create_balancer(name).prepare(net)
    weights = balancer.backward(labelled_losses(net(x), y, TASKS)[0], net)
    hook.remove()
    balancer.detach()
    got = torch.cat([p.grad.reshape(-1) for p in trunk]).numpy()
    _close(got, expected, max(_exact_rtol(jac), 1e-10))
    for t, head in zip(losses, net.heads):
        for p, d in zip(head.parameters(), own[t]):
            torch.testing.assert_close(p.grad, d, rtol=1e-12, atol=1e-15)
    assert set(weights) == {"x", "y", "z"} and balancer.spec.split(":")[0] == name
    assert create_balancer(balancer.spec).spec == balancer.spec
