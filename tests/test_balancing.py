"""Balancers against independent references: scipy QP, closed forms, a direct PCGrad, hand-made gradients."""

import copy
import itertools
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.balancing import (
    MGDA,
    PCGrad,
    create_balancer,
    list_balancers,
    min_norm_2,
    min_norm_weights,
    parse_balancer,
    pcgrad_weights,
)
from nas_mtl.balancing.mgda import mgda_weights
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork

TASKS = ("x", "y", "z")
NORMALIZATIONS = ("none", "l2", "loss", "loss+")
QP_TOL = 1e-4
"""Relative agreement with the SLSQP reference: its α is pinned to ~sqrt(ftol) = 3e-8 (measured: <= 5e-8).
The networks below run in float64, so float rounding (~1e-15) is negligible against it."""
F64_RTOL = 1e-7
"""torch.testing.assert_close's float64 rtol: for one float64 gradient summed in two orders (no solver involved)."""


# ---------------------------------------------------------------------- references
def qp_min_norm(gram: np.ndarray) -> np.ndarray:
    """argmin_{α ∈ simplex} αᵀ G α by scipy's SLSQP (independent of our solver)."""
    n = len(gram)
    res = scipy.optimize.minimize(
        lambda a: a @ gram @ a,
        np.full(n, 1.0 / n),
        jac=lambda a: 2 * gram @ a,
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(n)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert res.status in (0, 8), res.message  # 8: stopped at the line-search precision limit
    assert res.x.min() >= -1e-9 and abs(res.x.sum() - 1) < 1e-9
    return res.x


def direct_pcgrad(grads: np.ndarray, orders) -> np.ndarray:
    """Yu et al. 2020, Algorithm 1, literally: vectors, projections against the original g_j, sum."""
    out = []
    for i, g in enumerate(grads):
        pc = g.copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = pc @ grads[j]
            if dot < 0:
                pc = pc - dot / (grads[j] @ grads[j]) * grads[j]
        out.append(pc)
    return np.sum(out, axis=0)


def conflicting(rng: np.random.Generator, t: int, p: int) -> np.ndarray:
    """Random gradients with pairwise conflicts (a common component plus large opposed ones)."""
    g = rng.normal(size=(t, p)) + rng.normal(size=p) * rng.uniform(-1, 1)
    g[1] -= 2.0 * g[0]
    return g


# ---------------------------------------------------------------------- min-norm solver
def test_two_task_solver_is_the_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g1, g2 = rng.normal(size=(2, 5)) * rng.uniform(0.1, 3, size=(2, 1))
        if rng.random() < 0.3:
            g2 = g1 * rng.uniform(0.2, 2)  # collinear: clipped ends
        expected = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
        gamma, cost = min_norm_2(g1 @ g1, g1 @ g2, g2 @ g2)
        assert gamma == pytest.approx(expected, abs=1e-9)
        combo = gamma * g1 + (1 - gamma) * g2
        assert cost == pytest.approx(combo @ combo, rel=1e-9, abs=1e-12)
        alpha = min_norm_weights(np.stack([g1, g2]) @ np.stack([g1, g2]).T)
        np.testing.assert_allclose(alpha, [expected, 1 - expected], atol=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_min_norm_matches_scipy_qp(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(2, 7))
    g = conflicting(rng, t, int(rng.integers(t + 1, 30)))
    gram = g @ g.T
    alpha, ref = min_norm_weights(gram), qp_min_norm(gram)
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0, abs=1e-12)
    assert alpha @ gram @ alpha <= ref @ gram @ ref * (1 + 1e-9) + 1e-12
    np.testing.assert_allclose(alpha, ref, atol=1e-5)  # strictly convex (t < p): unique minimiser


@pytest.mark.parametrize("seed", range(10))
def test_reference_frank_wolfe_is_close_to_the_optimum(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(3, 7))
    g = conflicting(rng, t, 20)
    gram = g @ g.T
    alpha, ref = min_norm_weights(gram, exact=False), qp_min_norm(gram)
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0, abs=1e-12)
    assert alpha @ gram @ alpha == pytest.approx(ref @ gram @ ref, rel=1e-2)


def test_min_norm_degenerate_inputs():
    np.testing.assert_array_equal(min_norm_weights(np.array([[4.0]])), [1.0])
    same = np.ones((3, 3))  # three identical gradients: any α is optimal
    alpha = min_norm_weights(same)
    assert alpha.min() >= 0 and alpha.sum() == pytest.approx(1.0)
    zero = np.diag([1.0, 0.0, 2.0])  # a zero gradient is Pareto-stationary: all weight on it
    np.testing.assert_allclose(min_norm_weights(zero), [0, 1, 0], atol=1e-12)
    with pytest.raises(FloatingPointError):
        min_norm_weights(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(np.ones((2, 3)))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_mgda_update_is_a_descent_direction_for_every_task(normalization):
    rng = np.random.default_rng(1)
    for _ in range(50):
        t = int(rng.integers(2, 7))
        g = conflicting(rng, t, 40)
        gram = g @ g.T
        assert (gram[np.triu_indices(t, 1)] < 0).any()
        applied, alpha = mgda_weights(gram, rng.uniform(0.1, 3, size=t), normalization)
        d = applied @ g
        assert (g @ d >= -1e-9 * np.abs(gram).max()).all()
        assert alpha.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------------- PCGrad algorithm
@pytest.mark.parametrize("seed", range(20))
def test_pcgrad_weights_match_the_direct_algorithm(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(2, 7))
    g = conflicting(rng, t, 25)
    orders = np.stack([rng.permutation(t) for _ in range(t)])
    np.testing.assert_allclose(pcgrad_weights(g @ g.T, orders) @ g, direct_pcgrad(g, orders), rtol=1e-9, atol=1e-9)


def test_gram_matrix_is_accumulated_over_column_chunks(monkeypatch):
    from nas_mtl.balancing import grouped

    monkeypatch.setattr(grouped, "GRAM_CHUNK", 7)
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))  # 8 chunks, the last one short
    expected = g.double() @ g.double().T
    # float32 products are exact in float64; two orders of summing 50 of them differ by at most
    # 50 eps |g| |g|^T (|g|: elementwise absolute value)
    bound = 50 * torch.finfo(torch.float64).eps * (g.double().abs() @ g.double().abs().T)
    assert ((grouped.gram64(g) - expected).abs() <= bound).all()
    assert (np.abs(grouped.gram_of(g, TASKS, "", "test") - expected.numpy()) <= bound.numpy()).all()
    g[1, 45] = float("inf")  # in the last chunk
    with pytest.raises(FloatingPointError, match=r"\['y'\]"):
        grouped.gram_of(g, TASKS, "", "test")


def test_pcgrad_without_conflicts_is_the_sum():
    g = np.abs(np.random.default_rng(0).normal(size=(4, 6)))
    np.testing.assert_allclose(pcgrad_weights(g @ g.T, np.tile(np.arange(4), (4, 1))), np.ones(4))


# ---------------------------------------------------------------------- on networks
@pytest.fixture(scope="module")
def backbone():
    # stem, s0.b0, s0.b1, s1.b0, s1.b1  (s0.b0, s0.b1, s1.b1 skippable)
    return create_backbone("resnet_small", in_chans=1, input_size=(12, 12), widths=(4, 8), depths=(2, 2))


def _net(backbone, graph) -> MultiTaskNetwork:
    """A float64 network: balancer and reference sum gradients in other orders, exact to float64 rounding."""
    torch.manual_seed(0)
    c = backbone.feature_shape[0]
    heads = {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)) for t in graph.tasks}
    return MultiTaskNetwork(graph, backbone, heads).double()


def _batch(tasks=TASKS):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 12, 12, generator=g, dtype=torch.float64)
    targets = {t: torch.randn(6, 3, generator=g, dtype=torch.float64) * (k + 1) for k, t in enumerate(tasks)}
    return x, targets


def _losses(outputs, targets):
    return {t: (outputs[t] - targets[t]).square().mean() for t in outputs}


def _per_task_grads(net, x, targets):
    """Reference: for each task a fresh forward of a copy and its own backward (no balancer code)."""
    ref = copy.deepcopy(net)
    names = [n for n, _ in ref.named_parameters()]
    out = {}
    for t in net.tasks:
        loss = _losses({t: ref(x, tasks=[t])[t]}, targets)[t]
        grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
        out[t] = {n: (torch.zeros_like(p) if g is None else g) for n, p, g in zip(names, ref.parameters(), grads)}
    losses = {t: float(v.detach()) for t, v in _losses(ref(x), targets).items()}
    return out, losses


def _names_of(net, module):
    ids = {id(p) for p in module.parameters()}
    return [n for n, p in net.named_parameters() if id(p) in ids]


def _flat(grads, names):
    return np.concatenate([grads[n].double().reshape(-1).numpy() for n in names])


def _step(net, balancer, x, targets):
    net.zero_grad(set_to_none=True)
    balancer.prepare(net)
    weights = balancer.backward(_losses(net(x), targets), net)
    return weights, {n: p.grad for n, p in net.named_parameters()}


def _normalizer(normalization, g, loss):
    return {"none": 1.0, "l2": np.linalg.norm(g), "loss": loss, "loss+": loss * np.linalg.norm(g)}[normalization]


def _expected_mgda(ref, losses, names, tasks, normalization):
    g = np.stack([_flat(ref[t], names) for t in tasks])
    n = np.array([_normalizer(normalization, g[i], losses[t]) for i, t in enumerate(tasks)])
    alpha = qp_min_norm((g / n[:, None]) @ (g / n[:, None]).T)
    return (alpha / n) @ g, alpha


def _assert_grad(grads, names, expected, rtol=QP_TOL):
    got = np.concatenate([grads[n].double().reshape(-1).numpy() for n in names])
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def _assert_heads_own(net, grads, ref, tasks=TASKS):
    for j, t in enumerate(tasks):
        names = _names_of(net, net.heads[j])
        _assert_grad(grads, names, _flat(ref[t], names), rtol=F64_RTOL)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_mgda_hard_sharing_is_the_published_update(backbone, normalization):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    ref, losses = _per_task_grads(net, x, targets)
    weights, grads = _step(net, MGDA(normalization=normalization), x, targets)
    trunk = _names_of(net, net.blocks)
    expected, alpha = _expected_mgda(ref, losses, trunk, TASKS, normalization)
    _assert_grad(grads, trunk, expected)
    np.testing.assert_allclose([weights[t] for t in TASKS], alpha, atol=QP_TOL)
    _assert_heads_own(net, grads, ref)


def _tree(backbone):
    # x, y, z share the stem, then {x, y} | {z}
    return SharingGraph.branched(TASKS, backbone.layer_names, [[TASKS]] + [[["x", "y"], ["z"]]] * 4)


def test_mgda_tree_combines_each_group_over_its_own_tasks(backbone):
    net = _net(backbone, _tree(backbone))
    x, targets = _batch()
    ref, losses = _per_task_grads(net, x, targets)
    weights, grads = _step(net, create_balancer("mgda"), x, targets)
    stem = _names_of(net, net.blocks[0])
    xy = [n for layer in range(1, 5) for n in _names_of(net, net.blocks[layer][0])]
    z_only = [n for layer in range(1, 5) for n in _names_of(net, net.blocks[layer][1])]
    expected, alpha = _expected_mgda(ref, losses, stem, TASKS, "none")
    _assert_grad(grads, stem, expected)
    np.testing.assert_allclose([weights[t] for t in TASKS], alpha, atol=QP_TOL)  # the largest group: the stem
    gx, gy = _flat(ref["x"], xy), _flat(ref["y"], xy)
    w = np.clip((gy - gx) @ gy / ((gx - gy) @ (gx - gy)), 0, 1)  # 2-task closed form, x and y only
    _assert_grad(grads, xy, w * gx + (1 - w) * gy)
    _assert_grad(grads, z_only, _flat(ref["z"], z_only), rtol=F64_RTOL)
    _assert_heads_own(net, grads, ref)


def test_pcgrad_hard_sharing_matches_the_direct_algorithm(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    ref, _ = _per_task_grads(net, x, targets)
    trunk = _names_of(net, net.blocks)
    g = np.stack([_flat(ref[t], trunk) for t in TASKS])
    weights, grads = _step(net, PCGrad(seed=5), x, targets)
    got = np.concatenate([grads[n].double().reshape(-1).numpy() for n in trunk])
    w = np.array([weights[t] for t in TASKS])
    np.testing.assert_allclose(got, w @ g, rtol=F64_RTOL, atol=F64_RTOL * np.abs(got).max())
    # the update is Algorithm 1's for one of the possible random orders (each task: 2 orders of the others)
    candidates = [
        direct_pcgrad(g, [np.array(o) for o in orders])
        for orders in itertools.product(*[list(itertools.permutations(range(3)))] * 3)
    ]
    assert min(np.abs(c - got).max() for c in candidates) <= F64_RTOL * np.abs(got).max()
    _assert_heads_own(net, grads, ref)


def test_pcgrad_tree_projects_within_each_group(backbone):
    net = _net(backbone, _tree(backbone))
    x, targets = _batch()
    ref, _ = _per_task_grads(net, x, targets)
    _, grads = _step(net, PCGrad(), x, targets)
    xy = [n for layer in range(1, 5) for n in _names_of(net, net.blocks[layer][0])]
    z_only = [n for layer in range(1, 5) for n in _names_of(net, net.blocks[layer][1])]
    g = np.stack([_flat(ref["x"], xy), _flat(ref["y"], xy)])
    _assert_grad(grads, xy, direct_pcgrad(g, [[0, 1], [1, 0]]))  # two tasks: the order does not matter
    _assert_grad(grads, z_only, _flat(ref["z"], z_only), rtol=F64_RTOL)
    _assert_heads_own(net, grads, ref)


def test_pcgrad_order_is_seeded(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    runs = [[_step(net, b, x, targets)[0] for _ in range(3)] for b in (PCGrad(seed=1), PCGrad(seed=1))]
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------- MGDA-UB
def _representation_reference(net, x, targets, trunk_layers, normalization):
    """By hand: Z from running the trunk blocks, α from the min-norm of ∂L_t/∂Z, trunk grad of Σ λ_t L_t."""
    ref = copy.deepcopy(net)
    z = x
    for layer, c in trunk_layers:
        z = ref.blocks[layer][c](z)
    losses, dz = {}, []
    for t in ref.tasks:
        h = z
        j = ref.tasks.index(t)
        for layer, c in enumerate(ref.graph.path(t)):
            if layer > trunk_layers[-1][0] and c >= 0:
                h = ref.blocks[layer][c](h)
        losses[t] = (ref.heads[j](h) - targets[t]).square().mean()
        dz.append(torch.autograd.grad(losses[t], z, retain_graph=True)[0].double().reshape(-1).numpy())
    dz = np.stack(dz)
    n = np.array([_normalizer(normalization, dz[i], float(losses[t].detach())) for i, t in enumerate(ref.tasks)])
    alpha = qp_min_norm((dz / n[:, None]) @ (dz / n[:, None]).T)
    total = sum(float(a / k) * losses[t] for a, k, t in zip(alpha, n, ref.tasks))
    params = [p for layer, c in trunk_layers for p in ref.blocks[layer][c].parameters()]
    trunk_grad = np.concatenate([g.double().reshape(-1).numpy() for g in torch.autograd.grad(total, params)])
    return alpha, trunk_grad


def _check_ub_step(net, trunk_layers, normalization="none"):
    """One MGDA-UB step on ``net`` (no warning); α and the trunk gradient match the by-hand reference.

    Returns the step's gradients and the per-task reference gradients and losses.
    """
    x, targets = _batch()
    ref, losses = _per_task_grads(net, x, targets)
    alpha, trunk_grad = _representation_reference(net, x, targets, trunk_layers, normalization)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights, grads = _step(net, create_balancer("mgda-ub", normalization=normalization), x, targets)
    np.testing.assert_allclose([weights[t] for t in TASKS], alpha, atol=QP_TOL)
    _assert_grad(grads, [n for layer, c in trunk_layers for n in _names_of(net, net.blocks[layer][c])], trunk_grad)
    return grads, ref, losses


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_mgda_ub_hard_sharing_uses_representation_gradients(backbone, normalization):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    grads, ref, _ = _check_ub_step(net, [(i, 0) for i in range(5)], normalization)
    _assert_heads_own(net, grads, ref)


def test_mgda_ub_tree_representation_is_the_all_task_trunk(backbone):
    net = _net(backbone, _tree(backbone))
    grads, ref, _ = _check_ub_step(net, [(0, 0)])
    xy = [n for layer in range(1, 5) for n in _names_of(net, net.blocks[layer][0])]
    gx, gy = _flat(ref["x"], xy), _flat(ref["y"], xy)
    w = np.clip((gy - gx) @ gy / ((gx - gy) @ (gx - gy)), 0, 1)  # after Z: exact MGDA over {x, y}
    _assert_grad(grads, xy, w * gx + (1 - w) * gy)
    _assert_heads_own(net, grads, ref)


def test_mgda_ub_skip_policy_shares_weights_after_the_representation_exactly(backbone):
    # all tasks run the stem together; y skips s0.b0, so s0.b1 is shared by all (weights) but not computed once
    select = [[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0]]
    net = _net(backbone, SharingGraph.from_policy(TASKS, backbone.layer_names, select, skippable=backbone.skippable))
    grads, ref, losses = _check_ub_step(net, [(0, 0)])
    shared_after = _names_of(net, net.blocks[2]) + _names_of(net, net.blocks[3])  # one group: used by all
    _assert_grad(grads, shared_after, _expected_mgda(ref, losses, shared_after, TASKS, "none")[0])
    s1b1 = _names_of(net, net.blocks[4])  # used by x and y only
    _assert_grad(grads, s1b1, _expected_mgda(ref, losses, s1b1, ("x", "y"), "none")[0])


def test_mgda_ub_without_prepare_warns_once_then_uses_the_representation(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    balancer = create_balancer("mgda-ub")
    net.zero_grad(set_to_none=True)
    with pytest.warns(UserWarning, match="prepare"):
        first = balancer.backward(_losses(net(x), targets), net)  # no hook yet: exact parameter gradients
    params_weights, _ = _step(net, MGDA(), x, targets)
    assert first == pytest.approx(params_weights, rel=F64_RTOL, abs=F64_RTOL)
    alpha, _ = _representation_reference(net, x, targets, [(i, 0) for i in range(5)], "none")
    net.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = balancer.backward(_losses(net(x), targets), net)  # hooked now
    np.testing.assert_allclose([second[t] for t in TASKS], alpha, atol=QP_TOL)


def test_mgda_ub_prepared_after_the_forward_pass_warns_and_uses_parameter_gradients(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    expected, _ = _step(net, MGDA(), x, targets)
    net.zero_grad(set_to_none=True)
    losses = _losses(net(x), targets)
    balancer = create_balancer("mgda-ub").prepare(net)
    with pytest.warns(UserWarning, match="captured"):
        assert balancer.backward(losses, net) == pytest.approx(expected, rel=F64_RTOL, abs=F64_RTOL)


def test_mgda_ub_on_independent_networks_is_equal_weighting(backbone):
    net = _net(backbone, SharingGraph.independent(TASKS, backbone.layer_names))
    x, targets = _batch()
    _, expected = _step(net, create_balancer("equal"), x, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights, grads = _step(net, create_balancer("mgda-ub"), x, targets)
    assert weights == dict.fromkeys(TASKS, 1.0)
    for name, g in grads.items():
        torch.testing.assert_close(g, expected[name])


def test_mgda_ub_hook_follows_the_network_and_copies_are_inert(backbone):
    graph = SharingGraph.hard_sharing(TASKS, backbone.layer_names)
    a, b = _net(backbone, graph), _net(backbone, graph)
    x, targets = _batch()
    balancer = create_balancer("mgda-ub").prepare(a)
    clone = copy.deepcopy(a)  # e.g. warm-starting another network from a trained one
    clone(x)
    assert balancer._attachment.capture.output is None
    balancer.prepare(b)  # re-targets: a's hook is removed
    a(x)
    assert balancer._attachment.capture.output is None
    with torch.no_grad():
        b(x)  # evaluation: nothing kept
    assert balancer._attachment.capture.output is None
    b.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        balancer.backward(_losses(b(x), targets), b)
    assert balancer._attachment.capture.output is None  # released after the backward
    balancer.detach()
    assert not any(m._forward_hooks for m in b.modules())


def test_mgda_ub_losses_from_another_forward_are_an_error(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    balancer = create_balancer("mgda-ub").prepare(net)
    losses = _losses(net(x), targets)
    net(x)  # a second forward replaces the captured representation
    with pytest.raises(RuntimeError, match="latest forward"):
        balancer.backward(losses, net)


# ---------------------------------------------------------------------- training loop and CLI
SIZES = {"n_train": 32, "n_val": 16, "n_test": 16, "size": 14}


@pytest.fixture(scope="module")
def digits():
    from nas_mtl.data import create_dataset
    from nas_mtl.space import load_search_space

    data = create_dataset("multidigits", **SIZES)
    return data, load_search_space("resnet_small", input_shape=data.input_shape)


def _saved_tree(tmp_path, space, tasks):
    layers = space.backbone.layer_names
    graph = SharingGraph.branched(tasks, layers, [[tasks]] * 3 + [[[t] for t in tasks]] * (len(layers) - 3))
    return graph.save(tmp_path / "graph.json")


@pytest.mark.parametrize(
    "spec", ["equal", "mgda", "mgda-ub", "pcgrad", "mgda:normalization=loss+", "mgda-ub:normalization=l2"]
)
def test_retraining_a_saved_graph_with_each_balancer(tmp_path, digits, spec):
    from nas_mtl.baselines import train_graph
    from nas_mtl.cli import main
    from nas_mtl.train import TrainConfig

    data, space = digits
    path = _saved_tree(tmp_path, space, list(data.task_names))
    config = TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, result = train_graph(SharingGraph.load(path), data, space, config, create_balancer(spec))
        args = ["train", "--data", "multidigits", "--space", "resnet_small", "--graph", str(path), "--epochs", "1"]
        args += [f"--data-arg={k}={v}" for k, v in SIZES.items()]
        args += ["--batch-size", "16", "--balancer", spec, "--out", str(tmp_path / "run"), "--no-progress"]
        assert main([*args, "--device", "cpu"]) == 0
    assert not [w for w in caught if "mgda" in str(w.message)]  # the trainer prepares the balancer
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert set(result.test) == set(data.task_names)
    assert not any(m._forward_hooks for m in net.modules())  # and detaches it at the end
    assert (tmp_path / "run" / "result.json").is_file()


def test_cli_rejects_a_bad_balancer_spec(tmp_path, digits, capsys):
    from nas_mtl.cli import EXIT_USER_ERROR, main

    _, space = digits
    args = ["train", "--data", "multidigits", "--space", "resnet_small", "--graph", "hard", "--epochs", "1"]
    args += [f"--data-arg={k}={v}" for k, v in SIZES.items()] + ["--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*args, "--balancer", "mgda:normalization=max"]) == EXIT_USER_ERROR
    assert "normalization" in capsys.readouterr().err


def _poison(task, every_step=False):
    """Step hook making ``task``'s gradient NaN (its loss stays finite) at the first step, or every step."""

    def hook(ctx):
        if every_step or (ctx.epoch, ctx.step) == (0, 0):
            ctx.losses[task].register_hook(lambda g: g * float("nan"))

    return hook


@pytest.mark.parametrize("name", ["equal", "mgda", "mgda-ub", "pcgrad"])
def test_training_skips_a_step_with_a_non_finite_gradient(digits, name):
    from nas_mtl.baselines import train_graph
    from nas_mtl.train import TrainConfig

    data, space = digits
    task = data.task_names[1]
    config = TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu", on_nonfinite="skip")
    with pytest.warns(UserWarning, match=r"skipping step: .*non-finite gradient.*epoch 1 step 1"):
        net, result = train_graph(
            space.hard_sharing(data.task_names), data, space, config, create_balancer(name), step_hooks=[_poison(task)]
        )
    assert result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("name", ["equal", "mgda-ub", "pcgrad"])
def test_training_raises_on_a_non_finite_gradient_before_touching_weights(digits, name):
    from nas_mtl.train import TrainConfig, train

    data, space = digits
    task = data.task_names[0]
    torch.manual_seed(0)
    net = MultiTaskNetwork.from_tasks(space.hard_sharing(data.task_names), space.backbone, data.tasks)
    before = copy.deepcopy(list(net.parameters()))
    config = TrainConfig(epochs=1, batch_size=16, progress=False, device="cpu")
    expected = "non-finite gradient in" if name == "equal" else f"non-finite gradient for task.*'{task}'"
    with pytest.raises(FloatingPointError, match=rf"{expected}.* at epoch 1 step 1"):
        train(net, data, config, create_balancer(name), step_hooks=[_poison(task)])
    for p, q in zip(net.parameters(), before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_pcgrad_default_order_follows_the_run_seed(backbone):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()

    def run(seed):
        torch.manual_seed(seed)
        balancer = PCGrad().prepare(net)
        weights = []
        for _ in range(4):
            net.zero_grad(set_to_none=True)
            weights.append(balancer.backward(_losses(net(x), targets), net))
        return weights, balancer._random.get().initial_seed()

    assert run(1) == run(1)
    assert run(2)[1] == 2
    explicit = PCGrad(seed=7).prepare(net)
    _step(net, explicit, x, targets)
    assert explicit._random.get().initial_seed() == 7


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["mgda", "mgda-ub", "pcgrad"])
@pytest.mark.parametrize("where", ["shared", "head"])
def test_non_finite_gradient_names_the_task_and_writes_nothing(backbone, name, where):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    balancer = create_balancer(name).prepare(net)
    net.zero_grad(set_to_none=True)
    out = net(x)
    if where == "shared":  # NaN flowing back from y's head into everything y uses
        out["y"].register_hook(lambda g: g * float("nan"))
    else:  # only y's own head parameters
        net.heads[1][-1].weight.register_hook(lambda g: g * float("inf"))
    losses = _losses(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(FloatingPointError, match="'y'"):
        balancer.backward(losses, net)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["mgda", "mgda-ub", "pcgrad"])
def test_non_finite_loss_is_an_error_and_writes_nothing(backbone, name):
    net = _net(backbone, SharingGraph.hard_sharing(TASKS, backbone.layer_names))
    x, targets = _batch()
    balancer = create_balancer(name).prepare(net)
    net.zero_grad(set_to_none=True)
    losses = _losses(net(x), targets)
    losses["z"] = losses["z"] * float("inf")
    with pytest.raises(FloatingPointError, match="loss for task.*'z'"):
        balancer.backward(losses, net)
    assert all(p.grad is None for p in net.parameters())


def test_loss_normalization_rejects_negative_losses():
    with pytest.raises(ValueError, match="non-negative"):
        mgda_weights(np.eye(2), np.array([0.5, -1.0]), "loss")


def test_registry_and_argument_errors():
    assert {"equal", "mgda", "mgda-ub", "pcgrad"} <= set(list_balancers())
    assert create_balancer("mgda", mode="ub", normalization="loss+").name == "mgda-ub"
    assert create_balancer("mgda-ub", normalization="l2").mode == "ub"
    assert create_balancer("pcgrad", seed=3).seed == 3
    with pytest.raises(ValueError, match="normalization"):
        create_balancer("mgda", normalization="max")
    with pytest.raises(ValueError, match="mode"):
        create_balancer("mgda", mode="rep")
    with pytest.raises(TypeError, match="mode"):
        create_balancer("mgda-ub", mode="params")
    with pytest.raises(TypeError, match="MultiTaskNetwork"):
        MGDA().backward({"a": torch.ones((), requires_grad=True)}, nn.Linear(1, 1))
    with pytest.raises(TypeError, match="MultiTaskNetwork.*got Linear"):  # the same check in ub mode
        create_balancer("mgda-ub").prepare(nn.Linear(1, 1))
    with pytest.raises(TypeError, match="seed"):
        PCGrad(seed=1.5)


@pytest.mark.parametrize(
    ("spec", "name", "options"),
    [
        ("mgda", "mgda", {}),
        ("mgda:normalization=loss+", "mgda", {"normalization": "loss+"}),
        ("mgda: mode=ub , normalization=l2", "mgda", {"mode": "ub", "normalization": "l2"}),
        ("pcgrad:seed=3", "pcgrad", {"seed": 3}),
        ("pcgrad:", "pcgrad", {}),
    ],
)
def test_balancer_specs(spec, name, options):
    assert parse_balancer(spec) == (name, options)
    balancer = create_balancer(spec)
    for key, value in options.items():
        assert getattr(balancer, key) == value


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("equal", "equal"),
        ("mgda", "mgda:normalization=none"),
        ("mgda: mode=ub , normalization=l2", "mgda-ub:normalization=l2"),
        ("mgda-ub:normalization=loss+", "mgda-ub:normalization=loss+"),
        ("pcgrad", "pcgrad:seed=null"),
        ("pcgrad:seed=3", "pcgrad:seed=3"),
    ],
)
def test_balancer_spec_names_the_method_and_all_options(spec, canonical):
    balancer = create_balancer(spec)
    assert balancer.spec == canonical
    rebuilt = create_balancer(balancer.spec)
    assert (type(rebuilt), rebuilt.spec, rebuilt.options()) == (type(balancer), canonical, balancer.options())


@pytest.mark.parametrize(
    ("spec", "kwargs", "error", "match"),
    [
        ("mgda:normalization", {}, ValueError, "KEY=VALUE"),
        ("mgda:normalization=l2,normalization=none", {}, ValueError, "twice"),
        ("mgda:normalization=l2", {"normalization": "none"}, ValueError, "both"),
        ("mgda:norm=l2", {}, TypeError, "norm"),
        ("mgda:normalization=max", {}, ValueError, "normalization"),
        ("mgd", {}, ValueError, "known: "),
        (3, {}, TypeError, "name"),
    ],
)
def test_balancer_spec_errors(spec, kwargs, error, match):
    with pytest.raises(error, match=match):
        create_balancer(spec, **kwargs)


def test_pcgrad_order_state_survives_a_checkpoint(tmp_path):
    """A resumed PCGrad continues the projection-order sequence of the interrupted run."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(4, 6))
    gram, loss = g @ g.T, np.ones(4)
    run = PCGrad(seed=3)
    for _ in range(5):
        run.group_weights(gram, loss)
    saved = run.state_dict()
    expected = [run.group_weights(gram, loss)[0] for _ in range(20)]
    resumed = PCGrad(seed=3)
    resumed.prepare(nn.Linear(1, 1))  # what train() does first on resume...
    resumed.load_state_dict(saved)  # ...then restores the checkpointed state
    got = [resumed.group_weights(gram, loss)[0] for _ in range(20)]
    fresh = [PCGrad(seed=3).group_weights(gram, loss)[0] for _ in range(20)]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, expected))  # the state matters
