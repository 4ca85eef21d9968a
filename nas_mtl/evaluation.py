"""Evaluation of a MultiTaskNetwork: per-task metrics (and mean losses) over a whole dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from .data import iterate_batches
from .network import MultiTaskNetwork
from .tasks import labelled_losses

Metrics = dict[str, dict[str, float]]
"""``{task: {metric: value}}``."""


@torch.no_grad()
def evaluate(
    network: MultiTaskNetwork,
    dataset: Dataset,
    tasks: Sequence,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    losses: dict[str, float] | None = None,
) -> Metrics:
    """Per-task metrics over the whole ``dataset`` (exact accumulation, eval mode).

    Args:
        losses: when given, filled with each task's mean loss over the set (batch losses weighted by their
            labelled samples, as training losses are; tasks without a label left out).
    """
    specs = [t for t in tasks if t.name in network.tasks]
    was_training = network.training
    network.eval()
    meters = {t.name: t.new_meter() for t in specs}
    sums: dict[str, float] = {}
    seen: dict[str, int] = {}
    for x, y in iterate_batches(dataset, batch_size, shuffle=False):
        out = network(x.to(device))
        targets = {t.name: y[t.name].to(device) for t in specs}
        for t in specs:
            t.validate_target(targets[t.name], x.shape[0])
            meters[t.name].update(out[t.name], targets[t.name])
        if losses is not None:
            batch, counts = labelled_losses(out, targets, specs)
            for name, value in batch.items():
                sums[name] = sums.get(name, 0.0) + float(value) * counts[name]
                seen[name] = seen.get(name, 0) + counts[name]
    network.train(was_training)
    if losses is not None:
        losses.update({name: sums[name] / seen[name] for name in sums})
    metrics = {}
    for name, meter in meters.items():
        try:
            metrics[name] = meter.compute()
        except ValueError as err:
            raise ValueError(f"task {name!r}: {err}") from None
    return metrics


__all__ = ["Metrics", "evaluate"]
