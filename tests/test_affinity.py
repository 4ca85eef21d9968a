import itertools
import json

import numpy as np
import pytest
import torch
from helpers import tiny_network, toy_images
from torch import nn
from torch.func import functional_call

from nas_mtl.cli import main
from nas_mtl.data import create_dataset
from nas_mtl.graph import SharingGraph, enumerate_trees
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.search import SEARCH_METHODS, load_search_methods
from nas_mtl.search.affinity import MEASURES, AffinityConfig, AffinityResult, affinity_search, measure_affinity
from nas_mtl.search.affinity_measures import (
    AffinityRecorder,
    centered_gram,
    cosine_matrix,
    layer_features,
    layer_similarity,
    linear_cka,
    lookahead_affinity,
    rdm,
    rsa_similarity,
    shared_parameters,
)
from nas_mtl.search.affinity_plots import plot_affinity, plot_dendrogram, plot_layer_affinities
from nas_mtl.search.grouping import Groups, clustering_cost, group_tasks, layerwise_tree, partition_score, task_distance
from nas_mtl.space import load_search_space, parse_search_space
from nas_mtl.tasks import RegressionTask
from nas_mtl.train import StepContext, TrainConfig


# ---------------------------------------------------------------------- gradient cosine / lookahead
def test_cosine_matrix_by_hand():
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    s = 1 / np.sqrt(2)
    expected = [[1, 1, -1, s], [1, 1, -1, s], [-1, -1, 1, -s], [s, s, -s, 1]]
    torch.testing.assert_close(cosine_matrix(v), torch.tensor(expected, dtype=torch.float64))


def _linear_tasks():
    """A shared linear map w (2 -> 1) and three tasks L_i = mean (u·w - y_i)^2 on one batch: task 1 is a
    copy of task 0, task 2 wants the opposite output. In float64, to compare with a float64 computation by hand."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1, bias=False).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    y0 = torch.randn(8, 1, dtype=torch.float64) + 3.0
    targets = [y0, y0.clone(), -y0]

    def losses_at(values):
        out = functional_call(model, dict(values), (x,))
        return torch.stack([((out - y) ** 2).mean() for y in targets])

    return model, x, targets, losses_at


def test_lookahead_matches_a_manual_sgd_step():
    model, x, targets, losses_at = _linear_tasks()
    shared = dict(model.named_parameters())
    base = losses_at(shared)
    grads = [torch.autograd.grad(base[i], list(shared.values()), retain_graph=True) for i in range(3)]
    lr = 0.05
    z = lookahead_affinity(losses_at, shared, grads, base.detach(), lr).numpy()
    # by hand: w' = w - lr * dL_i/dw, Z[i, j] = 1 - L_j(w') / L_j(w); both sides are float64 sums of
    # len(x) terms of size ~ the losses (ratios ~ 1), so they agree to a few len(x) * eps
    w = model.weight.detach().numpy().ravel()
    xs = x.numpy()
    ys = [t.numpy().ravel() for t in targets]
    tol = 16 * len(xs) * np.finfo(np.float64).eps

    def loss(v, y):
        return np.mean((xs @ v - y) ** 2)

    for i, j in itertools.product(range(3), repeat=2):
        grad_i = 2 * xs.T @ (xs @ w - ys[i]) / len(xs)
        assert z[i, j] == pytest.approx(1 - loss(w - lr * grad_i, ys[j]) / loss(w, ys[j]), rel=0, abs=tol)
    assert z[0, 1] == z[0, 0] == z[1, 0]  # identical tasks: the very same float operations
    assert z[0, 0] > 0 and z[0, 2] < 0 and z[2, 0] < 0  # opposite tasks hurt each other
    flat = torch.stack([g[0].ravel() for g in grads])
    cos = cosine_matrix(flat).numpy()
    assert cos[0, 1] == pytest.approx(1.0, rel=0, abs=tol) and cos[0, 2] < 0


def _twin_network():
    """Hard sharing with two regression tasks whose heads are identical copies (the same task twice)."""
    specs = (RegressionTask("a"), RegressionTask("b"))
    net = tiny_network(specs, widths=(4,), depths=(1,))
    net.heads[1].load_state_dict(net.heads[0].state_dict())
    return net, specs


def test_recorder_on_identical_tasks_gives_equal_affinities_and_leaves_the_network_alone():
    net, specs = _twin_network()
    net.double()  # float64: the gradient cosine of a vector with itself is 1 to float64 precision
    x, y = toy_images(6, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    targets = {"a": y, "b": y.clone()}
    out = net(x)
    losses = {s.name: s.loss(out[s.name], targets[s.name]) for s in specs}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    recorder = AffinityRecorder(specs, lr=0.1, every=2)
    for step in range(3):  # measured at calls 1 and 3
        recorder(StepContext(net, x, targets, losses, epoch=0, step=step))
    assert recorder.steps == 2
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN stats and weights untouched
    z, cos = recorder.matrix("lookahead"), recorder.matrix("gradcos")
    assert (z == z[0, 0]).all() and z[0, 0] > 0  # the same float operations for both tasks
    n = sum(p.numel() for p in shared_parameters(net).values())  # |g|^2 and g.g' sum n terms
    np.testing.assert_allclose(cos, 1.0, rtol=0, atol=n * np.finfo(np.float64).eps)
    assert recorder.per_epoch("gradcos").shape == (1, 2, 2)
    with pytest.raises(ValueError, match="measure must be one of"):
        recorder.matrix("rsa")


def test_shared_parameters_are_the_trunk_of_hard_sharing():
    net, _ = _twin_network()
    trunk = shared_parameters(net)
    assert trunk and all(n.startswith("blocks.") for n in trunk)
    assert {id(p) for p in trunk.values()} == {id(p) for row in net.blocks for p in row.parameters()}
    split = SharingGraph.independent(["a", "b"], net.graph.layers)
    with pytest.raises(ValueError, match="no parameters shared by all tasks"):
        shared_parameters(MultiTaskNetwork.from_tasks(split, net.backbone, (RegressionTask("a"), RegressionTask("b"))))


def test_recorder_rejects_bad_settings():
    with pytest.raises(ValueError, match="every"):
        AffinityRecorder((RegressionTask("a"),), lr=0.1, every=0)
    with pytest.raises(ValueError, match="lr"):
        AffinityRecorder((RegressionTask("a"),), lr=0.0)


# ---------------------------------------------------------------------- RSA / CKA
def test_rdm_and_rsa(seed):
    """Unrelated features: |RSA| <= 0.095 measured for seeds 0-4 (asserted < 0.3)."""
    torch.manual_seed(seed)
    f = torch.randn(12, 30, dtype=torch.float64)  # float64: 3 f + 1 keeps every rank of the RDM
    np.testing.assert_array_equal(rdm(f), 1 - np.corrcoef(f.numpy()))
    assert rsa_similarity(rdm(f), rdm(3 * f + 1)) == pytest.approx(1.0)  # same geometry
    assert rsa_similarity(rdm(f), rdm(f) ** 3) == pytest.approx(1.0)  # a rank correlation (Spearman)
    assert abs(rsa_similarity(rdm(f), rdm(torch.randn(12, 30)))) < 0.3  # unrelated features


def test_linear_cka_invariances(seed):
    """Measured for seeds 0-4: anisotropic scaling 0.79-0.85 (asserted < 0.99), random features <= 0.26
    (asserted < 0.5)."""
    torch.manual_seed(seed)
    x = torch.randn(40, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    gram = centered_gram(x)
    assert linear_cka(gram, gram) == pytest.approx(1.0)
    assert linear_cka(gram, centered_gram(2.5 * x @ q)) == pytest.approx(1.0)  # orthogonal map + isotropic scale
    assert linear_cka(gram, centered_gram(x + 7.0)) == pytest.approx(1.0)  # translation (centring)
    assert linear_cka(gram, centered_gram(x * torch.arange(1.0, 9.0, dtype=torch.float64))) < 0.99  # anisotropic
    assert linear_cka(gram, centered_gram(torch.randn(40, 8, dtype=torch.float64))) < 0.5


def test_layer_similarity_of_identical_networks_is_one(seed):
    """Random features (10 samples): |similarity| <= 0.5 measured for seeds 0-4 (asserted < 0.9)."""
    torch.manual_seed(seed)
    feats = [torch.randn(10, 5), torch.randn(10, 7)]
    for measure in ("rsa", "cka"):
        sim = layer_similarity([feats, [f.clone() for f in feats], [torch.randn(10, 5), torch.randn(10, 7)]], measure)
        assert sim.shape == (2, 3, 3)
        assert np.allclose(sim[:, 0, 1], 1.0) and np.allclose(sim, sim.transpose(0, 2, 1))
        assert (np.abs(sim[:, 0, 2]) < 0.9).all()
    with pytest.raises(ValueError, match="must be one of"):
        layer_similarity([feats], "cosine")


def test_layer_features_are_the_block_outputs():
    net = tiny_network((RegressionTask("a"),))
    x = toy_images(5)
    net.train()
    feats = layer_features(net, x)
    assert net.training  # mode restored
    net.eval()
    h = x
    with torch.no_grad():
        for layer, f in enumerate(feats):
            h = net.blocks[layer][0](h)
            torch.testing.assert_close(f, h.flatten(1), rtol=0, atol=0)  # the same module on the same input
    twin, _ = _twin_network()
    with pytest.raises(ValueError, match="single-task"):
        layer_features(twin, toy_images(2))


# ---------------------------------------------------------------------- grouping
def _brute_force(a: np.ndarray, k):
    """Best TAG score over every labelling (independent of the set-partition enumeration)."""
    t = len(a)
    best = -np.inf
    for labels in itertools.product(range(t), repeat=t):
        if labels[0] != 0 or (k is not None and len(set(labels)) != k):
            continue
        score = 0.0
        for i in range(t):
            mates = [j for j in range(t) if j != i and labels[j] == labels[i]]
            score += sum(a[j, i] for j in mates) / len(mates) if mates else 0.0
        best = max(best, score)
    return best


def test_partition_score_by_hand():
    a = np.array([[9.0, 1.0, 2.0], [3.0, 9.0, 4.0], [5.0, 6.0, 9.0]])
    # group {0, 1, 2}: onto 0 (3 + 5) / 2, onto 1 (1 + 6) / 2, onto 2 (2 + 4) / 2
    assert partition_score(a, ((0, 1, 2),)) == pytest.approx(4 + 3.5 + 3)
    assert partition_score(a, ((0, 2), (1,))) == pytest.approx(5 + 2)
    assert partition_score(a, ((0,), (1,), (2,))) == 0.0


def test_task_distance_by_hand():
    a = np.array([[5.0, 0.2, -0.4], [0.6, 5.0, 0.0], [0.0, 0.2, 5.0]])
    # symmetric part off the diagonal: (0,1) 0.4, (0,2) -0.2, (1,2) 0.1; distance = 0.4 - that
    assert np.allclose(task_distance(a), [[0, 0, 0.6], [0, 0, 0.3], [0.6, 0.3, 0]])


@pytest.mark.parametrize("k", [2, 3, None])
def test_exact_grouping_matches_brute_force(k):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    tasks = [f"t{i}" for i in range(6)]
    groups = group_tasks(a, tasks, k, "exact")
    index = tuple(tuple(tasks.index(t) for t in g) for g in groups)
    assert k is None or len(groups) == k
    assert sorted(t for g in groups for t in g) == sorted(tasks)
    assert partition_score(a, index) == pytest.approx(_brute_force(a, k))


def test_clusterings_agree_on_an_obvious_block_matrix(seed):
    """Any seed: within-block affinity >= 0.85 > 0.15 >= across, whatever the noise draws."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(9)]
    blocks = np.repeat(np.arange(3), 3)[rng.permutation(9)]
    a = np.where(blocks[:, None] == blocks[None, :], 0.9, 0.1) + rng.uniform(-0.05, 0.05, (9, 9))
    planted = {frozenset(t for t, b in zip(tasks, blocks) if b == n) for n in range(3)}
    for method, k in [("exact", 3), ("exact", None), ("agglomerative", 3), ("agglomerative", None), ("spectral", 3)]:
        assert {frozenset(g) for g in group_tasks(a, tasks, k, method)} == planted, (method, k)


def test_grouping_errors():
    with pytest.raises(ValueError, match="k must be"):
        group_tasks(np.eye(3), "abc", k=4)
    with pytest.raises(ValueError, match="method must be one of"):
        group_tasks(np.eye(3), "abc", method="kmeans")
    with pytest.raises(ValueError, match="3x3"):
        group_tasks(np.eye(2), "abc")
    with pytest.raises(ValueError, match="limited to"):
        group_tasks(np.eye(11), [f"t{i}" for i in range(11)], method="exact")


# ---------------------------------------------------------------------- layer-wise tree
def _space(branchable="all"):
    # layers: stem, s0.b0, s1.b0 with 44, 304, 944 parameters (1 input channel)
    data = {
        "format": "nas_mtl.search_space/1",
        "backbone": {"name": "resnet_small", "widths": [4, 8], "depths": [1, 1]},
        "layers": {"branchable": branchable},
    }
    return parse_search_space(data, "test", "tiny", input_shape=(1, 8, 8))


def _planted(num_layers: int, split_at: int, blocks) -> np.ndarray:
    """Dissimilarity 0.1 between all tasks, except 0.9 across ``blocks`` from layer ``split_at`` on."""
    blocks = np.asarray(blocks)
    d = np.full((num_layers, len(blocks), len(blocks)), 0.1)
    d[split_at:] = np.where(blocks[:, None] == blocks[None, :], 0.1, 0.9)
    d[:, np.arange(len(blocks)), np.arange(len(blocks))] = 0.0
    return d


def test_clustering_cost_by_hand():
    d = np.array([[0.0, 0.2, 0.8], [0.2, 0.0, 0.5], [0.8, 0.5, 0.0]])
    # mean over branches of the largest dissimilarity inside each (Vandenhende et al. 2020, Sec. 3.3)
    assert clustering_cost(d, ((0, 1, 2),)) == pytest.approx(0.8)
    assert clustering_cost(d, ((0, 1), (2,))) == pytest.approx((0.2 + 0.0) / 2)
    assert clustering_cost(d, ((0, 2), (1,))) == pytest.approx(0.4)
    assert clustering_cost(d, ((0,), (1,), (2,))) == 0.0


def test_tree_branches_where_planted_dissimilarity_appears_within_budget():
    space = _space()
    tasks = ("a", "b", "c", "d")
    d = _planted(3, 2, [0, 0, 1, 1])
    params = space.backbone.layer_costs().params
    # budget 2: room for two copies of s1.b0 (1.73 backbones), or of s0.b0 and s1.b0 (1.97); splitting
    # s0.b0 does not lower the cost there (equal dissimilarities), so the cheaper tree wins
    graph = layerwise_tree(d, tasks, space, params_budget=2.0)
    assert graph.partition(0) == graph.partition(1) == (tasks,)
    assert graph.partition(2) == (("a", "b"), ("c", "d"))
    assert graph.cost(params, [0] * 3).params <= 2.0 * sum(params)
    assert layerwise_tree(d, tasks, space, params_budget=1.0) == space.hard_sharing(tasks)  # skips declared too
    # no split is worth it when the planted block is below min_split
    assert layerwise_tree(d, tasks, space, params_budget=2.0, min_split=0.95).copies(2) == 1


def test_tree_dynamic_programme_is_exact():
    space = _space(["s0.b0", "s1.b0"])
    tasks = ("a", "b", "c")
    d = np.abs(np.random.default_rng(1).normal(size=(3, 3, 3)))
    d = (d + d.transpose(0, 2, 1)) / 2
    params = space.backbone.layer_costs().params
    for budget in (1.0, 1.5, 2.2, 3.0):

        def cost(g):
            return sum(clustering_cost(d[layer], _index(g, layer)) for layer in range(3))

        feasible = [
            g
            for g in enumerate_trees(tasks, space.layers, space.branchable)
            if g.cost(params, [0] * 3).params <= budget * sum(params)
        ]
        best = min(cost(g) for g in feasible)
        found = layerwise_tree(d, tasks, space, params_budget=budget)
        assert cost(found) == pytest.approx(best)
        assert found.meta["tree_cost"] == pytest.approx(best)


def _index(graph, layer):
    return tuple(tuple(graph.tasks.index(t) for t in g) for g in graph.partition(layer))


def test_tree_beam_for_many_tasks_finds_the_planted_split():
    space = _space()
    tasks = tuple(f"t{i}" for i in range(8))
    graph = layerwise_tree(_planted(3, 1, [0, 1, 0, 1, 0, 1, 0, 1]), tasks, space, params_budget=2.0)
    assert graph.partition(0) == (tasks,)
    assert graph.partition(1) == (tasks[0::2], tasks[1::2]) == graph.partition(2)


def test_tree_errors():
    space = _space()
    with pytest.raises(ValueError, match=r"expected shape \(3, 2, 2\)"):
        layerwise_tree(np.zeros((2, 2, 2)), "ab", space)
    with pytest.raises(ValueError, match="params_budget"):
        layerwise_tree(np.zeros((3, 2, 2)), "ab", space, params_budget=0.5)


# ---------------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path):
    a = np.array([[1.0, 0.5, -0.2], [0.4, 1.0, 0.1], [-0.3, 0.0, 1.0]])
    tasks = ["x", "y", "z"]
    for fig, name in [
        (plot_affinity(a, tasks, path=tmp_path / "h.png"), "h.png"),
        (plot_dendrogram(a, tasks, path=tmp_path / "d.png"), "d.png"),
        (plot_layer_affinities(np.stack([a, a.T]), ["l0", "l1"], tasks, path=tmp_path / "l.png"), "l.png"),
    ]:
        assert fig.axes and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="expected shape"):
        plot_layer_affinities(np.stack([a]), ["l0", "l1"], tasks)
    with pytest.raises(ValueError, match="at least 3 tasks"):
        plot_dendrogram(a[:2, :2], tasks[:2])


# ---------------------------------------------------------------------- measure, search, CLI
TINY = dict(n_train=64, n_val=16, n_test=16, size=16, tasks="size,hue,chroma")
CFG = TrainConfig(epochs=1, batch_size=16, lr=1e-2, progress=False, device="cpu")


def _cfg(**kw) -> AffinityConfig:
    return AffinityConfig(train=CFG, **kw)


TINY_SPACE = """format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4, 8]
depths = [2, 1]
[layers]
branchable = "all"
"""  # stem, s0.b0, s0.b1, s1.b0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.toml"
    path.write_text(TINY_SPACE)
    data = create_dataset("shapes", **TINY)
    return data, load_search_space(path, input_shape=data.input_shape), path


def test_affinity_search_end_to_end_with_cache(tiny, tmp_path, monkeypatch):
    data, space, _ = tiny
    result = affinity_search(data, space, _cfg(measures=["gradcos", "rsa"], k=2, every=2, probe_size=8), tmp_path)
    assert result.method == "affinity" and result.info["branch_at"] == "stem"
    groups = result.info["measures"]["gradcos"]["groups"]
    assert result.graph == SharingGraph.from_groups(data.task_names, space.layers, groups, 0, space.skippable)
    assert len(groups) == 2
    # lookahead was recorded by the same training run as gradcos
    cached = AffinityResult.from_dict(json.loads((tmp_path / "affinity" / "lookahead.json").read_text()))
    assert cached.samples == 2 and cached.history.shape == (1, 3, 3)  # 4 steps, every 2nd measured
    rsa = measure_affinity(data, space, _cfg(probe_size=8), tmp_path, "rsa")
    assert rsa.layers.shape == (len(space.layers), 3, 3) and np.allclose(rsa.layers[:, 0, 0], 1.0)
    assert all(g.meta["measure"] == "rsa" for g in result.candidates) and result.info["measures"]["rsa"]["samples"] == 8
    for name in ("gradcos_heatmap", "gradcos_dendrogram", "rsa_layers"):
        assert (tmp_path / "affinity" / f"{name}.png").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached measurement was recomputed")

    monkeypatch.setattr("nas_mtl.search.affinity.train_graph", no_training)
    monkeypatch.setattr("nas_mtl.search.affinity.train_single_tasks", no_training)
    again = measure_affinity(data, space, _cfg(every=2), tmp_path, "lookahead")
    assert np.array_equal(again.matrix, cached.matrix)
    with pytest.raises(
        ValueError, match=r"cached affinity was made with other settings: every \(2 -> 3\); use a new run folder"
    ):
        measure_affinity(data, space, _cfg(every=3), tmp_path, "gradcos")
    other = create_dataset("shapes", **{**TINY, "seed": 1})  # same sizes, other images
    with pytest.raises(ValueError, match=r"other settings: data\.origin\.kwargs\.seed \(None -> 1\), data\.sample \("):
        measure_affinity(other, space, _cfg(probe_size=8), tmp_path, "rsa")


def test_affinity_search_errors(tiny, tmp_path, monkeypatch):
    data, _, _ = tiny
    space = _space(["s0.b0"])

    def no_training(*args, **kwargs):
        raise AssertionError("bad arguments must be refused before any training")

    monkeypatch.setattr("nas_mtl.search.affinity.train_graph", no_training)
    monkeypatch.setattr("nas_mtl.search.affinity.train_single_tasks", no_training)
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.3"):
        affinity_search(data, space, _cfg(measures=["gradcos"], k=4), tmp_path)
    with pytest.raises(ValueError, match="method must be one of"):
        affinity_search(data, space, _cfg(measures=["gradcos"], grouping="kmeans"), tmp_path)
    with pytest.raises(ValueError, match="params_budget: expected a number >= 1"):
        affinity_search(data, space, _cfg(measures=["rsa"], params_budget=0.5), tmp_path)
    with pytest.raises(ValueError, match="measure must be one of"):
        measure_affinity(data, space, _cfg(), tmp_path, "tag")
    with pytest.raises(ValueError, match="measures"):
        affinity_search(data, space, _cfg(measures="lookahead"), tmp_path)
    with pytest.raises(ValueError, match="not branchable"):
        affinity_search(data, space, _cfg(measures=["gradcos"], branch_at="stem"), tmp_path)
    with pytest.raises(ValueError, match="branch_at"):
        affinity_search(data, space, _cfg(measures=["gradcos"], branch_at=99), tmp_path)
    from nas_mtl.search.affinity import check_affinity_search

    check_affinity_search(data, space, _cfg(branch_at="1"))  # a study file's "1": the layer index, as on the CLI
    with pytest.raises(ValueError, match="layer 'stem' is not branchable"):
        check_affinity_search(data, space, _cfg(branch_at="0"))


def test_cli_search_affinity(tiny, tmp_path, capsys):
    assert "affinity" in load_search_methods() and "affinity" in SEARCH_METHODS
    args = ["search", "affinity", "--data", "shapes", "--space", str(tiny[2]), "--out", str(tmp_path)]
    args += [f"--data-arg={k}={v}" for k, v in TINY.items()]
    args += ["--epochs", "1", "--batch-size", "16", "--no-progress", "--k", "2", "--device", "cpu", "--no-plots"]
    assert main([*args, "--measure", "gradcos", "--branch-at", "s1.b0", "--every", "2"]) == 0
    graph = SharingGraph.load(tmp_path / "graph.json")
    assert [graph.copies(layer) for layer in range(4)] == [1, 1, 1, 2]  # stem, s0.b0, s0.b1 shared; s1.b0 split
    summary = json.loads((tmp_path / "search.json").read_text())
    assert [tuple(g) for g in summary["info"]["measures"]["gradcos"]["groups"]] == list(graph.partition(3))
    assert main([*args, "--measure", "tag"]) == 2
    assert "error: --measure: affinity: measures must be a non-empty list" in capsys.readouterr().err


# ---------------------------------------------------------------------- planted structure on shapes
SHAPES_PLANTED = (("quadrant", "size", "mask", "distance"), ("orientation", "angle"), ("hue", "chroma"))
PLANTED_SEEDS = range(3)
"""The seeds the test runs (the rates of seeds 0-4 are in its docstring and benchmarks/affinity.py)."""


def planted_recovery(
    seed: int, run_dir, n_train: int = 800, epochs: int = 3, every: int = 4
) -> dict[str, tuple[Groups, Groups]]:
    """Per measure: the groups with k = 3 and with k chosen by the TAG score, on all eight shapes tasks (lookahead
    and gradient cosine measured at every ``every``-th step)."""
    data = create_dataset("shapes", n_train=n_train, n_val=150, n_test=50, size=16, seed=seed)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, progress=False, device="cpu", seed=seed)
    assert tuple(tuple(g) for g in data.info["planted_groups"]) == SHAPES_PLANTED
    found = {}
    affinity = AffinityConfig(train=config, probe_size=150, every=every)
    for measure in MEASURES:  # one hard-sharing run; the same single-task nets
        result = measure_affinity(data, space, affinity, run_dir, measure)
        found[measure] = (group_tasks(result.matrix, data.task_names, k=3), group_tasks(result.matrix, data.task_names))
    return found


@pytest.mark.slow
def test_every_measure_recovers_the_planted_groups_on_shapes(tmp_path):
    """The three shapes families each read one latent factor (object placement; stripe angle; hue), independent
    across families. Each measure -- lookahead and gradient cosine from one hard-sharing run (measured at every
    4th of its 75 steps), RSA and CKA from the same eight single-task networks -- is run on data and training
    seeds 0-4 (the test runs seeds 0-2, whatever $NAS_MTL_TEST_SEED).

    Measured at 1 and 2 torch threads: with k = 3, lookahead, gradient cosine and RSA give exactly the planted
    families on 5 of 5 seeds at both, CKA on 4 of 5 at 1 thread (seed 4: size and distance joined the colour
    tasks; CKA's hue and chroma networks are less alike than chroma's and the geometry networks') and 3 of 5 at
    2 threads (seeds 0 and 4). With k chosen by the score (TAG's score averages affinity over groupmates, so it
    favours pairs and splits geometry in two) no group mixes two families on 5 of 5 seeds, CKA on 4 of 5 at 1
    thread (seed 4) and 3 of 5 at 2 threads (seeds 0 and 4). Lookahead and gradient cosine measured at every 2nd
    step give the same 5 of 5 at both thread counts; RSA and CKA do not depend on it. Asserted on seeds 0-2: one
    seed fewer than measured at 1 thread (3 of 3; CKA too), so that another machine's rounding may flip one close
    seed (at 2 threads CKA has flipped seed 0: 2 of 3, the asserted count). Random grouping would fail: a k = 3
    partition of 8 tasks is the planted one with probability 1/966.
    """
    home = {t: n for n, g in enumerate(SHAPES_PLANTED) for t in g}
    exact, unmixed = dict.fromkeys(MEASURES, 0), dict.fromkeys(MEASURES, 0)
    for seed in PLANTED_SEEDS:
        for measure, (fixed, auto) in planted_recovery(seed, tmp_path / f"seed{seed}").items():
            exact[measure] += fixed == SHAPES_PLANTED
            unmixed[measure] += all(len({home[t] for t in g}) == 1 for g in auto)
    assert all(exact[m] >= n for m, n in {"lookahead": 2, "gradcos": 2, "rsa": 2, "cka": 1}.items()), exact
    assert all(unmixed[m] >= n for m, n in {"lookahead": 2, "gradcos": 2, "rsa": 2, "cka": 2}.items()), unmixed
