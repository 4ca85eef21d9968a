"""Target conventions the task kinds share: missing labels (NaN in floating targets, ``ignore_index`` in integer
ones) and the range checks of class labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def fill_nan(target: Tensor) -> Tensor:
    """``target`` with missing (NaN) entries as 0: masked out, they must not turn gradients into NaN."""
    return torch.where(torch.isnan(target), torch.zeros_like(target), target)


def per_sample(mask: Tensor) -> Tensor:
    """(B,) bool: samples with at least one True entry in ``mask`` (B, ...)."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def check_ignore_index(task: str, ignore_index: int, num_classes: int) -> None:
    """ValueError naming ``task`` when ``ignore_index`` is not an integer or is one of its class ids."""
    if not is_int(ignore_index):
        raise ValueError(f"task {task!r}: ignore_index must be an integer, not {ignore_index!r}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"task {task!r}: ignore_index {ignore_index} is a class id; use a value outside [0, {num_classes - 1}]"
        )


def class_range(target: Tensor, num_classes: int, ignore_index: int | None = None) -> str | None:
    """A description of class labels outside ``[0, num_classes)`` (``ignore_index`` aside), or None."""
    values = target if ignore_index is None else target[target != ignore_index]
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
        extra = "" if ignore_index is None else f" (or ignore_index {ignore_index})"
        return (
            f"class labels must lie in [0, {num_classes - 1}]{extra}, "
            f"got values in [{int(values.min())}, {int(values.max())}]"
        )
    return None


__all__ = ["check_ignore_index", "class_range", "fill_nan", "is_int", "per_sample"]
