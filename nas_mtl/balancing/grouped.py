"""Gradient-combining balancers on any sharing graph: per-task gradients, combined per parameter group.

A parameter group is a set of parameters used by the same task subset S
(``MultiTaskNetwork.parameter_groups()``). For |S| >= 2 the group's update is ``Σ_{t∈S} w_t g_t`` with
``g_t`` the gradient of task t's loss w.r.t. the group's parameters and ``w`` computed by the method
(MGDA, PCGrad) from the group's S x S Gram matrix ``G = [g_s · g_t]`` alone; a single-task group (a
head, a private branch) gets its task's own gradient. With hard sharing there is one shared group
and this is exactly the published method.

Cost: one ``autograd.grad`` per task, over the parameters of every group that contains it (the
backward pass of task t runs through its head and path once; heads and private blocks come for
free), then per shared group one (|S|, P) matrix, its Gram matrix and one matrix-vector product.
Nothing touches ``.grad`` until every per-task gradient has been checked to be finite.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .base import Balancer

GRAM_CHUNK = 2**20
"""Columns per block of :func:`gram64`: the float64 copy it makes is at most (rows, GRAM_CHUNK)."""


@dataclass(frozen=True)
class ParamGroup:
    """Trainable parameters used by exactly the tasks ``tasks`` (in the order of the losses)."""

    tasks: tuple[str, ...]
    params: tuple[nn.Parameter, ...]

    @property
    def shared(self) -> bool:
        return len(self.tasks) >= 2


@dataclass(frozen=True)
class _Staged:
    """A group ready to be written: per-task gradients as rows of ``matrix`` (shared) or a list (private)."""

    group: ParamGroup
    matrix: torch.Tensor | None = None
    gram: np.ndarray | None = None
    private: Sequence[torch.Tensor] = ()


def check_multitask(network: nn.Module) -> None:
    """Raise TypeError unless ``network`` is a MultiTaskNetwork (has ``parameter_groups()`` and ``graph``)."""
    if not callable(getattr(network, "parameter_groups", None)) or not hasattr(network, "graph"):
        raise TypeError(f"network: expected a MultiTaskNetwork (with parameter_groups()), got {type(network).__name__}")


def parameter_groups(
    network: nn.Module, tasks: Sequence[str], exclude: Collection[int] = frozenset()
) -> list[ParamGroup]:
    """``network.parameter_groups()`` restricted to ``tasks`` and to trainable parameters.

    Args:
        exclude: ``id()`` of parameters to leave out (MGDA-UB handles those below the representation).
    """
    check_multitask(network)
    groups = []
    for users, params in network.parameter_groups().items():
        members = tuple(t for t in tasks if t in users)
        trainable = tuple(p for p in params if p.requires_grad and id(p) not in exclude)
        if members and trainable:
            groups.append(ParamGroup(members, trainable))
    return groups


def task_gradients(
    losses: Mapping[str, torch.Tensor],
    groups: Sequence[ParamGroup],
    representation: torch.Tensor | None = None,
    retain_graph: bool = False,
) -> tuple[dict[int, torch.Tensor], dict[tuple[int, str], tuple[torch.Tensor, ...]], dict[str, torch.Tensor]]:
    """One ``autograd.grad`` per task over the parameters of all groups it uses (+ ``representation``).

    Each task's gradient on a shared group is copied into its row of that group's matrix as soon as it is
    computed, and dropped: the shared gradients take (tasks x parameters) memory once, not a second time as
    per-task tensors waiting to be stacked (the rows are bitwise those of :func:`stack_rows`).

    Returns:
        ``{group index: (|S|, P) matrix}`` for the shared groups (rows in the group's task order, each the
        concatenation of one task's flattened gradients, zeros where a parameter is unused);
        ``{(group index, task): gradients}`` for the single-task groups; and, with ``representation``,
        ``{task: ∂L_t/∂representation}``. The graph is kept after the last task only with ``retain_graph``.
    """
    names = list(losses)
    matrices: dict[int, torch.Tensor] = {}
    private: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}
    rep_grads: dict[str, torch.Tensor] = {}
    for k, t in enumerate(names):
        mine = [i for i, g in enumerate(groups) if t in g.tasks]
        inputs: list[torch.Tensor] = [p for i in mine for p in groups[i].params]
        if representation is not None:
            inputs.append(representation)
        if not inputs:
            continue
        out = list(
            torch.autograd.grad(losses[t], inputs, retain_graph=retain_graph or k < len(names) - 1, allow_unused=True)
        )
        if representation is not None:
            if out[-1] is None:
                raise RuntimeError(
                    f"task {t!r}: its loss does not depend on the captured shared representation; "
                    f"compute the losses from the network's latest forward pass"
                )
            rep_grads[t] = out.pop()
        pos = 0
        for i in mine:
            group = groups[i]
            n = len(group.params)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(group.params, out[pos : pos + n])]
            out[pos : pos + n] = [None] * n  # this task's gradients live on only as the row below
            pos += n
            if not group.shared:
                private[(i, t)] = tuple(grads)
                continue
            if i not in matrices:
                size = sum(p.numel() for p in group.params)
                matrices[i] = torch.empty(len(group.tasks), size, dtype=grads[0].dtype, device=grads[0].device)
            torch.cat([g.reshape(-1) for g in grads], out=matrices[i][group.tasks.index(t)])
            del grads
    return matrices, private, rep_grads


def stack_rows(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """(len(rows), P): each row the concatenation of one task's flattened gradients."""
    size = sum(g.numel() for g in rows[0])
    matrix = torch.empty(len(rows), size, dtype=rows[0][0].dtype, device=rows[0][0].device)
    for i, row in enumerate(rows):
        torch.cat([g.reshape(-1) for g in row], out=matrix[i])
    return matrix


def gram64(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix @ matrix.T`` in float64, accumulated over blocks of :data:`GRAM_CHUNK` columns.

    A float64 copy of the whole (float32) matrix would triple the peak memory of a shared group's
    gradients; with one block (P <= GRAM_CHUNK) this is exactly ``matrix.double() @ matrix.double().T``.
    """
    first, *rest = matrix.split(GRAM_CHUNK, dim=1)
    rows = first.double()
    gram = rows @ rows.T
    for block in rest:
        del rows  # at most one float64 block alive
        rows = block.double()
        gram.addmm_(rows, rows.T)
    return gram


def gram_of(matrix: torch.Tensor, tasks: Sequence[str], what: str, balancer: str) -> np.ndarray:
    """``matrix @ matrix.T`` in float64 NumPy; raises FloatingPointError naming the tasks whose rows
    are not finite (a non-finite row makes its diagonal entry non-finite)."""
    gram = gram64(matrix).cpu().numpy()  # float64: the certified min-norm solution is exact for this Gram matrix
    if not np.isfinite(np.diag(gram)).all():
        bad = [t for t, ok in zip(tasks, torch.isfinite(matrix).all(dim=1).tolist()) if not ok]
        detail = f"for task(s) {bad}" if bad else f"overflows (tasks {list(tasks)})"
        raise FloatingPointError(f"{balancer}: non-finite gradient {detail} {what}; no gradient was written")
    return gram


def loss_values(losses: Mapping[str, torch.Tensor], balancer: str) -> dict[str, float]:
    """The task losses as floats; raises FloatingPointError naming the tasks whose loss is not finite."""
    values = {t: float(v.detach()) for t, v in losses.items()}
    bad = {t: v for t, v in values.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"{balancer}: non-finite loss for task(s) {bad}; no gradient was written")
    return values


def accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


class GroupedGradientBalancer(Balancer):
    """Base of MGDA / PCGrad: per shared group ``Σ_t w_t g_t`` with ``w = group_weights(G, losses)``.

    Returns from :meth:`backward` the weights of the largest shared group (most tasks, then most
    parameters; for hard sharing, the trunk); tasks outside it, and all tasks when no group is shared,
    are reported with weight 1.0.
    """

    shared_only = True
    cost = "one backward pass per task, then a T x T problem per shared group"

    @abstractmethod
    def group_weights(self, gram: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights for one shared group from its (k, k) Gram matrix and the k task losses.

        Returns:
            ``(applied, reported)``: the update is ``Σ_t applied_t g_t``; ``reported`` is what
            :meth:`backward` returns for the group (e.g. MGDA's simplex weights α).
        """

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        loss = loss_values(losses, self.name)
        groups = parameter_groups(network, list(losses))
        matrices, private, _ = task_gradients(losses, groups)
        staged = self.stage(groups, matrices, private)
        return self.write(staged, loss)

    def stage(
        self,
        groups: Sequence[ParamGroup],
        matrices: Mapping[int, torch.Tensor],
        private: Mapping[tuple[int, str], Sequence[torch.Tensor]],
    ) -> list[_Staged]:
        """Each shared group's gradient matrix with its Gram matrix, each private group's gradients; raises
        FloatingPointError when any is not finite (before anything is written)."""
        staged = []
        for i, group in enumerate(groups):
            where = f"on parameters shared by {list(group.tasks)}"
            if group.shared:
                matrix = matrices[i]
                staged.append(_Staged(group, matrix, gram_of(matrix, group.tasks, where, self.name)))
            else:
                (t,) = group.tasks
                own = private[(i, t)]
                if not torch.isfinite(torch.nn.utils.get_total_norm(own)):
                    raise FloatingPointError(
                        f"{self.name}: non-finite gradient for task {t!r} on its own parameters; "
                        f"no gradient was written"
                    )
                staged.append(_Staged(group, private=own))
        return staged

    def write(self, staged: Sequence[_Staged], loss: Mapping[str, float]) -> dict[str, float]:
        """Combine and accumulate into ``.grad``; return the largest shared group's reported weights.

        Args:
            loss: the task losses (:func:`loss_values`), in the order of the losses.

        All weights are computed before the first ``.grad`` is touched (a solver error writes nothing).
        """
        weights = [
            None if s.matrix is None else self.group_weights(s.gram, np.array([loss[t] for t in s.group.tasks]))
            for s in staged
        ]
        report: dict[str, float] = dict.fromkeys(loss, 1.0)
        best: tuple[int, int] = (1, 0)
        for s, w in zip(staged, weights):
            if w is None:
                for p, g in zip(s.group.params, s.private):
                    accumulate(p, g)
                continue
            applied, reported = w
            combined = torch.from_numpy(applied).to(s.matrix) @ s.matrix
            for p, g in zip(s.group.params, combined.split([p.numel() for p in s.group.params])):
                accumulate(p, g.view_as(p))
            if (len(s.group.tasks), s.matrix.shape[1]) > best:
                best = (len(s.group.tasks), s.matrix.shape[1])
                report = {**dict.fromkeys(loss, 1.0), **dict(zip(s.group.tasks, reported.tolist()))}
        return report


__all__ = [
    "GRAM_CHUNK",
    "GroupedGradientBalancer",
    "ParamGroup",
    "accumulate",
    "check_multitask",
    "gram64",
    "gram_of",
    "loss_values",
    "parameter_groups",
    "stack_rows",
    "task_gradients",
]
