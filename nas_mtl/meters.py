"""Exact metric accumulation over an evaluation set: :class:`MetricMeter` adds up per-batch sums, and the
arithmetic task metrics share (safe ratios, a histogram's median)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Stats = dict[str, Tensor]
"""Per-batch sums (counts, error sums, confusion matrices, histograms) a :class:`MetricMeter` adds up."""


class MetricMeter:
    """Accumulates exact per-batch sums over a whole evaluation set, then turns them into metrics.

    Every metric is a function of sums, so the result does not depend on how the set is batched
    (no average-of-batch-averages bias).

    Args:
        stats: ``(pred, target) -> {name: tensor}`` of per-batch sums (fixed shape per name).
        finalize: ``{name: summed tensor} -> {metric: value}``.
    """

    def __init__(self, stats: Callable[[Tensor, Tensor], Stats], finalize: Callable[[Stats], dict[str, float]]) -> None:
        self._stats = stats
        self._finalize = finalize
        self._sums: Stats = {}

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch (predictions as the head outputs them, targets as the dataset gives them)."""
        for key, value in self._stats(pred.detach(), target).items():
            value = value.detach().to("cpu", torch.float64)
            self._sums[key] = self._sums[key] + value if key in self._sums else value

    def compute(self) -> dict[str, float]:
        """Metrics over every batch seen so far.

        Raises:
            ValueError: nothing seen, or (with a ``labelled`` count among the stats) no labelled sample.
        """
        if not self._sums:
            raise ValueError("metric meter: compute() called before any update()")
        if "labelled" in self._sums and not self._sums["labelled"] > 0:
            raise ValueError("no labelled sample in the evaluation set: its metrics are undefined")
        return self._finalize(self._sums)


def ratio(num: Tensor, den: Tensor) -> Tensor:
    """Elementwise ``num / den`` with 0 where ``den`` is 0."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def histogram_median(hist: Tensor, width: float) -> float:
    """Median of values binned as ``hist`` (bins ``[k w, (k+1) w)``), linear within the median bin."""
    total = float(hist.sum())
    if total == 0:
        return 0.0
    cum = hist.cumsum(0)
    k = int(torch.searchsorted(cum, torch.tensor(total / 2, dtype=cum.dtype, device=cum.device)))
    before = float(cum[k - 1]) if k > 0 else 0.0
    return (k + (total / 2 - before) / float(hist[k])) * width


__all__ = ["MetricMeter", "Stats", "histogram_median", "ratio"]
