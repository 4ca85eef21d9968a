"""Training and evaluation of a MultiTaskNetwork: seeds, checkpoints + resume, progress, metrics."""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .balancing import Balancer, EqualWeights
from .config import option
from .data import MultiTaskData, data_fingerprint, iterate_batches
from .environment import environment
from .export import MODEL_MANIFEST, network_manifest
from .network import MultiTaskNetwork
from .progress import progress
from .runs import (
    INTEGER,
    LIST,
    NUMBER,
    RUNTIME_KEYS,
    TABLE,
    TENSOR,
    TEXT,
    Schema,
    check_settings,
    load_checkpoint,
    or_null,
    replace_atomic,
    save_atomic,
    write_json_atomic,
)
from .tasks import labelled_losses

Metrics = dict[str, dict[str, float]]
"""``{task: {metric: value}}``."""

CHECKPOINT = "checkpoint.pt"
DIVERGENCE = 100.0
"""A task's epoch loss over this many times its first step's (and above 1) is reported as diverging."""
RESULT = "result.json"


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE = ("raise", "skip")


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
    progress: bool = False

    OPTIMIZERS = OPTIMIZERS
    SCHEDULERS = SCHEDULERS
    DEVICES = DEVICES
    NONFINITE = NONFINITE
    RUNTIME_FIELDS = tuple(sorted(RUNTIME_KEYS))
    """Fields that may change between sessions of one run (resume on another device, without bars)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                want = "an integer >= 0 (0: evaluate only)" if name == "epochs" else "a positive integer"
                raise ValueError(f"train config: {name} must be {want}, got {value!r}")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train config: {name} must be a finite number >= 0, got {value!r}")
        for name, allowed in (
            ("optimizer", self.OPTIMIZERS),
            ("scheduler", self.SCHEDULERS),
            ("device", self.DEVICES),
            ("on_nonfinite", self.NONFINITE),
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
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


@dataclass(frozen=True)
class StepContext:
    """What a step hook sees: called after the forward pass and the loss check, before the backward.

    Hooks may run extra autograd work on ``losses`` (``retain_graph=True``) but must not call
    ``backward`` on them nor modify the parameters (the balancer and the optimiser do that next).
    """

    network: MultiTaskNetwork
    x: torch.Tensor
    targets: Mapping[str, torch.Tensor]
    losses: Mapping[str, torch.Tensor]
    epoch: int
    step: int


StepHook = Callable[[StepContext], None]


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
        config: TrainConfig = TrainConfig(),
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
        network.to(self.device)
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
        _check_resumable(state, self.network, self.data, self.config, self.balancer, self.checkpoint)
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
            _warn_if_environment_changed(state.get("env"), self.env, self.checkpoint)
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
        order = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        sums: dict[str, float] = dict.fromkeys(network.tasks, 0.0)
        seen: dict[str, int] = dict.fromkeys(network.tasks, 0)  # labelled samples per task
        batches = iterate_batches(self.data.train, config.batch_size, shuffle=True, generator=order, drop_last=True)
        steps = len(self.data.train) // config.batch_size
        bar = progress(batches, f"{self.desc} {epoch + 1}/{config.epochs}", config.progress, total=steps)
        skipping = config.on_nonfinite == "skip"
        for step, (x, y) in enumerate(bar):
            x = x.to(device)
            # a skipped step must not leave its batch in the BatchNorm running statistics either
            snapshot = buffer_snapshot(network) if skipping else None
            out = network(x)
            targets = {t.name: y[t.name].to(device) for t in self.specs}
            if step == 0:
                for t in self.specs:
                    t.validate_target(targets[t.name], x.shape[0])
            losses, counts = labelled_losses(out, targets, self.specs)
            if not losses:  # no task has a label in this batch: nothing to learn from it
                continue
            bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v)}
            problem = f"non-finite loss for task(s) {bad}" if bad else None
            if problem is None:
                for hook in self.step_hooks:
                    hook(StepContext(network, x, y, losses, epoch, step))
                self.optimizer.zero_grad(set_to_none=True)
                try:
                    balanced_backward(self.balancer, losses, network)
                except FloatingPointError as err:
                    problem = str(err)
            if problem is not None:
                where = f"epoch {epoch + 1} step {step + 1}"
                if config.on_nonfinite == "raise":
                    saved = self.checkpoint is not None and self.checkpoint.exists()
                    kept = f"; last checkpoint kept at {self.checkpoint}" if saved else ""
                    raise FloatingPointError(f"{problem} at {where}{kept}")
                warnings.warn(f"skipping step: {problem} at {where}", stacklevel=2)
                self.optimizer.zero_grad(set_to_none=True)
                restore_buffers(network, snapshot)
                self.skipped += 1
                continue
            self.optimizer.step()
            if getattr(network, "coupling", None) is not None:  # soft sharing's l2 pull, at this step's learning rate
                network.couple(self.optimizer.param_groups[0]["lr"])
            self.balancer.after_step(functools.partial(self._recompute, x, targets))
            if self._first_losses is None:  # the reference a diverging run is told from (this session's first step)
                self._first_losses = {k: float(v.detach()) for k, v in losses.items()}
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

    def _recompute(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task losses of batch ``x`` under the current weights (training mode, no gradient; BatchNorm's
        running statistics are left as they were, so each batch counts once)."""
        with torch.no_grad(), kept_buffers(self.network):
            losses, _ = labelled_losses(self.network(x), targets, self.specs)
        return losses

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
                "coupling": _coupling(self.network),
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
            write_json_atomic(network_manifest(self.network, self.specs), self.run_dir / MODEL_MANIFEST)
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


CURVES = "curves.csv"
"""Per-epoch training curves in a run folder: one row per epoch and task."""
CURVE_COLUMNS = ("epoch", "task", "train_loss", "val_loss", "metric", "val_metric", "seconds")
CHECKPOINT_SCHEMA: Schema = {
    "epoch": INTEGER,
    "model": TABLE,
    "optimizer": TABLE,
    "rng": TENSOR,
    "history": LIST,
    "elapsed": NUMBER,
}
"""What a training checkpoint must hold (:meth:`Trainer.restore`); the keys of :data:`CHECKPOINT_OPTIONAL` are
checked when present (checkpoints of earlier versions lack some)."""
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


def write_curves(history: Sequence[Mapping[str, Any]], specs: Sequence, path: Path) -> None:
    """``curves.csv`` from a run's history: per epoch and task the mean training loss, the validation loss and
    the validation value of the task's primary metric (empty where a task had no label)."""
    lines = [",".join(CURVE_COLUMNS)]
    for record in history:
        for t in specs:
            metric = t.primary_metric
            cells = (
                record["epoch"],
                t.name,
                record["train_loss"].get(t.name, ""),
                record.get("val_loss", {}).get(t.name, ""),
                metric,
                record["val"].get(t.name, {}).get(metric, ""),
                record["seconds"],
            )
            lines.append(",".join(repr(c) if isinstance(c, float) else str(c) for c in cells))
    replace_atomic(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def read_curves(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``curves.csv`` (:func:`write_curves`): ``epoch`` an int, ``task`` and ``metric``
    strings, the other columns floats or None (an empty cell: a task without labels there).

    Raises:
        ValueError: a damaged file (not text, another header, a short line, a cell that is not a number), in one
            line naming the file and the line; the file is left as it is.
    """
    action = "restore it from a backup or delete it to report that run without its curves"
    try:
        lines = list(csv.reader(Path(path).read_text().splitlines()))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: damaged training curves (not text); {action}") from None
    if not lines or tuple(lines[0]) != CURVE_COLUMNS:
        raise ValueError(f"{path}: damaged training curves (header is not {','.join(CURVE_COLUMNS)}); {action}")
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) != len(CURVE_COLUMNS):
            raise ValueError(
                f"{path}: damaged training curves (line {number}: {len(cells)} cells, expected "
                f"{len(CURVE_COLUMNS)}); {action}"
            )
        row: dict[str, Any] = dict(zip(CURVE_COLUMNS, cells))
        try:
            row["epoch"] = int(row["epoch"])
            for column in ("train_loss", "val_loss", "val_metric", "seconds"):
                row[column] = float(row[column]) if row[column] else None
        except ValueError as err:
            raise ValueError(f"{path}: damaged training curves (line {number}: {err}); {action}") from None
        rows.append(row)
    return rows


def buffer_snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of ``module``'s buffers (BatchNorm running statistics), for :func:`restore_buffers`."""
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module: torch.nn.Module, snapshot: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for buf, old in zip(module.buffers(), snapshot):
            buf.copy_(old)


@contextlib.contextmanager
def kept_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Forward passes inside leave ``module``'s buffers as they were (a batch seen twice counts once)."""
    snapshot = buffer_snapshot(module)
    try:
        yield
    finally:
        restore_buffers(module, snapshot)


def balanced_backward(balancer: Balancer, losses: Mapping[str, torch.Tensor], network: MultiTaskNetwork) -> None:
    """``balancer.backward`` then a check of the gradients: FloatingPointError naming the parameters whose
    gradient has a NaN/inf (the balancer may raise it itself, naming the task)."""
    balancer.backward(losses, network)
    _check_gradients(network, balancer)


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


def _warn_if_environment_changed(saved: Mapping[str, Any] | None, now: Mapping[str, Any], path: Path) -> None:
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


def _check_gradients(network: MultiTaskNetwork, balancer: Balancer) -> None:
    """Raise FloatingPointError naming the parameters whose gradient has a NaN/inf (one reduction when clean)."""
    grads = [p.grad for p in network.parameters() if p.grad is not None]
    if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=math.inf)):
        bad = [n for n, p in network.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise FloatingPointError(f"{balancer.name or type(balancer).__name__}: non-finite gradient in {bad[:5]}{more}")


def _coupling(network: MultiTaskNetwork) -> dict[str, Any] | None:
    return None if network.coupling is None else network.coupling.to_dict()


def _check_resumable(
    state: Mapping[str, Any],
    network: MultiTaskNetwork,
    data: MultiTaskData,
    config: TrainConfig,
    balancer: Balancer,
    path: Path,
) -> None:
    saved = {
        "graph": state.get("graph"),
        "coupling": state.get("coupling"),
        "data": state.get("data"),
        "config": state.get("config", {}),
        "balancer": state.get("balancer_spec"),
    }
    now = {
        "graph": network.graph.to_dict(),
        "coupling": _coupling(network),
        "data": data_fingerprint(data),
        "config": config.to_dict(),
    }
    now["balancer"] = balancer.spec
    check_settings(saved, now, path, "checkpoint")


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
