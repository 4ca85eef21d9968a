"""MGDA and MGDA-UB (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

Shared parameters move along the min-norm element of the convex hull of the task gradients
(their Eq. 3, solved by :func:`~nas_mtl.balancing.min_norm.min_norm_weights`), a direction that does
not increase any task's loss; task-specific parameters follow their own task's gradient (Algorithm 2).

Modes:
  * ``params``: exact per-task gradients of the shared parameters. On any sharing graph each
    parameter group shared by >= 2 tasks solves its own min-norm problem over the tasks that use it.
  * ``ub`` (MGDA-UB, Section 3.3): α from the gradients w.r.t. the shared representation Z (their
    Eq. 6, the upper bound), then ONE backward pass through the shared trunk with ``Σ_t λ_t ∂L_t/∂Z``.
    Z is the output of the deepest block that all tasks run together (the trunk for hard sharing),
    captured by a forward hook; parameters after Z (heads, and for trees the branches) are handled as
    in ``params`` mode with the per-task gradients that computing ∂L_t/∂Z yields anyway. Without such
    a block (independent networks) ``ub`` equals ``params``.

Normalisation (reference code's ``gradient_normalizers``; used only to compute α): each task gradient
is divided by ``n_t`` = ``l2``: its norm, ``loss``: the loss value, ``loss+``: loss x norm, ``none``: 1.
α solves the min-norm problem for the normalised gradients ``ĝ_t = g_t / n_t`` and the update is
their min-norm element ``Σ_t α_t ĝ_t``, i.e. loss gradients weighted ``λ_t = α_t / n_t`` (as LibMTL
does), which is a common descent direction for every task whatever the normalisation. (The authors'
training script instead reweights the raw losses by α, which is the same only for ``none``.)
:meth:`MGDA.backward` returns α.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import SKIP
from .base import register_balancer
from .grouped import (
    GroupedGradientBalancer,
    check_multitask,
    gram_of,
    loss_values,
    parameter_groups,
    stack_rows,
    task_gradients,
)
from .min_norm import min_norm_weights

MODES = ("params", "ub")
NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def normalizers(normalization: str, gram: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per-task divisors ``n_t`` (zero ones become 1: a zero gradient stays zero).

    Raises:
        ValueError: ``loss`` / ``loss+`` with a negative loss (the normalisation would flip its gradient).
    """
    if normalization in ("loss", "loss+") and (loss < 0).any():
        raise ValueError(
            f"mgda: normalization {normalization!r} needs non-negative losses, got {loss.tolist()}; use 'l2' or 'none'"
        )
    norm = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    n = {"none": np.ones_like(loss), "l2": norm, "loss": loss, "loss+": loss * norm}[normalization]
    return np.where(n > 0, n, 1.0)


def mgda_weights(gram: np.ndarray, loss: np.ndarray, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    """``(λ, α)``: α minimises ``||Σ α_t ĝ_t||²`` over the simplex (``ĝ_t = g_t / n_t``), λ = α / n."""
    n = normalizers(normalization, gram, loss)
    alpha = min_norm_weights(gram / np.outer(n, n))
    return alpha / n, alpha


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


@register_balancer("mgda")
class MGDA(GroupedGradientBalancer):
    """MGDA (Sener & Koltun 2018): the min-norm common descent direction of the task gradients.

    Args:
        mode: ``"params"`` (exact gradients of the shared parameters) or ``"ub"`` (MGDA-UB: gradients
            w.r.t. the shared representation, one backward through the trunk).
        normalization: ``"none"`` (the paper's algorithm), ``"l2"``, ``"loss"`` or ``"loss+"``.

    In ``ub`` mode the network's shared block must be hooked before the forward pass:
    ``balancer.prepare(network)`` once before training (the trainer does it; idempotent; re-targets
    another network). If :meth:`backward` finds no hook for its network it hooks it and that one step
    runs as ``params`` (with a warning). :meth:`detach` removes the hook (the trainer does it at the end).
    """

    def __init__(self, mode: str = "params", normalization: str = "none") -> None:
        if mode not in MODES:
            raise ValueError(f"mgda: mode must be one of {list(MODES)}, got {mode!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
        self.mode = mode
        self.normalization = normalization
        self.name = "mgda" if mode == "params" else "mgda-ub"
        self._attachment: _Attachment | None = None

    def __repr__(self) -> str:
        return f"MGDA(mode={self.mode!r}, normalization={self.normalization!r})"

    def options(self) -> dict[str, Any]:
        return {"normalization": self.normalization}  # the mode is in the name ("mgda" / "mgda-ub")

    def group_weights(self, gram: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mgda_weights(gram, loss, self.normalization)

    # ------------------------------------------------------------------ MGDA-UB
    def prepare(self, network: nn.Module) -> MGDA:
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
                "mgda-ub: the shared representation was not hooked before this forward pass (call "
                "balancer.prepare(network) before training); this step used exact parameter gradients",
                stacklevel=2,
            )
            return super().backward(losses, network)
        loss = loss_values(losses, self.name)
        attachment = self._attachment
        z = attachment.capture.take()
        if z is None:
            if attachment.handle is not None:
                warnings.warn(
                    "mgda-ub: no shared representation was captured since the last step (prepare(network) "
                    "must come before the forward pass, with gradients enabled); this step used exact "
                    "parameter gradients",
                    stacklevel=2,
                )
            return super().backward(losses, network)
        groups = parameter_groups(network, list(losses), exclude=attachment.below)
        grads, rep_grads = task_gradients(losses, groups, representation=z, retain_graph=True)
        tasks = list(losses)
        rep = stack_rows([(rep_grads[t],) for t in tasks])
        gram = gram_of(rep, tasks, "w.r.t. the shared representation", self.name)
        staged = self.stage(groups, grads)
        applied, alpha = mgda_weights(gram, np.array([loss[t] for t in tasks]), self.normalization)
        self.write(staged, loss)
        z.backward((torch.from_numpy(applied).to(rep) @ rep).view_as(z))
        return dict(zip(tasks, alpha.tolist()))


@register_balancer("mgda-ub")
def mgda_ub(normalization: str = "none") -> MGDA:
    """MGDA-UB (Sener & Koltun 2018, Sec. 3.3): MGDA with gradients w.r.t. the shared representation."""
    return MGDA(mode="ub", normalization=normalization)


mgda_ub.cost = "one backward pass per task to the shared representation, one through the trunk, a T x T problem"


__all__ = [
    "MGDA",
    "MODES",
    "NORMALIZATIONS",
    "mgda_ub",
    "mgda_weights",
    "normalizers",
    "shared_trunk",
]
