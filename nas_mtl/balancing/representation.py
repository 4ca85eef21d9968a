"""Representation-gradient variants ("upper bound", UB) of the gradient-combining balancers.

MGDA-UB (Sener & Koltun 2018, Sec. 3.3) computes the task weights from the gradients w.r.t. the shared
representation Z instead of the shared parameters (their Eq. 6, an upper bound of the min-norm objective), then
runs ONE backward pass through the shared trunk with ``Σ_t w_t ∂L_t/∂Z``. IMTL-G (Liu et al. 2021, Sec. 3.2:
"the gradients of the shared feature z") and Aligned-MTL (Senushkin et al. 2023, Aligned-MTL-UB) define the same
variant. Z is the output of the deepest block that all tasks run together (the trunk for hard sharing), captured
by a forward hook; parameters after Z (heads, and for trees the branches) are handled as in ``params`` mode with
the per-task gradients that computing ∂L_t/∂Z yields anyway. Without such a block (independent networks), and at a
step with a single task's loss (a single-task network, or one task labelled in the batch: Z is then shared with no
other task), the UB variant equals the exact one, which gives that task its own gradient.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..graph import SKIP
from .grouped import (
    GroupedGradientBalancer,
    check_multitask,
    gram_of,
    loss_values,
    parameter_groups,
    stack_rows,
    task_gradients,
)

MODES = ("params", "ub")


def shared_trunk(network: nn.Module) -> list[tuple[int, int]]:
    """(layer, copy) of the non-skip blocks that all tasks run together, input to the deepest one.

    Z, MGDA-UB's shared representation, is the output of the last; empty when no block is run by
    every task with shared computation.
    """
    check_multitask(network)
    graph = network.graph
    everyone = set(graph.tasks)
    return [(n.layer, n.copy) for n in graph.prefix_nodes() if set(n.tasks) == everyone and n.copy != SKIP]


class _Capture:
    """Forward hook keeping the block's latest output when it is part of an autograd graph.

    Copies (``copy.deepcopy`` of a hooked block, pickling) are inert: they never hold a tensor.
    """

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.output: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        if self.active and isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
            self.output = output

    def take(self) -> torch.Tensor | None:
        out, self.output = self.output, None
        return out

    def __deepcopy__(self, memo: dict) -> _Capture:
        return _Capture(active=False)

    def __reduce__(self) -> tuple:
        return (_Capture, (False,))


class _Attachment:
    """MGDA-UB's hook on one network: the capture, the hook handle, the ids of the parameters before Z."""

    def __init__(self, network: nn.Module) -> None:
        self.network = weakref.ref(network)
        trunk = shared_trunk(network)
        self.capture = _Capture()
        self.handle = None
        self.below: frozenset[int] = frozenset()
        if trunk:
            layer, copy = trunk[-1]
            self.handle = network.blocks[layer][copy].register_forward_hook(self.capture)
            self.below = frozenset(id(p) for lay, c in trunk for p in network.blocks[lay][c].parameters())


class RepresentationBalancer(GroupedGradientBalancer):
    """A gradient-combining balancer with a ``mode``: ``"params"`` (exact per-group gradients) or ``"ub"``
    (weights from the gradients w.r.t. the shared representation, one backward through the trunk).

    In ``ub`` mode the network's shared block must be hooked before the forward pass:
    ``balancer.prepare(network)`` once before training (the trainer does it; idempotent; re-targets
    another network). If :meth:`backward` finds no hook for its network it hooks it and that one step
    runs as ``params`` (with a warning). :meth:`detach` removes the hook (the trainer does it at the end).
    """

    mode: str = "params"
    _attachment: _Attachment | None = None

    def _set_mode(self, mode: str, name: str) -> None:
        """Validate ``mode``; the UB variant is registered as ``NAME-ub``."""
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {list(MODES)}, got {mode!r}")
        self.mode = mode
        self.name = name if mode == "params" else f"{name}-ub"
        self._attachment = None

    def prepare(self, network: nn.Module) -> RepresentationBalancer:
        """Hook ``network``'s shared representation (``ub`` mode; a no-op for ``params``)."""
        if self.mode == "ub" and not self._attached_to(network):
            self.detach()
            self._attachment = _Attachment(network)
        return self

    def detach(self) -> None:
        """Remove the representation hook, if any."""
        if self._attachment is not None and self._attachment.handle is not None:
            self._attachment.handle.remove()
        self._attachment = None

    def _attached_to(self, network: nn.Module) -> bool:
        return self._attachment is not None and self._attachment.network() is network

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        if self.mode == "params":
            return super().backward(losses, network)
        if not self._attached_to(network):
            self.prepare(network)
            warnings.warn(
                f"{self.name}: the shared representation was not hooked before this forward pass (call "
                "balancer.prepare(network) before training); this step used exact parameter gradients",
                stacklevel=2,
            )
            return super().backward(losses, network)
        loss = loss_values(losses, self.name)
        attachment = self._attachment
        z = attachment.capture.take()
        if len(losses) < 2:  # Z shared with no other task: as in ``params`` mode (a normalisation would rescale it)
            return super().backward(losses, network)
        if z is None:
            if attachment.handle is not None:
                warnings.warn(
                    f"{self.name}: no shared representation was captured since the last step (prepare(network) "
                    "must come before the forward pass, with gradients enabled); this step used exact "
                    "parameter gradients",
                    stacklevel=2,
                )
            return super().backward(losses, network)
        groups = parameter_groups(network, list(losses), exclude=attachment.below)
        matrices, private, rep_grads = task_gradients(losses, groups, representation=z, retain_graph=True)
        tasks = list(losses)
        rep = stack_rows([(rep_grads[t],) for t in tasks])
        gram = gram_of(rep, tasks, "w.r.t. the shared representation", self.name)
        staged = self.stage(groups, matrices, private)
        applied, reported = self.group_weights(gram, np.array([loss[t] for t in tasks]))
        self.write(staged, loss)
        z.backward((torch.from_numpy(applied).to(rep) @ rep).view_as(z))
        return dict(zip(tasks, reported.tolist()))


def ub_cost(variant):
    """Mark a UB variant's factory with its cost class (``nas-mtl list``)."""
    variant.cost = "one backward pass per task to the shared representation, one through the trunk, a T x T problem"
    return variant


__all__ = [
    "MODES",
    "RepresentationBalancer",
    "shared_trunk",
    "ub_cost",
]
