"""Soft sharing (nas_mtl/soft.py): the l2 coupling's proximal step, cross-stitch units, their cost and export.

References: independent training (the limits λ = 0 and identity mixing must be it bitwise), the prox step's
optimality condition, a hand-written cross-stitch forward pass, torch's FLOP counter, and the exported files.
"""

import json

import pytest
import torch
from helpers import TOY_TASKS, tiny_backbone, tiny_network, toy_data, toy_images, toy_split
from torch import nn

from nas_mtl.backbones import count_macs
from nas_mtl.export import export_network, load_exported
from nas_mtl.graph import GraphError, SharingGraph
from nas_mtl.soft import Coupling
from nas_mtl.train import TrainConfig, train

TASKS = TOY_TASKS


def _net(coupling=None, seed=0, graph=None):
    return tiny_network(TASKS, graph or SharingGraph.independent, seed, coupling=coupling)


def _data():
    return toy_data("toy", TASKS, toy_split)


CFG = TrainConfig(epochs=2, batch_size=16, lr=1e-2, progress=False, device="cpu")


def _assert_same_state(a, b, exclude=()):
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sb if not k.startswith(exclude)] if exclude else list(sb)
    for k in keys:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------- soft-l2
def test_l2_with_zero_strength_trains_exactly_as_independent_nets():
    plain, soft = _net(), _net(Coupling("l2", strength=0.0))
    train(plain, _data(), CFG)
    train(soft, _data(), CFG)
    _assert_same_state(soft, plain)


def test_l2_step_is_the_proximal_step_of_the_penalty():
    """After the optimiser's step to v, the copies are the minimiser of λ Σ_t ||θ_t − θ̄||² + Σ_t ||θ_t − v_t||² / 2η:
    its gradient 2λ(θ_t − θ̄) + (θ_t − v_t)/η vanishes, and the mean is v's."""
    lam, lr = 3.0, 0.05
    net = _net(Coupling("l2", strength=lam, layers=("s0.b0",))).double()
    v = (
        [p.detach().clone() for p in net.blocks[1][0].parameters()],
        [p.detach().clone() for p in net.blocks[1][1].parameters()],
    )
    net.couple(lr)
    for p0, p1, v0, v1 in zip(net.blocks[1][0].parameters(), net.blocks[1][1].parameters(), *v):
        mean = (p0 + p1) / 2
        torch.testing.assert_close(mean, (v0 + v1) / 2, rtol=1e-14, atol=1e-15)
        for p, vp in ((p0, v0), (p1, v1)):
            grad = 2 * lam * (p - mean) + (p - vp) / lr
            assert float(grad.detach().abs().max()) <= 1e-12 * float(vp.abs().max()) / lr
    assert not torch.equal(net.blocks[1][0].conv1.weight, net.blocks[1][1].conv1.weight)  # pulled, not merged
    stem = dict(net.blocks[0][0].named_parameters())  # an uncoupled block: untouched
    assert all(torch.equal(stem[k], q) for k, q in _net().double().blocks[0][0].named_parameters())


def test_l2_with_huge_strength_keeps_the_copies_equal_to_float_precision():
    net = _net(Coupling("l2", strength=1e12))
    train(net, _data(), CFG)
    eps = torch.finfo(torch.float32).eps
    for row in net.blocks:
        for p0, p1 in zip(row[0].parameters(), row[1].parameters()):
            assert float((p0 - p1).detach().abs().max()) <= 4 * eps * float(p0.detach().abs().max())
    independent = _net()
    train(independent, _data(), CFG)
    spread = [
        float((p0 - p1).detach().abs().max())
        for p0, p1 in zip(independent.blocks[1][0].parameters(), independent.blocks[1][1].parameters())
    ]
    assert max(spread) > 1e-2  # without the coupling the copies differ


# ---------------------------------------------------------------------- cross-stitch
def test_cross_stitch_with_identity_mixing_frozen_trains_exactly_as_independent_nets():
    plain, stitched = _net(), _net(Coupling("cross-stitch", init=1.0))
    for alpha in stitched.mixing.values():
        alpha.requires_grad_(False)
    train(plain, _data(), CFG)
    train(stitched, _data(), CFG)
    _assert_same_state(stitched, plain, exclude=("mixing.",))


def test_cross_stitch_forward_equals_a_hand_written_model():
    net = _net(Coupling("cross-stitch", layers=("s0.b0", "s1.b0"))).double().eval()
    with torch.no_grad():
        for alpha in net.mixing.values():
            alpha.copy_(torch.tensor([[0.7, 0.3], [0.45, 0.55]], dtype=torch.float64))
    x = toy_images(5, dtype=torch.float64)
    h = [x, x]
    for layer in range(len(net.blocks)):
        h = [net.blocks[layer][t](h[t]) for t in range(2)]
        if net.graph.layers[layer] in ("s0.b0", "s1.b0"):
            h = [0.7 * h[0] + 0.3 * h[1], 0.45 * h[0] + 0.55 * h[1]]
    want = {t: net.heads[i](net.neck(h[i])) for i, t in enumerate(("a", "b"))}
    got = net(x)
    for t in ("a", "b"):
        torch.testing.assert_close(got[t], want[t], rtol=1e-12, atol=1e-12)
    assert set(net(x, tasks=["b"])) == {"b"}


def test_cross_stitch_mixing_learns_at_its_own_rate_and_is_a_shared_group():
    net = _net(Coupling("cross-stitch", lr_scale=50.0))
    groups = net.parameter_groups()
    assert all(any(a is p for p in groups[frozenset({"a", "b"})]) for a in net.mixing.values())
    from nas_mtl.train import Trainer

    trainer = Trainer(net, _data(), CFG)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-2, 0.5]
    before = {k: v.clone() for k, v in net.mixing.items()}
    trainer.fit()
    assert any(not torch.equal(before[k], v) for k, v in net.mixing.items())


def test_cost_counts_the_mixing_and_matches_torchs_flop_counter():
    plain, stitched = _net(), _net(Coupling("cross-stitch"))
    layers = len(stitched.blocks)
    c0, c1 = plain.cost(), stitched.cost()
    assert c1.params == c0.params + layers * 4
    assert c1.params == sum(p.numel() for p in stitched.parameters())
    x = torch.zeros(1, 1, 8, 8)
    stitched.eval()
    assert c1.macs == count_macs(stitched, x)
    assert c1.macs > c0.macs


def test_a_coupling_needs_the_independent_pattern_and_known_layers():
    bb = tiny_backbone()
    with pytest.raises(GraphError, match="must be run by every task with its own copy"):
        _net(Coupling("l2"), graph=SharingGraph.hard_sharing(["a", "b"], bb.layer_names))
    with pytest.raises(GraphError, match=r"layers \['nope'\] are not blocks"):
        _net(Coupling("l2", layers=("nope",)))
    with pytest.raises(ValueError, match="coupling: strength must be a number >= 0"):
        Coupling("l2", strength=-1)
    with pytest.raises(ValueError, match="where: init: unknown option for coupling 'l2'"):
        Coupling.from_dict({"kind": "l2", "init": 0.5}, "where")


def test_resuming_with_another_coupling_is_refused(tmp_path):
    train(_net(Coupling("l2", strength=0.1)), _data(), CFG, run_dir=tmp_path)
    with pytest.raises(ValueError, match="coupling"):
        train(_net(Coupling("l2", strength=0.2)), _data(), CFG, run_dir=tmp_path)


def test_cross_stitch_exports_with_its_mixing_and_onnx_parity(tmp_path):
    net = _net(Coupling("cross-stitch"))
    train(net, _data(), CFG)
    report = export_network(net, TASKS, tmp_path)
    assert report["max_abs_diff"]["safetensors"] == 0.0
    n = sum(m.weight[0].numel() for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert max(report["max_abs_diff"][f] for f in ("torch-export", "onnx")) <= n * torch.finfo(torch.float32).eps * 10
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["coupling"] == {"kind": "cross-stitch", "init": 0.9, "lr_scale": 10.0}
    reloaded = load_exported(tmp_path)
    for k, v in net.mixing.items():
        torch.testing.assert_close(reloaded.mixing[k], v, rtol=0, atol=0)


def test_gradient_combining_balancers_see_every_task_reach_the_blocks_under_cross_stitch():
    """Through the mixing, task a's loss depends on task b's block copies: those copies form one shared group
    with the mixing weights, and MGDA (two tasks: Sener & Koltun's closed form) combines the full per-task
    gradients there; blocks after the last unit stay private."""
    from nas_mtl.balancing import create_balancer

    net = _net(Coupling("cross-stitch", layers=("stem", "s0.b0"))).double().eval()
    groups = net.parameter_groups()
    shared = groups[frozenset({"a", "b"})]
    assert {id(p) for p in shared} == {
        id(p) for p in [*net.blocks[0].parameters(), *net.blocks[1].parameters(), *net.mixing.values()]
    }
    assert {id(p) for p in groups[frozenset({"a"})]} >= {id(p) for p in net.blocks[2][0].parameters()}
    g = torch.Generator().manual_seed(3)
    x = toy_images(6, g, torch.float64)
    y = {"a": torch.randint(0, 3, (6,), generator=g), "b": torch.randn(6, 2, generator=g, dtype=torch.float64)}

    def losses():
        out = net(x)
        return {
            "a": torch.nn.functional.cross_entropy(out["a"], y["a"]),
            "b": torch.nn.functional.mse_loss(out["b"], y["b"]),
        }

    ls = losses()
    ga, gb = (torch.cat([d.reshape(-1) for d in torch.autograd.grad(ls[t], shared, retain_graph=True)]) for t in "ab")
    assert float(gb[: sum(p.numel() for p in net.blocks[0][0].parameters())].abs().max()) > 0  # b reaches a's copy
    w = float(torch.clamp((gb - ga) @ gb / ((ga - gb) @ (ga - gb)), 0, 1))
    net.zero_grad(set_to_none=True)
    create_balancer("mgda").prepare(net).backward(losses(), net)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, w * ga + (1 - w) * gb, rtol=1e-9, atol=1e-12)


def test_forward_with_unknown_tasks_is_refused_under_cross_stitch():
    with pytest.raises(ValueError, match=r"tasks: unknown \['z'\]"):
        _net(Coupling("cross-stitch"))(toy_images(2), tasks=["a", "z"])
