"""Training of a MultiTaskNetwork: :class:`Trainer` (restore, prepare, run_epoch, save, finish) and :func:`train`.

The parts live in their own modules and are re-exported here: settings (:mod:`~nas_mtl.train_config`), one
step's pieces (:mod:`~nas_mtl.train_step`), checkpoints (:mod:`~nas_mtl.train_checkpoint`), curves
(:mod:`~nas_mtl.train_curves`) and evaluation (:mod:`~nas_mtl.evaluation`).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .balancing import Balancer, EqualWeights
from .data import MultiTaskData, batch_loader, data_fingerprint, iterate_batches
from .environment import environment
from .evaluation import Metrics, evaluate
from .export import network_manifest
from .layout import MODEL_MANIFEST, RESULT
from .network import MultiTaskNetwork
from .progress import progress
from .runs import load_checkpoint, save_atomic, write_json_atomic
from .tasks import labelled_losses
from .train_checkpoint import (
    CHECKPOINT,
    CHECKPOINT_OPTIONAL,
    CHECKPOINT_SCHEMA,
    check_resumable,
    coupling_spec,
    warn_if_environment_changed,
)
from .train_config import DEVICES, NONFINITE, OPTIMIZERS, SCHEDULERS, TrainConfig, resolve_device, seed_everything
from .train_curves import CURVE_COLUMNS, CURVES, read_curves, write_curves
from .train_step import (
    LossScaler,
    StepContext,
    StepHook,
    autocast,
    balanced_backward,
    buffer_snapshot,
    kept_buffers,
    overflowed,
    restore_buffers,
)

_OVERFLOW = "fp16 gradient overflow"
"""What :meth:`Trainer._backward` returns for a step the gradient scale skips (not an error)."""
DIVERGENCE = 100.0
"""A task's epoch loss over this many times its first step's (and above 1) is reported as diverging."""


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: per-epoch history and final validation / test metrics."""

    val: Metrics
    test: Metrics
    history: tuple[dict[str, Any], ...]
    train_seconds: float
    skipped_steps: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    """Reproducibility facts of the session that finished the run (:func:`~nas_mtl.environment.environment`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "val": self.val,
            "test": self.test,
            "history": list(self.history),
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "extra": dict(self.extra),
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        return cls(
            data["val"],
            data["test"],
            tuple(data["history"]),
            data["train_seconds"],
            data.get("skipped_steps", 0),
            data.get("extra", {}),
            data.get("env", {}),
        )


def _make_optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimiser; cross-stitch mixing weights in a second group at their own learning rate."""
    mixing = getattr(network, "mixing", None)
    own = {id(p) for p in mixing.parameters()} if mixing is not None else set()
    params: list = [p for p in network.parameters() if p.requires_grad and id(p) not in own]
    if own:
        params = [
            {"params": params},
            {"params": list(mixing.parameters()), "lr": config.lr * network.coupling.lr_scale},
        ]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class EpochContext:
    """What an epoch hook sees, after the epoch's validation and before its checkpoint.

    ``record`` is the epoch's history entry (``epoch`` 1-based, ``train_loss``, ``val`` metrics, ``seconds``);
    a hook may return a mapping of JSON values to add to it.
    """

    network: MultiTaskNetwork
    epoch: int
    record: Mapping[str, Any]


EpochHook = Callable[[EpochContext], Mapping[str, Any] | None]


class Trainer:
    """One training run in parts: :meth:`restore` a checkpoint, :meth:`prepare` the balancer, :meth:`run_epoch`
    (repeatable) and :meth:`save`, :meth:`close`, :meth:`finish`; :meth:`fit` (and :func:`train`) run them all.

    Args:
        network: the network to train (moved to ``config.device``).
        data: trained on ``data.train``, validated on ``data.val`` every epoch, tested on ``data.test``.
        config: the optimisation settings.
        balancer: combines the task losses (default: their sum).
        run_dir: checkpoint, result and manifest folder (None: nothing written).
        desc: progress label.
        step_hooks: see every step (:class:`StepContext`).
        epoch_hooks: see every finished epoch (:class:`EpochContext`); may add to its history record.
        state: objects with ``state_dict`` / ``load_state_dict`` (e.g. a search's own state) saved in the
            checkpoint under their names and restored with it.
    """

    def __init__(
        self,
        network: MultiTaskNetwork,
        data: MultiTaskData,
        config: TrainConfig = TrainConfig(),  # noqa: B008  (a frozen dataclass: immutable)
        balancer: Balancer | None = None,
        run_dir: str | Path | None = None,
        desc: str = "train",
        step_hooks: Sequence[StepHook] = (),
        epoch_hooks: Sequence[EpochHook] = (),
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.network, self.data, self.config, self.desc = network, data, config, desc
        self.balancer = balancer or EqualWeights()
        self.step_hooks, self.epoch_hooks, self.state = tuple(step_hooks), tuple(epoch_hooks), dict(state or {})
        self.device = resolve_device(config.device)
        self.env = environment(self.device)  # what this session's numbers depend on (checkpoints, result.json)
        self._layout = torch.channels_last if config.channels_last else torch.contiguous_format
        network.to(self.device, memory_format=self._layout)
        if config.precision == "fp16" and not self.balancer.scale_invariant:
            raise ValueError(
                f"precision fp16: balancer {self.balancer.name!r} is not invariant to fp16's gradient scale (it clips "
                "or normalises the combined gradient); use bf16 or fp32 with it"
            )
        self.scaler = LossScaler(self.device) if config.precision == "fp16" else None
        if self.scaler is not None:  # its scale is part of the run's state: checkpointed and restored
            self.state["loss_scale"] = self.scaler
        self.specs = [t for t in data.tasks if t.name in network.tasks]
        _check_data(network, data, config, self.specs)
        self.optimizer = _make_optimizer(network, config)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(config.epochs, 1))
            if config.scheduler == "cosine"
            else None
        )
        self.history: list[dict[str, Any]] = []
        self.epoch, self.elapsed, self.skipped = 0, 0.0, 0
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint = None if self.run_dir is None else self.run_dir / CHECKPOINT
        self._order = torch.Generator()  # the training order, re-seeded each epoch
        pin = config.pin_memory and self.device.type == "cuda"
        self._loader = batch_loader(data.train, config.batch_size, self._order, config.num_workers, pin, config.seed)
        self._non_blocking = pin
        self._balancer_state: dict[str, Any] = {}
        self._first_losses: dict[str, float] | None = None
        self._warned = False

    def fit(self) -> TrainResult:
        """Restore, train the remaining epochs (checkpointing each), finish: the whole run."""
        self.restore()
        self.prepare()
        try:
            while self.epoch < self.config.epochs:
                self.run_epoch()
                self.save()
        finally:
            self.close()  # also when training stops with an error
        return self.finish()

    def restore(self) -> bool:
        """Resume from the run folder's checkpoint, if any (same graph, balancer and config required:
        :func:`~nas_mtl.runs.check_settings`); returns whether one was found."""
        if self.checkpoint is None:
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.checkpoint.exists():
            return False
        state = load_checkpoint(self.checkpoint, self.device, CHECKPOINT_SCHEMA, CHECKPOINT_OPTIONAL)
        check_resumable(state, self.network, self.data, self.config, self.balancer, self.checkpoint)
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())  # a checkpoint loaded onto a GPU moved it there
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.elapsed, self.skipped = state["elapsed"], state.get("skipped", 0)
        self._balancer_state = state.get("balancer", {})
        for name, obj in self.state.items():
            if name not in state.get("extra", {}):
                raise ValueError(f"{self.checkpoint}: no {name!r} state in this checkpoint; use a new run folder")
            obj.load_state_dict(state["extra"][name])
        if self.epoch < self.config.epochs:  # a finished run is only evaluated
            warn_if_environment_changed(state.get("env"), self.env, self.checkpoint)
        return True

    def prepare(self) -> None:
        """Attach the balancer to the network (with its restored state); :meth:`close` detaches it."""
        self.balancer.prepare(self.network)
        if self._balancer_state:
            self.balancer.load_state_dict(self._balancer_state)

    def close(self) -> None:
        self.balancer.detach()

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch on ``data.train``, validate, run the epoch hooks; returns the history record.

        A non-finite task loss or gradient (checked after the balancer, which may raise it itself) raises
        ``FloatingPointError`` naming the task or parameters (config ``on_nonfinite="raise"``) before any
        weight is touched, or skips that step with a warning (``"skip"``).
        """
        network, config, device, epoch = self.network, self.config, self.device, self.epoch
        t0 = time.perf_counter()
        network.train()
        self._order.manual_seed(config.seed * 100_003 + epoch)  # the loader below draws from it
        sums: dict[str, float] = dict.fromkeys(network.tasks, 0.0)
        seen: dict[str, int] = dict.fromkeys(network.tasks, 0)  # labelled samples per task
        if self._loader is None:
            batches = iterate_batches(
                self.data.train, config.batch_size, shuffle=True, generator=self._order, drop_last=True
            )
        else:
            batches = iter(self._loader)
        steps = len(self.data.train) // config.batch_size
        bar = progress(batches, f"{self.desc} {epoch + 1}/{config.epochs}", config.progress, total=steps)
        for step, (x, y) in enumerate(bar):
            taken = self._step(x, y, epoch, step)
            if taken is None:
                continue
            losses, counts = taken
            for k, v in losses.items():
                sums[k] += float(v.detach()) * counts[k]
                seen[k] += counts[k]
            if config.progress:
                bar.set_postfix(loss=f"{sum(float(v.detach()) for v in losses.values()):.3f}")
        if self.scheduler is not None:
            self.scheduler.step()
        val_loss: dict[str, float] = {}
        val = evaluate(network, self.data.val, self.specs, config.eval_batch_size, device, losses=val_loss)
        self.elapsed += time.perf_counter() - t0
        train_loss = {k: v / max(seen[k], 1) for k, v in sums.items()}
        self.balancer.end_epoch({k: v for k, v in train_loss.items() if seen[k]})
        self._warn_if_diverging(train_loss, epoch + 1)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val": val,
            "seconds": self.elapsed,
        }
        for hook in self.epoch_hooks:
            record.update(hook(EpochContext(network, epoch + 1, record)) or {})
        self.history.append(record)
        self.epoch += 1
        if self.run_dir is not None:
            write_curves(self.history, self.specs, self.run_dir / CURVES)
        return record

    def _step(
        self, x: torch.Tensor, y: Mapping[str, torch.Tensor], epoch: int, step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]] | None:
        """One optimisation step on the batch ``(x, y)``: its task losses and labelled-sample counts, or None
        when it taught nothing (no task labelled in the batch, or a non-finite step skipped)."""
        network, device = self.network, self.device
        x = x.to(device, non_blocking=self._non_blocking, memory_format=self._layout)
        # a skipped step must not leave its batch in the BatchNorm running statistics either
        snapshot = buffer_snapshot(network) if self.config.on_nonfinite == "skip" else None
        targets = {t.name: y[t.name].to(device, non_blocking=self._non_blocking) for t in self.specs}
        if step == 0:
            for t in self.specs:
                t.validate_target(targets[t.name], x.shape[0])
        with autocast(self.config.precision, device):
            losses, counts = labelled_losses(network(x), targets, self.specs)
        losses = {k: v.float() for k, v in losses.items()}  # the balancers work in fp32 / fp64
        if not losses:  # no task has a label in this batch: nothing to learn from it
            return None
        problem = self._backward(x, y, losses, epoch, step)
        if problem is _OVERFLOW:  # fp16 gradients too large for the scale: skipped, as GradScaler does
            return None
        if problem is not None:
            self._skip(problem, epoch, step, snapshot)
            return None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        if getattr(network, "coupling", None) is not None:  # soft sharing's l2 pull, at this step's learning rate
            network.couple(self.optimizer.param_groups[0]["lr"])
        self.balancer.after_step(functools.partial(self._recompute, x, targets))
        if self._first_losses is None:  # the reference a diverging run is told from (this session's first step)
            self._first_losses = {k: float(v.detach()) for k, v in losses.items()}
        return losses, counts

    def _backward(
        self,
        x: torch.Tensor,
        y: Mapping[str, torch.Tensor],
        losses: Mapping[str, torch.Tensor],
        epoch: int,
        step: int,
    ) -> str | None:
        """The step hooks, then the balanced backward pass into fresh gradients; what went wrong (a non-finite
        loss, before the hooks, or gradient) or None."""
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
        if bad:
            return f"non-finite loss for task(s) {bad}"
        with autocast(self.config.precision, self.device):  # a hook's own forward passes: as the step's
            for hook in self.step_hooks:
                hook(StepContext(self.network, x, y, losses, epoch, step))
        self.optimizer.zero_grad(set_to_none=True)
        try:
            balanced_backward(self.balancer, self.scaler.scale(losses) if self.scaler else losses, self.network)
        except FloatingPointError as err:
            if overflowed(self.network, self.scaler):  # finite losses, non-finite scaled gradients
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.skip()  # no step, the scale backed off, as GradScaler does
                return _OVERFLOW
            return str(err)
        return None

    def _skip(self, problem: str, epoch: int, step: int, snapshot: Sequence[torch.Tensor] | None) -> None:
        """A non-finite step: FloatingPointError (config ``on_nonfinite="raise"``), or a warning and the step
        undone (gradients dropped, BatchNorm statistics restored from ``snapshot``)."""
        where = f"epoch {epoch + 1} step {step + 1}"
        if self.config.on_nonfinite == "raise":
            saved = self.checkpoint is not None and self.checkpoint.exists()
            kept = f"; last checkpoint kept at {self.checkpoint}" if saved else ""
            raise FloatingPointError(f"{problem} at {where}{kept}")
        # stacklevel: the warning names the caller of run_epoch (run_epoch -> _step -> _skip)
        warnings.warn(f"skipping step: {problem} at {where}", stacklevel=4)
        self.optimizer.zero_grad(set_to_none=True)
        restore_buffers(self.network, snapshot)
        self.skipped += 1

    def _recompute(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task losses of batch ``x`` under the current weights (training mode, no gradient; BatchNorm's
        running statistics are left as they were, so each batch counts once)."""
        with torch.no_grad(), kept_buffers(self.network), autocast(self.config.precision, self.device):
            losses, _ = labelled_losses(self.network(x), targets, self.specs)
        return {k: v.float() for k, v in losses.items()}

    def _warn_if_diverging(self, train_loss: Mapping[str, float], epoch: int) -> None:
        """Warn (once per run) when a task's mean training loss is over DIVERGENCE times its first step's and
        above 1: training diverges (e.g. Adam at lr 1e6 ends at losses ~1e13 and chance-level metrics)."""
        if self._warned or not self._first_losses:
            return
        for task, value in train_loss.items():
            first = self._first_losses.get(task, math.inf)
            if value > 1 and value > DIVERGENCE * first:
                warnings.warn(
                    f"{self.desc}: task {task!r} mean training loss {value:.3g} in epoch {epoch} is "
                    f"{value / first:.3g} times its first step's ({first:.3g}): training diverges "
                    f"(learning rate {self.config.lr} too high?)",
                    stacklevel=3,
                )
                self._warned = True
                return

    def save(self) -> None:
        """Checkpoint the run (atomically) in its run folder; nothing without one."""
        if self.checkpoint is None:
            return
        save_atomic(
            {
                "epoch": self.epoch,
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": torch.get_rng_state(),
                "balancer": self.balancer.state_dict(),
                "balancer_spec": self.balancer.spec,
                "history": self.history,
                "elapsed": self.elapsed,
                "skipped": self.skipped,
                "graph": self.network.graph.to_dict(),
                "coupling": coupling_spec(self.network),
                "data": data_fingerprint(self.data),
                "config": self.config.to_dict(),
                "env": self.env,
                **({"extra": {name: obj.state_dict() for name, obj in self.state.items()}} if self.state else {}),
            },
            self.checkpoint,
        )

    def finish(self) -> TrainResult:
        """Evaluate on the test set (validation: the last epoch's) and write the run folder's results."""
        c = self.config
        if self.history:
            val = self.history[-1]["val"]
        else:
            val = evaluate(self.network, self.data.val, self.specs, c.eval_batch_size, self.device)
        test = evaluate(self.network, self.data.test, self.specs, c.eval_batch_size, self.device)
        result = TrainResult(val, test, tuple(self.history), self.elapsed, self.skipped, env=self.env)
        if self.run_dir is not None:
            self.network.graph.save(self.run_dir / "graph.json")
            manifest = network_manifest(self.network, self.specs, self.data.info, test)
            write_json_atomic(manifest, self.run_dir / MODEL_MANIFEST)
            write_json_atomic(result.to_dict(), self.run_dir / RESULT)
        return result


def train(*args: Any, **kwargs: Any) -> TrainResult:
    """Train ``network`` on ``data.train``, evaluate on val/test; checkpoint each epoch in ``run_dir``:
    ``Trainer(network, data, config, balancer, run_dir, desc, step_hooks, epoch_hooks).fit()`` (see
    :class:`Trainer` for the arguments).

    With ``run_dir``, an existing checkpoint there is resumed (same graph, balancer spec and config required:
    :func:`~nas_mtl.runs.check_settings`) and the result is written to ``run_dir/result.json``; finished
    epochs stay in the checkpoint whatever stops the run. ``step_hooks`` observe every step (see
    :class:`StepContext`, e.g. to measure task affinity), ``epoch_hooks`` every epoch (:class:`EpochContext`,
    e.g. to report a score). The balancer is prepared on ``network`` before the first step and detached after
    the last.
    """
    return Trainer(*args, **kwargs).fit()


def _check_data(network: MultiTaskNetwork, data: MultiTaskData, config: TrainConfig, specs: Sequence) -> None:
    missing = sorted(set(network.tasks) - {t.name for t in specs})
    if missing:
        raise ValueError(f"dataset {data.name!r} has no task(s) {missing}; it has {list(data.task_names)}")
    if tuple(data.input_shape) != tuple(network.input_shape):
        raise ValueError(
            f"dataset {data.name!r} inputs are {tuple(data.input_shape)} but the network expects "
            f"{tuple(network.input_shape)} (search space input_size / in_chans)"
        )
    if len(data.train) < config.batch_size:
        raise ValueError(
            f"batch_size: {config.batch_size} is larger than the {len(data.train)} training samples of "
            f"{data.name!r} (incomplete batches are dropped, so no step would be taken)"
        )


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_OPTIONAL",
    "CHECKPOINT_SCHEMA",
    "CURVES",
    "CURVE_COLUMNS",
    "DEVICES",
    "EpochContext",
    "EpochHook",
    "Metrics",
    "NONFINITE",
    "OPTIMIZERS",
    "RESULT",
    "SCHEDULERS",
    "StepContext",
    "StepHook",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "balanced_backward",
    "buffer_snapshot",
    "evaluate",
    "kept_buffers",
    "read_curves",
    "resolve_device",
    "restore_buffers",
    "seed_everything",
    "train",
    "write_curves",
]
