"""Backbones as ordered block sequences: the unit a SharingGraph assigns to tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..environment import built_on_cpu
from ..registry import Registry


@dataclass(frozen=True)
class BlockInfo:
    """One backbone block: its name and whether it may be skipped (identity shortcut, shape-preserving)."""

    name: str
    skippable: bool


@dataclass(frozen=True)
class LayerCosts:
    """Exact per-sample cost of one copy of each block at the backbone's input size."""

    params: tuple[int, ...]
    macs: tuple[int, ...]
    outputs: tuple[int, ...] = ()
    """Values per sample in each block's output (what a cross-stitch unit after it mixes)."""


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward call, from torch's FLOP counter (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops()) // 2


class Backbone:
    """An ordered list of blocks plus what it takes to build fresh copies of them.

    Args:
        name: registry name (for manifests).
        blocks: name and skippability of each block, in execution order.
        input_shape: (C, H, W) of one input sample.
        make_blocks: returns one freshly initialised list of block modules (same order as ``blocks``);
            every call must give new parameters (a new random init).
        neck: non-parametric module mapping the last block's output to a (B, C, H, W) feature map.
        config: the keyword arguments the backbone was built with (for manifests and export).
    """

    def __init__(
        self,
        name: str,
        blocks: Sequence[BlockInfo],
        input_shape: tuple[int, int, int],
        make_blocks: Callable[[], list[nn.Module]],
        neck: nn.Module | None = None,
        config: dict | None = None,
    ) -> None:
        self.name = name
        self.blocks = tuple(blocks)
        self.input_shape = tuple(int(s) for s in input_shape)
        self._make_blocks = make_blocks
        self.neck = neck if neck is not None else nn.Identity()
        self.config = dict(config or {})
        self._feature_shape: tuple[int, int, int] | None = None
        self._costs: LayerCosts | None = None

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    @property
    def skippable(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks if b.skippable)

    def __len__(self) -> int:
        return len(self.blocks)

    def build(self) -> list[nn.Module]:
        """One freshly initialised set of blocks (a single-task network's trunk)."""
        modules = self._make_blocks()
        if len(modules) != len(self.blocks):
            raise ValueError(
                f"backbone {self.name!r}: make_blocks returned {len(modules)} modules for {len(self.blocks)} blocks"
            )
        return modules

    def build_copies(self, copies_per_layer: Sequence[int]) -> list[list[nn.Module]]:
        """Fresh, independently initialised copies: ``result[l]`` holds ``copies_per_layer[l]`` modules.

        Builds ``max(copies_per_layer)`` trunks and takes the blocks it needs from each, so every copy
        gets the backbone's own initialisation scheme.
        """
        if len(copies_per_layer) != len(self.blocks):
            raise ValueError(f"copies_per_layer has {len(copies_per_layer)} entries, backbone has {len(self)}")
        result: list[list[nn.Module]] = [[] for _ in self.blocks]
        for k in range(max(copies_per_layer, default=0)):
            trunk = self.build()
            for layer, n in enumerate(copies_per_layer):
                if k < n:
                    result[layer].append(trunk[layer])
        return result

    def _reference_pass(self) -> None:
        with torch.random.fork_rng(devices=[]):  # a lazily computed shape must not shift the caller's seeded RNG
            self._reference_pass_unseeded()

    def _reference_pass_unseeded(self) -> None:
        modules = self.build()
        params, macs, outputs = [], [], []
        x = torch.zeros(1, *self.input_shape)
        for module in modules:
            module.eval()
            params.append(sum(p.numel() for p in module.parameters()))
            macs.append(count_macs(module, x))
            with torch.no_grad():
                x = module(x)
            outputs.append(x.numel())
        with torch.no_grad():
            fmap = self.neck(x)
        if fmap.dim() != 4:
            raise ValueError(f"backbone {self.name!r}: neck must give (B, C, H, W), got shape {tuple(fmap.shape)}")
        self._feature_shape = tuple(int(s) for s in fmap.shape[1:])  # type: ignore[assignment]
        self._costs = LayerCosts(tuple(params), tuple(macs), tuple(outputs))

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the feature map the task heads receive."""
        if self._feature_shape is None:
            self._reference_pass()
        assert self._feature_shape is not None
        return self._feature_shape

    def layer_costs(self) -> LayerCosts:
        """Parameters and per-sample MACs of one copy of each block (torch's FLOP counter)."""
        if self._costs is None:
            self._reference_pass()
        assert self._costs is not None
        return self._costs

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, blocks={len(self)}, skippable={len(self.skippable)}, input={self.input_shape})"


BACKBONES: Registry[Backbone] = Registry("backbone", group="nas_mtl.backbones")
register_backbone = BACKBONES.register
list_backbones = BACKBONES.names


create_backbone = built_on_cpu(BACKBONES.create)
"""``BACKBONES.create(name, **kwargs)`` built on the CPU whatever torch's default device (the same initial weights
on every machine)."""


__all__ = [
    "BACKBONES",
    "Backbone",
    "BlockInfo",
    "LayerCosts",
    "count_macs",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
