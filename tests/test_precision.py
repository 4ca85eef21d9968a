"""Mixed precision on the CPU: bf16 autocast against fp32 within bf16's precision, fp16's gradient scale (loss
values kept, gradients scaled, an overflowing step skipped and the scale backed off), and the setting recorded."""

import math

import pytest
import torch
from helpers import TOY_TASKS, tiny_space, toy_data, toy_split

from nas_mtl import SharingGraph, TrainConfig, train_graph
from nas_mtl.balancing import create_balancer, list_balancers
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.tasks import labelled_losses
from nas_mtl.train_step import LossScaler, _ScaleGradient, autocast, balanced_backward, overflowed

BF16_EPS = 2.0**-8  # bfloat16 keeps 8 significant bits


@pytest.fixture(scope="module")
def setting():
    return toy_data("toy", TOY_TASKS, toy_split), tiny_space(widths=(4,), depths=(2,))


def _network(setting, seed=0):
    data, space = setting
    torch.manual_seed(seed)
    graph = SharingGraph.hard_sharing(data.task_names, space.layers)
    return MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks)


def _losses(network, data, precision):
    x, y = next(iter(torch.utils.data.DataLoader(data.train, batch_size=32)))
    with autocast(precision, torch.device("cpu")):
        losses, _ = labelled_losses(network(x), y, data.tasks)
    return {k: v.float() for k, v in losses.items()}


def test_bf16_forward_losses_are_fp32_losses_within_bf16_precision(setting):
    """Three conv blocks and a head: each rounds its inputs and products to 8 bits; the losses may differ by a few
    such roundings (8 eps relative), and fall far outside fp32's own rounding (they are really bf16)."""
    data, _ = setting
    network = _network(setting).eval()
    fp32, bf16 = _losses(network, data, "fp32"), _losses(network, data, "bf16")
    for task in fp32:
        assert bf16[task].dtype == torch.float32
        assert abs(bf16[task] - fp32[task]) <= 8 * BF16_EPS * abs(fp32[task]), (task, bf16[task], fp32[task])
    assert any(abs(bf16[t] - fp32[t]) > 1e-6 * abs(fp32[t]) for t in fp32)  # autocast did run in bf16


@pytest.mark.parametrize("balancer", ["equal", "mgda", "pcgrad", "famo"])
def test_a_bf16_step_leaves_fp32_weights_gradients_and_balancer_state(setting, balancer):
    data, _ = setting
    network = _network(setting)
    b = create_balancer(balancer)
    b.prepare(network)
    try:
        balanced_backward(b, _losses(network, data, "bf16"), network)
    finally:
        b.detach()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in network.parameters())
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())


def test_scaled_gradients_keep_the_losss_value_and_multiply_its_gradient():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    loss = (w**2).sum()
    scaled = _ScaleGradient.apply(loss, 1024.0)
    assert scaled.item() == loss.item()  # a loss-weighting balancer sees the true value
    scaled.backward()
    assert torch.equal(w.grad, 1024.0 * 2 * w.detach())


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backed_off(setting):
    data, _ = setting
    network = _network(setting)
    scaler = LossScaler(torch.device("cpu"))
    scaler.set(2.0**127)  # scaled gradients of O(1) losses overflow float32
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    before = [p.detach().clone() for p in network.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        balanced_backward(create_balancer("equal"), scaler.scale(_losses(network, data, "fp16")), network)
    assert overflowed(network, scaler) and not overflowed(network, None)
    assert not scaler.step(optimizer)  # GradScaler's own rule: skipped, scale halved
    assert scaler.scaler.get_scale() == 2.0**126 and scaler.overflows == 1
    assert all(torch.equal(p, b) for p, b in zip(network.parameters(), before))
    optimizer.zero_grad(set_to_none=True)
    scaler.set(2.0**10)
    balanced_backward(create_balancer("equal"), scaler.scale(_losses(network, data, "fp16")), network)
    grads = [p.grad.clone() for p in network.parameters()]
    assert scaler.step(optimizer)  # unscaled before the step: the update is lr x the true gradient
    scaler.set(1.0)
    assert not overflowed(network, scaler)  # at scale 1 a non-finite gradient is the model's own
    for p, b, g in zip(network.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g / 2.0**10, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad"])
def test_an_overflow_a_gradient_combining_balancer_refuses_is_an_overflow_too(setting, name):
    """These balancers check every per-task gradient and write none when one is not finite: still fp16's overflow
    (finite losses, scale above 1), skipped with the scale backed off as GradScaler does."""
    data, _ = setting
    network = _network(setting)
    scaler = LossScaler(torch.device("cpu"))
    scaler.set(2.0**127)
    with pytest.raises(FloatingPointError, match="no gradient was written"):
        balanced_backward(create_balancer(name), scaler.scale(_losses(network, data, "fp16")), network)
    assert all(p.grad is None for p in network.parameters())
    assert overflowed(network, scaler)
    scaler.skip()
    assert scaler.scaler.get_scale() == 2.0**126 and scaler.overflows == 1
    scaler.set(1.0)
    assert not overflowed(network, scaler)  # at scale 1 the refusal is the model's own non-finite gradient


def test_fp16_training_with_mgda_backs_the_scale_off_instead_of_stopping(setting, monkeypatch):
    """From a scale at which every scaled gradient overflows, training with on_nonfinite="raise" skips the
    overflowing steps (halving the scale each time) and never raises."""
    import functools

    data, space = setting
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**127))
    graph = SharingGraph.hard_sharing(data.task_names, space.layers)
    config = TrainConfig(epochs=1, batch_size=16, precision="fp16", progress=False, device="cpu")
    before = _network(setting).state_dict()
    net, result = train_graph(graph, data, space, config, create_balancer("mgda"))
    assert result.history and all(math.isfinite(v) for v in result.history[-1]["train_loss"].values())
    weights = [k for k in before if k.endswith("weight")]
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in weights)  # every step overflowed: none taken


def _update(setting, name, scale):
    """The parameters after one SGD step of ``name`` on fp32 losses whose gradients are scaled by ``scale``
    and unscaled before the step (fp16's rule without fp16's rounding)."""
    data, _ = setting
    network = _network(setting)
    torch.manual_seed(1)  # random balancers (RLW, PCGrad's order) draw the same
    balancer = create_balancer(name)
    balancer.prepare(network)
    losses = _losses(network, data, "fp32")
    scaled = {k: _ScaleGradient.apply(v, scale) for k, v in losses.items()}
    balanced_backward(balancer, scaled, network)
    balancer.detach()
    return [p.detach() - 0.1 * p.grad / scale for p in network.parameters()]


@pytest.mark.parametrize("name", list_balancers())
def test_a_balancer_marked_scale_invariant_steps_alike_under_fp16s_gradient_scale(setting, name):
    """Each registered balancer, scale 1 against 2^10: equal steps (float32 rounding of O(1) values: 1e-5
    relative) exactly when it says it is scale-invariant; the others are refused with fp16."""
    balancer = create_balancer(name)
    one, scaled = _update(setting, name, 1.0), _update(setting, name, 2.0**10)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(one, scaled))
    assert same == balancer.scale_invariant, f"{name}: scale-invariant is {balancer.scale_invariant}, measured {same}"
    if not balancer.scale_invariant:
        data, space = setting
        graph = SharingGraph.hard_sharing(data.task_names, space.layers)
        with pytest.raises(ValueError, match=f"precision fp16: balancer {name!r} is not invariant"):
            train_graph(graph, data, space, TrainConfig(epochs=1, device="cpu", precision="fp16"), balancer)


def test_bf16_and_fp16_training_runs_are_recorded_and_resume_only_as_they_ran(setting, tmp_path):
    data, space = setting
    graph = SharingGraph.hard_sharing(data.task_names, space.layers)
    base = TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu", seed=0)
    _, fp32 = train_graph(graph, data, space, base, run_dir=tmp_path / "fp32")
    for precision in ("bf16", "fp16"):
        config = TrainConfig(**{**base.to_dict(), "precision": precision})
        _, result = train_graph(graph, data, space, config, run_dir=tmp_path / precision)
        assert all(math.isfinite(v) for m in result.test.values() for v in m.values())
        assert config.identity()["precision"] == precision
        with pytest.raises(ValueError, match="precision"):  # a run folder resumes only at its own precision
            train_graph(graph, data, space, base, run_dir=tmp_path / precision)
    assert "precision" not in base.identity()  # fp32: the records of every earlier run stay valid
    saved = torch.load(tmp_path / "fp16" / "checkpoint.pt", weights_only=True)
    assert saved["extra"]["loss_scale"]["scaler"]["scale"] > 0  # the gradient scale is checkpointed
    with pytest.raises(ValueError, match="precision: expected one of|precision must be one of"):
        TrainConfig(precision="fp8")


def test_a_checkpoint_from_before_precision_and_channels_last_resumes(setting, tmp_path, monkeypatch):
    """A run killed in epoch 2 whose checkpoint config has no ``precision`` / ``channels_last`` (written before the
    options existed) resumes at their defaults, bitwise to the uninterrupted run."""
    from test_train import _train_killed_in_epoch_two

    from nas_mtl.train import train

    data, _ = setting
    config = TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu", seed=0, progress=False)
    reference = _network(setting)
    train(reference, data, config)
    _train_killed_in_epoch_two(monkeypatch, _network(setting), data, config, run_dir=tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("precision", "channels_last"):
        del state["config"][key]
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = _network(setting, seed=1)
    train(resumed, data, config, run_dir=tmp_path)
    for (k, v), (k2, v2) in zip(resumed.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)


def test_channels_last_trains_the_same_network_within_float32_rounding(setting):
    """The channels-last layout changes the convolution kernels, not the model: a network trained with it holds
    its convolution weights channels-last, and the same weights give the default layout's outputs within float32
    rounding of sums over a few hundred products (1e-5 relative); the option is recorded (the default is not, so
    older records stay valid)."""
    import copy

    data, space = setting
    graph = SharingGraph.hard_sharing(data.task_names, space.layers)
    base = TrainConfig(epochs=1, batch_size=32, lr=1e-2, device="cpu", seed=0)
    last = TrainConfig(**{**base.to_dict(), "channels_last": True})
    nhwc, result = train_graph(graph, data, space, last)
    assert all(math.isfinite(v) for m in result.test.values() for v in m.values())
    convs = [p for p in nhwc.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    plain = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format).eval()
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in plain.parameters() if p.dim() == 4)
    x = next(iter(torch.utils.data.DataLoader(data.val, batch_size=16)))[0]
    with torch.no_grad():
        got, want = nhwc.eval()(x.to(memory_format=torch.channels_last)), plain(x)
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=1e-5, atol=1e-6)
    assert last.identity()["channels_last"] is True and "channels_last" not in base.identity()
