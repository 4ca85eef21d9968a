"""Soft parameter sharing: every task keeps its own copy of each block (the independent pattern) and a coupling
ties the copies together.

* ``l2`` (Duong et al., "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network
  Parser", ACL 2015): the penalty ``λ Σ_l Σ_t ||θ_t^l − θ̄^l||²`` over the copies of each coupled block (θ̄ their
  mean). It is applied as its exact proximal step after every optimiser step, ``θ_t ← θ̄ + (θ_t − θ̄) / (1 + 2λη)``
  (η the step's learning rate): decoupled from the loss gradient as AdamW decouples weight decay, so the
  balancers see only the task losses, λ = 0 is exactly independent training and a very large λ keeps the copies
  equal to float precision (each step then moves them by the mean of the tasks' own updates; BatchNorm running
  statistics are buffers, not pulled).
* ``cross-stitch`` (Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016): after each coupled
  block a learnable T x T matrix mixes the tasks' activations, ``h̃_t = Σ_s α_ts h_s``, initialised near the
  identity (``α_tt = init``, the rest ``(1 − init) / (T − 1)``: the paper's 0.9 / 0.1 for two tasks) and trained
  with its own learning rate (``lr_scale`` x the network's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

KINDS = ("l2", "cross-stitch")


@dataclass(frozen=True)
class Coupling:
    """How the task copies of the independent pattern are tied (see the module doc)."""

    kind: str
    """``l2`` or ``cross-stitch``."""
    layers: tuple[str, ...] | None = None
    """The coupled blocks (default: every block)."""
    strength: float = 0.01
    """λ of ``l2``."""
    init: float = 0.9
    """``cross-stitch``: the initial weight of a task's own activation."""
    lr_scale: float = 10.0
    """``cross-stitch``: the mixing weights' learning rate over the network's (the paper scales it up by 10³ for
    SGD; Adam's normalised steps need far less)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"coupling: kind must be one of {list(KINDS)}, got {self.kind!r}")
        for key in ("strength", "init", "lr_scale"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"coupling: {key} must be a number >= 0, got {value!r}")
        if self.layers is not None and (
            isinstance(self.layers, str) or not all(isinstance(name, str) for name in self.layers)
        ):
            raise ValueError(f"coupling: layers must be a list of block names, got {self.layers!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    def options(self) -> dict[str, Any]:
        """The options that matter for this kind (what a study file or manifest gives)."""
        keys = ("layers", "strength") if self.kind == "l2" else ("layers", "init", "lr_scale")
        values = {k: getattr(self, k) for k in keys}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "coupling") -> Coupling:
        data = dict(data)
        kind = data.pop("kind", None)
        allowed = ("layers", "strength") if kind == "l2" else ("layers", "init", "lr_scale")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"{source}: {unknown[0]}: unknown option for coupling {kind!r}; allowed: {list(allowed)}")
        try:
            return cls(kind=kind, **data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def coupled(self, layer_names: Sequence[str]) -> list[int]:
        """Indices of the coupled blocks; ValueError naming an unknown one."""
        if self.layers is None:
            return list(range(len(layer_names)))
        unknown = [name for name in self.layers if name not in layer_names]
        if unknown:
            raise ValueError(f"coupling: layers {unknown} are not blocks of the backbone {list(layer_names)}")
        return [i for i, name in enumerate(layer_names) if name in self.layers]


def initial_mixing(tasks: int, init: float) -> torch.Tensor:
    """``α`` with ``init`` on the diagonal and ``(1 − init) / (T − 1)`` elsewhere (the identity for one task)."""
    if tasks == 1:
        return torch.ones(1, 1)
    alpha = torch.full((tasks, tasks), (1.0 - init) / (tasks - 1))
    alpha.fill_diagonal_(init)
    return alpha


def mix(alpha: torch.Tensor, activations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cross-stitch: ``h̃_t = Σ_s α_ts h_s`` for the T same-shaped activations."""
    stacked = torch.stack(list(activations))
    return list(torch.einsum("ts,s...->t...", alpha, stacked).unbind(0))


@torch.no_grad()
def pull_copies(copies: Sequence[nn.Module], shrink: float) -> None:
    """``θ_t ← θ̄ + shrink (θ_t − θ̄)`` for every parameter of the same-shaped ``copies`` (the ``l2`` prox step)."""
    for params in zip(*(c.parameters() for c in copies)):
        mean = torch.stack([p.detach() for p in params]).mean(0)
        for p in params:
            p.copy_(mean + shrink * (p - mean))


def mixing_macs(tasks: int, feature_numel: int) -> int:
    """Per-sample multiply-accumulates of one cross-stitch unit on feature maps of ``feature_numel`` values."""
    return tasks * tasks * feature_numel


__all__ = [
    "KINDS",
    "Coupling",
    "initial_mixing",
    "mix",
    "mixing_macs",
    "pull_copies",
]
