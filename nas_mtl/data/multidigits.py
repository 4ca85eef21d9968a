"""MultiDigits: two handwritten digits per image, MultiMNIST-style, built offline.

The MultiMNIST construction of Sabour et al. ("Dynamic Routing Between Capsules", 2017) as used for
multi-task learning by Sener & Koltun ("Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018): one digit in the upper-left, one in the lower-right, overlapping; the tasks classify
the left and the right digit. The digits are scikit-learn's bundled 8x8 UCI handwritten digits
(1797 images, no download), upscaled; the source digits are split disjointly between train, val
and test, so test images show handwriting never seen in training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks import ClassificationTask
from .base import MultiTaskData, TensorMultiTaskDataset, check_ints, register_dataset, standardize

SPLITS = ("train", "val", "test")
SOURCE_FRACTIONS = (0.7, 0.15, 0.15)
"""Share of the 1797 source digits each split draws from."""


def _place(canvas: Tensor, digits: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Write ``digits`` (N, d, d) into ``canvas`` (N, S, S) at per-image top-left corners."""
    n, d = digits.shape[0], digits.shape[1]
    r = (rows[:, None] + torch.arange(d))[:, :, None]
    c = (cols[:, None] + torch.arange(d))[:, None, :]
    canvas[torch.arange(n)[:, None, None], r, c] = digits
    return canvas


def _compose(
    source: Tensor, labels: Tensor, pool: np.ndarray, n: int, size: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` two-digit images (N, 1, size, size) in [0, 1] from the source digits in ``pool``."""
    left, right = (torch.from_numpy(rng.choice(pool, size=n)) for _ in range(2))
    d = source.shape[-1]
    jitter = (size - d) // 3
    offsets = torch.from_numpy(rng.integers(0, jitter + 1, size=(4, n)))
    far = size - d - offsets[2:]
    upper_left = _place(torch.zeros(n, size, size), source[left], offsets[0], offsets[1])
    lower_right = _place(torch.zeros(n, size, size), source[right], far[0], far[1])
    return torch.maximum(upper_left, lower_right)[:, None], labels[left], labels[right]


@register_dataset("multidigits")
def multidigits(
    n_train: int = 6000, n_val: int = 1000, n_test: int = 2000, size: int = 28, seed: int = 0
) -> MultiTaskData:
    """Two-digit images (1, size, size) with tasks ``left`` and ``right`` (10 classes each).

    Digits are upscaled to ``round(size * 4 / 7)`` pixels (16 at 28) and jittered by up to a third
    of the free margin; the pixel-wise max composes the overlap. Images are standardised with the
    train mean and std. ``info["source_split"]`` holds the source-digit indices of each split.
    """
    check_ints("multidigits", n_train=(n_train, 1), n_val=(n_val, 1), n_test=(n_test, 1), size=(size, 14))
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes half a second

    bunch = load_digits()
    d = round(size * 4 / 7)
    raw = torch.from_numpy(bunch.images).float()[:, None] / 16.0
    source = F.interpolate(raw, size=(d, d), mode="bilinear", align_corners=False).clamp(0, 1)[:, 0]
    labels = torch.from_numpy(bunch.target).long()
    perm = np.random.default_rng([seed, 0]).permutation(len(labels))
    cuts = np.cumsum(np.round(np.array(SOURCE_FRACTIONS[:2]) * len(labels)).astype(int))
    pools = dict(zip(SPLITS, np.split(perm, cuts), strict=True))
    made = {
        split: _compose(source, labels, pools[split], n, size, np.random.default_rng([seed, k + 1]))
        for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    }
    images, mean, std = standardize(*(made[s][0] for s in SPLITS), dims=(0, 2, 3))
    datasets = {
        split: TensorMultiTaskDataset(x, {"left": made[split][1], "right": made[split][2]})
        for split, x in zip(SPLITS, images, strict=True)
    }
    return MultiTaskData(
        name="multidigits",
        tasks=(ClassificationTask("left", 10), ClassificationTask("right", 10)),
        input_shape=(1, size, size),
        **datasets,
        info={
            "source_split": {s: tuple(int(i) for i in sorted(pools[s])) for s in SPLITS},
            "normalization": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()},
            "digit_size": d,
            "class_names": {t: [str(i) for i in range(10)] for t in ("left", "right")},
        },
    )


__all__ = [
    "SOURCE_FRACTIONS",
    "SPLITS",
    "multidigits",
]
