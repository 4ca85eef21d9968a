"""Training settings: :class:`TrainConfig` (validated, every field named in its errors), seeds and devices."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .config import option
from .runs import RUNTIME_KEYS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE = ("raise", "skip")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; every field is validated with an error naming it.

    Args:
        epochs: passes over the training set.
        batch_size: samples per step (incomplete batches are dropped).
        lr: learning rate.
        weight_decay: the optimiser's weight decay.
        optimizer: adam, adamw or sgd.
        momentum: SGD momentum.
        scheduler: cosine annealing over the epochs, or none.
        seed: seeds the initialisation and the data order.
        device: auto (CUDA when available), cpu or cuda.
        eval_batch_size: samples per evaluation batch (no effect on the numbers).
        on_nonfinite: what a NaN/inf task loss or gradient does: raise (stop with an error) or skip that step.
        num_workers: data-loading worker processes for datasets read from disk (in-memory data is sliced
            directly); the batches are the same for any number.
        pin_memory: page-locked batches copied to the GPU without blocking (CUDA only).
        channels_last: weights and batches in the channels-last memory layout (faster convolutions on GPUs
            with tensor cores; the numbers may differ from the default layout's by rounding).
        precision: fp32, or bf16 / fp16 autocast of the forward pass (fp16 with a dynamic gradient scale);
            weights, optimiser state and the balancers' Gram matrices and solves stay fp32 / fp64.
        progress: print progress (a bar on a terminal, plain lines otherwise); the CLI turns it on.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = option("adam", choices=OPTIMIZERS)
    momentum: float = 0.9
    scheduler: str = option("cosine", choices=SCHEDULERS)
    seed: int = 0
    device: str = option("auto", choices=DEVICES)
    eval_batch_size: int = 512
    on_nonfinite: str = option("raise", choices=NONFINITE)
    precision: str = option("fp32", choices=PRECISIONS)
    num_workers: int = 0
    pin_memory: bool = False
    channels_last: bool = False
    progress: bool = False

    OPTIMIZERS = OPTIMIZERS
    SCHEDULERS = SCHEDULERS
    DEVICES = DEVICES
    NONFINITE = NONFINITE
    PRECISIONS = PRECISIONS
    RUNTIME_FIELDS = tuple(sorted(RUNTIME_KEYS))
    """Fields that may change between sessions of one run (resume on another device, without bars)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "num_workers"):
            value = getattr(self, name)
            low = 0 if name in ("epochs", "num_workers") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                want = {"epochs": "an integer >= 0 (0: evaluate only)", "num_workers": "an integer >= 0"}.get(
                    name, "a positive integer"
                )
                raise ValueError(f"train config: {name} must be {want}, got {value!r}")
        for name in ("pin_memory", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train config: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train config: {name} must be a finite number >= 0, got {value!r}")
        for name, allowed in (
            ("optimizer", self.OPTIMIZERS),
            ("scheduler", self.SCHEDULERS),
            ("device", self.DEVICES),
            ("on_nonfinite", self.NONFINITE),
            ("precision", self.PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train config: {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"train config: seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "train config") -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without :attr:`RUNTIME_FIELDS`: what a resumed run or a cache must match."""
        return without_added_defaults({k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS})


ADDED_DEFAULTS = (("precision", "fp32"), ("channels_last", False))
"""Settings added after runs were recorded, with the value every earlier run ran with."""


def without_added_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a TrainConfig's dict) without the :data:`ADDED_DEFAULTS` at their defaults: a run recorded before
    those options existed and one made now at their defaults compare equal."""
    return {k: v for k, v in config.items() if (k, v) not in ADDED_DEFAULTS}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(device)


__all__ = [
    "DEVICES",
    "NONFINITE",
    "OPTIMIZERS",
    "SCHEDULERS",
    "TrainConfig",
    "resolve_device",
    "seed_everything",
    "without_added_defaults",
]
