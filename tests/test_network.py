import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas_mtl.backbones import create_backbone
from nas_mtl.graph import SKIP, GraphError, SharingGraph
from nas_mtl.network import MultiTaskNetwork

TASKS = ("x", "y", "z")


@pytest.fixture(scope="module")
def backbone():
    # stem, s0.b0, s0.b1, s1.b0, s1.b1  (s0.b0, s0.b1, s1.b1 skippable)
    return create_backbone("resnet_small", in_chans=1, input_size=(12, 12), widths=(4, 8), depths=(2, 2))


def _heads(backbone, tasks=TASKS):
    c = backbone.feature_shape[0]
    torch.manual_seed(1)
    return {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)) for t in tasks}


def _count_calls(net):
    calls = []
    for layer, row in enumerate(net.blocks):
        for c, m in enumerate(row):
            m.register_forward_hook(lambda *_, key=(layer, c): calls.append(key))
    return calls


def _reference(net, x):
    """Hand-written execution: each task runs its own path, block by block, no sharing tricks."""
    out = {}
    for j, t in enumerate(net.graph.tasks):
        h = x
        for layer, c in enumerate(net.graph.path(t)):
            if c != SKIP:
                h = net.blocks[layer][c](h)
        out[t] = net.heads[j](h)
    return out


def test_hard_sharing_matches_hand_written_model(backbone):
    graph = SharingGraph.hard_sharing(TASKS, backbone.layer_names)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).eval()

    class HandWritten(nn.Module):
        def __init__(self, src):
            super().__init__()
            self.trunk = nn.Sequential(*[copy.deepcopy(row[0]) for row in src.blocks])
            self.heads = copy.deepcopy(src.heads)

        def forward(self, x):
            h = self.trunk(x)
            return {t: head(h) for t, head in zip(TASKS, self.heads)}

    ref = HandWritten(net).eval()
    x = torch.randn(5, 1, 12, 12)
    calls = _count_calls(net)
    out, expected = net(x), ref(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], expected[t], rtol=0, atol=0)
    assert len(calls) == len(backbone)  # the trunk ran once for all three tasks


def test_two_level_tree_matches_hand_written_and_runs_each_prefix_once(backbone):
    # stem + s0.* shared; s1.b0 splits {x,y} | {z}; s1.b1 splits x | y | z
    parts = [[TASKS], [TASKS], [TASKS], [["x", "y"], ["z"]], [["x"], ["y"], ["z"]]]
    graph = SharingGraph.branched(TASKS, backbone.layer_names, parts)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).eval()
    b = net.blocks
    x = torch.randn(4, 1, 12, 12)
    trunk = b[2][0](b[1][0](b[0][0](x)))
    xy, z = b[3][0](trunk), b[3][1](trunk)
    expected = {"x": net.heads[0](b[4][0](xy)), "y": net.heads[1](b[4][1](xy)), "z": net.heads[2](b[4][2](z))}
    calls = _count_calls(net)
    out = net(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], expected[t], rtol=0, atol=0)
    assert len(calls) == len(graph.prefix_nodes()) == 3 + 2 + 3
    assert sorted(calls) == sorted(set(calls))  # no block ran twice


def test_adashare_policy_matches_hand_written(backbone):
    select = [[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]]
    graph = SharingGraph.from_policy(TASKS, backbone.layer_names, select, skippable=backbone.skippable)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).eval()
    x = torch.randn(3, 1, 12, 12)
    expected = _reference(net, x)
    calls = _count_calls(net)
    out = net(x)
    for t in TASKS:
        torch.testing.assert_close(out[t], expected[t], rtol=0, atol=0)
    unique_prefixes = sum(1 for n in graph.prefix_nodes() if n.copy != SKIP)
    assert len(calls) == unique_prefixes == 1 + 1 + 2 + 3 + 2  # skips run nothing
    # one copy per block: weights shared although computation is not
    assert all(len(row) == 1 for row in net.blocks)


def test_skip_policy_keeps_running_statistics_per_path(backbone):
    """A copy run after different prefixes (here s1.b0 after s0.b1 for x/z, after a skip for y) keeps one
    set of BatchNorm running statistics per prefix: evaluation equals per-path networks with the same
    weights whose statistics each saw only their own inputs. In float64: the two sides batch (and so sum)
    differently, and the check is of which statistics are used, not of float32 rounding."""
    select = [[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]]
    graph = SharingGraph.from_policy(TASKS, backbone.layer_names, select, skippable=backbone.skippable)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).double()
    trunk = nn.Sequential(*[copy.deepcopy(row[0]) for row in net.blocks[:2]])  # stem, s0.b0: run once
    paths = {
        "x": nn.Sequential(*[copy.deepcopy(row[0]) for row in net.blocks[2:]]),  # x and z: every block
        "y": nn.Sequential(*[copy.deepcopy(row[0]) for row in net.blocks[3:]]),  # y skips s0.b1
    }
    torch.manual_seed(0)
    for _ in range(3):  # training-mode forward passes update the running statistics
        x = torch.randn(8, 1, 12, 12, dtype=torch.float64) * 2 + 1
        net.train()(x)
        h = trunk.train()(x)
        for branch in paths.values():
            branch.train()(h)
    net.eval()
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    out = net(x)
    h = trunk.eval()(x)
    for t, key in (("x", "x"), ("y", "y"), ("z", "x")):
        expected = net.heads[TASKS.index(t)](paths[key].eval()(h))
        torch.testing.assert_close(out[t], expected)
    assert sorted(net.path_stats) == ["6", "7"]  # s1.b0 and s1.b1 under y's prefix (after the skip)
    one_set = MultiTaskNetwork(graph, backbone, _heads(backbone)).double()
    one_set.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("path_stats")}, strict=False)
    one_set.path_stats = nn.ModuleDict()  # what a single shared set of statistics would give y
    one_set._plans.clear()
    with pytest.raises(AssertionError):  # the check above can tell them apart (they differ by ~0.06 in ~0.15)
        torch.testing.assert_close(one_set.eval()(x)["y"], out["y"])
    # weights saved before per-path statistics existed load, each path starting from its block's statistics
    old_format = {k: v for k, v in net.state_dict().items() if not k.startswith("path_stats")}
    reloaded = MultiTaskNetwork(graph, backbone, _heads(backbone)).double()
    reloaded.load_state_dict(old_format)  # strict
    torch.testing.assert_close(reloaded.path_stats["6"].bn1__running_mean, net.blocks[3][0].bn1.running_mean)


def test_path_statistics_are_looked_up_after_the_network_moves(backbone):
    """The cached plan keeps buffer names, not tensors: ``.to()`` / ``.double()`` replace the tensors."""
    select = [[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]]
    graph = SharingGraph.from_policy(TASKS, backbone.layer_names, select, skippable=backbone.skippable)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).train()
    x = torch.randn(8, 1, 12, 12)
    net(x)  # builds and caches the plan
    net.double()
    stats = net.path_stats["6"]
    before = {name: buf.clone() for name, buf in stats.named_buffers()}
    net(x.double())
    after = dict(stats.named_buffers())
    assert all(buf.dtype == torch.float64 for buf in after.values() if buf.is_floating_point())
    assert not torch.equal(after["bn1__running_mean"], before["bn1__running_mean"])  # updated in place
    assert after["bn1__num_batches_tracked"] == before["bn1__num_batches_tracked"] + 1


def test_train_mode_gradients_match_reference(backbone):
    """In float64: the network and the reference sum the shared blocks' gradients in different orders."""
    graph = SharingGraph.branched(TASKS, backbone.layer_names, [[TASKS]] * 3 + [[["x"], ["y", "z"]]] * 2)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).double()
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    loss = sum(o.square().mean() for o in net(x).values())
    grads = torch.autograd.grad(loss, list(net.parameters()))
    ref_loss = sum(o.square().mean() for o in _reference(net, x).values())
    ref_grads = torch.autograd.grad(ref_loss, list(net.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_task_subset_runs_only_needed_prefixes(backbone):
    graph = SharingGraph.independent(TASKS, backbone.layer_names)
    net = MultiTaskNetwork(graph, backbone, _heads(backbone)).eval()
    calls = _count_calls(net)
    out = net(torch.randn(2, 1, 12, 12), tasks=["y"])
    assert set(out) == {"y"} and len(calls) == len(backbone) and {c for _, c in calls} == {1}
    with pytest.raises(ValueError, match="unknown"):
        net(torch.randn(2, 1, 12, 12), tasks=["w"])


def test_parameter_groups_partition_parameters(backbone):
    parts = [[TASKS], [TASKS], [TASKS], [["x", "y"], ["z"]], [["x"], ["y"], ["z"]]]
    net = MultiTaskNetwork(SharingGraph.branched(TASKS, backbone.layer_names, parts), backbone, _heads(backbone))
    groups = net.parameter_groups()
    assert set(groups) == {
        frozenset(TASKS),
        frozenset({"x", "y"}),
        frozenset({"x"}),
        frozenset({"y"}),
        frozenset({"z"}),
    }
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    shared = {id(p) for p in groups[frozenset(TASKS)]}
    assert shared == {id(p) for layer in range(3) for p in net.blocks[layer][0].parameters()}


def test_cost_is_exact(backbone):
    select = [[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]]
    for graph in (
        SharingGraph.hard_sharing(TASKS, backbone.layer_names),
        SharingGraph.independent(TASKS, backbone.layer_names),
        SharingGraph.from_policy(TASKS, backbone.layer_names, select, skippable=backbone.skippable),
    ):
        net = MultiTaskNetwork(graph, backbone, _heads(backbone)).eval()
        cost = net.cost()
        assert cost.params == sum(p.numel() for p in net.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, 1, 12, 12))
        assert cost.macs == counter.get_total_flops() // 2


def test_fresh_copies_differ_and_inherited_copies_reproduce_source(backbone):
    hard = MultiTaskNetwork(SharingGraph.hard_sharing(TASKS, backbone.layer_names), backbone, _heads(backbone)).eval()
    ind_graph = SharingGraph.independent(TASKS, backbone.layer_names)
    fresh = MultiTaskNetwork(ind_graph, backbone, _heads(backbone))
    w = [fresh.blocks[1][c].conv1.weight for c in range(3)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    warm = MultiTaskNetwork(ind_graph, backbone, _heads(backbone), inherit=hard).eval()
    x = torch.randn(3, 1, 12, 12)
    out, expected = warm(x), hard(x)
    for t in TASKS:  # every branch starts as the trunk it came from
        torch.testing.assert_close(out[t], expected[t], rtol=0, atol=0)
    warm.blocks[1][0].conv1.weight.data.add_(1.0)  # copies are independent of the source
    assert not torch.equal(warm.blocks[1][0].conv1.weight, hard.blocks[1][0].conv1.weight)


def test_construction_errors(backbone):
    layers = backbone.layer_names
    with pytest.raises(GraphError, match="do not match backbone"):
        MultiTaskNetwork(SharingGraph.hard_sharing(TASKS, layers[:-1]), backbone, _heads(backbone))
    with pytest.raises(GraphError, match="cannot skip"):
        MultiTaskNetwork(SharingGraph.hard_sharing(TASKS, layers, skippable=["stem"]), backbone, _heads(backbone))
    with pytest.raises(GraphError, match="heads"):
        MultiTaskNetwork(SharingGraph.hard_sharing(TASKS, layers), backbone, _heads(backbone, ("x", "y")))
    net = MultiTaskNetwork(SharingGraph.hard_sharing(TASKS, layers), backbone, _heads(backbone))
    with pytest.raises(ValueError, match=r"input: expected shape \(B, 1, 12, 12\)"):
        net(torch.randn(2, 3, 12, 12))
