"""A training run's checkpoint: what it must hold, and whether a run may resume from it (same graph, coupling,
data, config and balancer; a warning when the environment changed)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .balancing import Balancer
from .data import MultiTaskData, data_fingerprint
from .layout import CHECKPOINT
from .network import MultiTaskNetwork
from .runs import INTEGER, LIST, NUMBER, TABLE, TENSOR, TEXT, Schema, check_settings, or_null
from .train_config import TrainConfig, without_added_defaults

CHECKPOINT_SCHEMA: Schema = {
    "epoch": INTEGER,
    "model": TABLE,
    "optimizer": TABLE,
    "rng": TENSOR,
    "history": LIST,
    "elapsed": NUMBER,
}
"""What a training checkpoint must hold (:meth:`~nas_mtl.train.Trainer.restore`); the keys of
:data:`CHECKPOINT_OPTIONAL` are checked when present (checkpoints of earlier versions lack some)."""
CHECKPOINT_OPTIONAL: Schema = {
    "scheduler": or_null(TABLE),
    "balancer": TABLE,
    "balancer_spec": or_null(TEXT),
    "skipped": INTEGER,
    "extra": TABLE,
    "graph": TABLE,
    "coupling": or_null(TABLE),
    "data": or_null(TABLE),
    "config": TABLE,
    "env": or_null(TABLE),
}


def coupling_spec(network: MultiTaskNetwork) -> dict[str, Any] | None:
    """The network's soft-sharing coupling as a checkpoint records it (None without one)."""
    return None if network.coupling is None else network.coupling.to_dict()


def check_resumable(
    state: Mapping[str, Any],
    network: MultiTaskNetwork,
    data: MultiTaskData,
    config: TrainConfig,
    balancer: Balancer,
    path: Path,
) -> None:
    """Refuse (:func:`~nas_mtl.runs.check_settings`) a checkpoint ``state`` of another graph, coupling, data,
    config or balancer than this run's."""
    saved = {
        "graph": state.get("graph"),
        "coupling": state.get("coupling"),
        "data": state.get("data"),
        "config": without_added_defaults(state.get("config") or {}),
        "balancer": state.get("balancer_spec"),
    }
    now = {
        "graph": network.graph.to_dict(),
        "coupling": coupling_spec(network),
        "data": data_fingerprint(data),
        "config": without_added_defaults(config.to_dict()),
    }
    now["balancer"] = balancer.spec
    check_settings(saved, now, path, "checkpoint")


def warn_if_environment_changed(saved: Mapping[str, Any] | None, now: Mapping[str, Any], path: Path) -> None:
    """Warn when a run resumes where its numbers may differ from an uninterrupted run (other threads, CPU, ...)."""
    if not saved:  # checkpoints written before environments were recorded
        return
    changed = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
    if changed:
        diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        warnings.warn(
            f"{path}: resuming in another environment ({diff}); the result may differ from an uninterrupted run "
            "by the floating-point order (result.json records the last session's environment)",
            stacklevel=3,
        )


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_OPTIONAL",
    "CHECKPOINT_SCHEMA",
    "check_resumable",
    "coupling_spec",
    "warn_if_environment_changed",
]
