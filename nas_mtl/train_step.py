"""The pieces of one training step: what step hooks see, BatchNorm buffers kept or restored, and the balanced
backward pass with its check for non-finite gradients."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .balancing import Balancer
from .network import MultiTaskNetwork


@dataclass(frozen=True)
class StepContext:
    """What a step hook sees: called after the forward pass and the loss check, before the backward.

    Hooks may run extra autograd work on ``losses`` (``retain_graph=True``) but must not call
    ``backward`` on them nor modify the parameters (the balancer and the optimiser do that next).
    """

    network: MultiTaskNetwork
    x: torch.Tensor
    targets: Mapping[str, torch.Tensor]
    losses: Mapping[str, torch.Tensor]
    epoch: int
    step: int


StepHook = Callable[[StepContext], None]


def buffer_snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of ``module``'s buffers (BatchNorm running statistics), for :func:`restore_buffers`."""
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module: torch.nn.Module, snapshot: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for buf, old in zip(module.buffers(), snapshot):
            buf.copy_(old)


@contextlib.contextmanager
def kept_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Forward passes inside leave ``module``'s buffers as they were (a batch seen twice counts once)."""
    snapshot = buffer_snapshot(module)
    try:
        yield
    finally:
        restore_buffers(module, snapshot)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's precision: nothing for fp32, else ``torch.autocast`` to bfloat16 / float16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _ScaleGradient(torch.autograd.Function):
    """The identity whose gradient is multiplied by ``scale``: a loss keeps its value, its gradients are scaled."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class LossScaler:
    """fp16's dynamic gradient scale: ``torch.amp.GradScaler`` and its own rules (growth after 2000 clean steps,
    halving and a skipped step on an overflow).

    Unlike ``GradScaler.scale(loss)``, each task loss keeps its value and only its gradients are multiplied by the
    scale (:meth:`scale`): loss-weighting balancers see the true losses, and a scale-invariant balancer
    (``Balancer.scale_invariant``) combines gradients that are all multiplied by the same factor, which
    :meth:`step` divides out before the optimiser's step. A step whose gradients hold an inf is an overflow:
    :meth:`step` then skips it and backs the scale off, as GradScaler does.
    """

    def __init__(self, device: torch.device) -> None:
        self.scaler = torch.amp.GradScaler(device.type)
        self.scaler.scale(torch.ones((), device=device))  # GradScaler makes its scale tensor on first use
        self.overflows = 0
        self._factor = float(self.scaler.get_scale())  # the scale on the host: one device sync per step, in step()

    def scale(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: _ScaleGradient.apply(v, self._factor) for k, v in losses.items()}

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale, step unless a gradient is inf or NaN, update the scale; whether the step was taken."""
        before = self._factor
        self.scaler.unscale_(optimizer)
        self.scaler.step(optimizer)
        self.scaler.update()
        self._factor = float(self.scaler.get_scale())
        taken = self._factor >= before
        self.overflows += not taken
        return taken

    @property
    def value(self) -> float:
        """The current scale."""
        return self._factor

    def set(self, scale: float) -> None:
        """Set the scale (as ``GradScaler.update(new_scale)``)."""
        self.scaler.update(float(scale))
        self._factor = float(scale)

    def skip(self) -> None:
        """An overflow: no step, and the scale backed off as GradScaler does after an inf (its growth count
        restarts). For steps whose gradients never reached ``.grad`` (a gradient-combining balancer refuses
        non-finite per-task gradients before writing any), where GradScaler's own ``step`` finds nothing to check."""
        self.scaler.update(self._factor * self.scaler.get_backoff_factor())
        tracker = getattr(self.scaler, "_growth_tracker", None)
        if tracker is not None:
            tracker.fill_(0)
        self._factor = float(self.scaler.get_scale())
        self.overflows += 1

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "overflows": self.overflows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.overflows = int(state["overflows"])
        self._factor = float(self.scaler.get_scale())


def overflowed(network: torch.nn.Module, scaler: LossScaler | None) -> bool:
    """Whether a backward pass of finite losses that failed (FloatingPointError) was fp16's scaled gradients
    overflowing: the scale is still above 1 and a gradient is non-finite (an inf in the backward pass brings NaNs
    with it), or none was written (MGDA, PCGrad, CAGrad, ... check every per-task gradient before writing any).
    At a scale of 1 or below nothing is scaled up any more: the non-finite gradient is the model's own, for the
    trainer's ``on_nonfinite`` rule."""
    if scaler is None or scaler.value <= 1.0:
        return False
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    return not grads or any(not torch.isfinite(g).all() for g in grads)


def balanced_backward(balancer: Balancer, losses: Mapping[str, torch.Tensor], network: MultiTaskNetwork) -> None:
    """``balancer.backward`` then a check of the gradients: FloatingPointError naming the parameters whose
    gradient has a NaN/inf (the balancer may raise it itself, naming the task)."""
    balancer.backward(losses, network)
    _check_gradients(network, balancer)


def _check_gradients(network: MultiTaskNetwork, balancer: Balancer) -> None:
    """Raise FloatingPointError naming the parameters whose gradient has a NaN/inf (one reduction when clean)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)):
        bad = [n for n, p in network.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FloatingPointError(f"{balancer.name or type(balancer).__name__}: non-finite gradient in {bad[:5]}{more}")


__all__ = [
    "LossScaler",
    "StepContext",
    "autocast",
    "StepHook",
    "balanced_backward",
    "overflowed",
    "buffer_snapshot",
    "kept_buffers",
    "restore_buffers",
]
