"""The pieces of one training step: what step hooks see, BatchNorm buffers kept or restored, and the balanced
backward pass with its check for non-finite gradients."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

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
    "StepContext",
    "StepHook",
    "balanced_backward",
    "buffer_snapshot",
    "kept_buffers",
    "restore_buffers",
]
