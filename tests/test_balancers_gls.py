"""GLS against its definition: the gradient of the geometric mean of the task losses, (Π_t L_t)^(1/T), taken by
autograd as LibMTL's GLS takes it (``torch.pow(losses.prod(), 1/T).backward()``)."""

import math

import pytest
import torch
from torch import nn

from nas_mtl.balancing import create_balancer


def _model_and_losses(seed: int, tasks: int = 3) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, tasks)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, tasks, dtype=torch.float64)
    out = model(x)
    scales = [1.0, 10.0, 0.01, 3.0][:tasks]  # losses of very different scales: what GLS is for
    return model, {f"t{k}": scales[k] * ((out[:, k] - y[:, k]) ** 2).mean() for k in range(tasks)}


@pytest.mark.parametrize("seed", range(5))
def test_gls_is_the_gradient_of_the_geometric_mean_of_the_losses(seed):
    model, losses = _model_and_losses(seed)
    torch.pow(torch.stack(list(losses.values())).prod(), 1 / len(losses)).backward(retain_graph=True)
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    weights = create_balancer("gls").backward(losses, model)
    for got, want in zip((p.grad for p in model.parameters()), reference):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)  # float64: exact up to rounding
    values = {t: float(v) for t, v in losses.items()}
    geometric = math.exp(sum(math.log(v) for v in values.values()) / 3)
    assert weights == pytest.approx({t: geometric / (3 * v) for t, v in values.items()}, rel=1e-12)


def test_gls_with_one_task_is_equal_weighting_and_clamps_a_zero_loss():
    model, losses = _model_and_losses(0, tasks=1)
    assert create_balancer("gls").backward(losses, model) == pytest.approx({"t0": 1.0}, rel=1e-15)
    weights = create_balancer("gls:eps=1e-6").weights_for({"a": 0.0, "b": 4.0}, model)
    assert weights == pytest.approx({"a": math.sqrt(1e-6 * 4.0) / (2 * 1e-6), "b": math.sqrt(1e-6 * 4.0) / 8.0})
    with pytest.raises(ValueError, match="gls: eps must be > 0"):
        create_balancer("gls:eps=0")
