"""AdaShare's settings (:class:`AdaShareConfig`, defaults from the reference code) and the check that they can run
on a dataset and search space (:func:`check_adashare`). See :mod:`nas_mtl.search.adashare`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..balancing import create_balancer
from ..config import nested, option, to_options
from ..data import MultiTaskData
from ..space import SearchSpace
from ..train import TrainConfig

FINALS = ("sample", "argmax")
"""How the final policy is chosen (:attr:`AdaShareConfig.final`)."""


TRAIN = TrainConfig(epochs=30, batch_size=64, weight_decay=1e-4)
"""AdaShare's defaults of the training options it uses (:data:`TRAIN_OPTIONS`)."""
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "device", "precision", "progress")
"""The :class:`~nas_mtl.train.TrainConfig` fields AdaShare reads; the others must keep their defaults."""


@dataclass(frozen=True)
class AdaShareConfig:
    """AdaShare search settings; defaults follow the reference code (see :mod:`nas_mtl.search.adashare`).

    Args:
        train: ``epochs`` (search rounds after the warm-up: one weight pass on train + one policy pass on val
            each), ``batch_size`` (samples per step in both phases; reference 16 at 321x321 crops), ``lr`` and
            ``weight_decay`` (network weights: Adam(betas=(0.5, 0.999)) in the warm-up, SGD(momentum 0.9)
            after), ``seed``, ``device`` and ``progress``.
        warmup_epochs: hard-sharing epochs before the policy is learned.
        policy_lr: Adam learning rate of the policy logits.
        policy_weight_decay: L2 term on the active blocks' policy logits.
        tau: Gumbel-softmax temperature at round 0.
        tau_decay: temperature factor per round.
        sparsity: λ of the sparsity term.
        sharing: λ of the sharing term.
        curriculum: learn one more block (from the last) every ``curriculum_speed`` rounds.
        curriculum_speed: rounds per extra block.
        hard_sampling: straight-through hard Gumbel samples instead of soft ones (reference: soft).
        weight_steps: weight steps per round (none: one pass over the training set).
        policy_steps: policy steps per round (none: one pass over the validation set).
        final: sample (draw ``num_samples`` policies, keep the lowest validation loss) or argmax.
        num_samples: policies drawn with final = sample.
        task_weights: loss weight per task, TASK=W (the reference's ``lambdas``); missing tasks weigh 1.
        balancer: how the weight updates (warm-up and weight phase) combine the weighted task losses: equal
            (their sum, the reference), or any loss balancer (NAME or NAME:KEY=VALUE,..., e.g. mgda or pcgrad) on
            the shared parameters; the policy logits always follow the weighted sum plus the regularisers.
    """

    train: TrainConfig = nested(
        TRAIN,
        only=TRAIN_OPTIONS,
        helps={
            "epochs": "search rounds after the warm-up (one weight pass on train + one policy pass on val each)",
            "batch_size": "samples per step in both phases (reference 16 at 321x321 crops)",
            "lr": "network weights' learning rate (Adam(betas=(0.5, 0.999)) in the warm-up, SGD(momentum 0.9) after)",
        },
    )
    warmup_epochs: int = 5
    policy_lr: float = 0.01
    policy_weight_decay: float = 5e-4
    tau: float = 5.0
    tau_decay: float = 0.965
    sparsity: float = 0.05
    sharing: float = 0.05
    curriculum: bool = True
    curriculum_speed: int = 3
    hard_sampling: bool = False
    weight_steps: int | None = None
    policy_steps: int | None = None
    final: str = option("sample", choices=FINALS)
    num_samples: int = 8
    task_weights: Mapping[str, float] = option(default_factory=dict, flags=("--task-weight",))
    balancer: str = "equal"

    def __post_init__(self) -> None:
        def fail(name: str, want: str) -> ValueError:
            return ValueError(f"adashare config: {name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"adashare config: train must be a TrainConfig, got {type(self.train).__name__}")
        unused = [
            f
            for f in TrainConfig.__dataclass_fields__
            if f not in TRAIN_OPTIONS and getattr(self.train, f) != getattr(TRAIN, f)
        ]
        if unused:
            raise ValueError(f"adashare config: train.{unused[0]} is not used by AdaShare (it uses {TRAIN_OPTIONS})")
        if self.train.epochs < 1:
            raise ValueError(f"adashare config: epochs must be an integer >= 1, got {self.train.epochs!r}")
        for name, low in (("warmup_epochs", 0), ("curriculum_speed", 1), ("num_samples", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise fail(name, f"an integer >= {low}")
        for name in ("weight_steps", "policy_steps"):
            if getattr(self, name) is not None and (not is_int(getattr(self, name)) or getattr(self, name) < 1):
                raise fail(name, "None (one pass) or an integer >= 1")
        for name in ("policy_lr", "tau"):
            if not is_num(getattr(self, name)) or getattr(self, name) <= 0:
                raise fail(name, "a finite number > 0")
        if self.train.lr <= 0:
            raise ValueError(f"adashare config: lr must be a finite number > 0, got {self.train.lr!r}")
        for name in ("policy_weight_decay", "sparsity", "sharing"):
            if not is_num(getattr(self, name)) or getattr(self, name) < 0:
                raise fail(name, "a finite number >= 0")
        if not is_num(self.tau_decay) or not 0 < self.tau_decay <= 1:
            raise fail("tau_decay", "a number in (0, 1]")
        for name in ("curriculum", "hard_sampling"):
            if not isinstance(getattr(self, name), bool):
                raise fail(name, "true or false")
        if self.final not in FINALS:
            raise fail("final", f"one of {list(FINALS)}")
        if not isinstance(self.task_weights, Mapping) or not all(
            isinstance(k, str) and is_num(v) and v >= 0 for k, v in self.task_weights.items()
        ):
            raise fail("task_weights", "a mapping task -> finite number >= 0")
        object.__setattr__(self, "task_weights", {k: float(v) for k, v in self.task_weights.items()})
        try:
            create_balancer(self.balancer)
        except (TypeError, ValueError) as err:
            raise ValueError(f"adashare config: balancer: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The flat options (what the CLI and study files set; recorded in checkpoints and results)."""
        return to_options(self)

    def tau_at(self, round_: int) -> float:
        """Gumbel temperature of search round ``round_`` (0-based)."""
        return self.tau * self.tau_decay**round_

    def active_at(self, round_: int, num_blocks: int) -> int:
        """How many of the last policy blocks have a learned decision in search round ``round_``."""
        return num_blocks if not self.curriculum else min(num_blocks, round_ // self.curriculum_speed + 1)


def check_adashare(data: MultiTaskData, space: SearchSpace, config: AdaShareConfig) -> None:
    """ValueError if ``config`` cannot run on ``data`` and ``space`` (checked before a study trains anything)."""
    if config.train.precision == "fp16":
        raise ValueError("adashare: precision fp16 has no gradient scale in the policy search; use bf16 (or fp32)")
    unknown = sorted(set(config.task_weights) - set(data.task_names))
    if unknown:
        raise ValueError(
            f"adashare config: task_weights names unknown task(s) {unknown}; tasks: {list(data.task_names)}"
        )
    if not space.skippable:
        raise ValueError(f"search space {space.name!r} has no skippable blocks: AdaShare has nothing to learn")
    if tuple(data.input_shape) != tuple(space.backbone.input_shape):
        raise ValueError(
            f"dataset {data.name!r} inputs are {tuple(data.input_shape)} but space "
            f"{space.name!r} expects {space.backbone.input_shape}"
        )
    for split in ("train", "val"):
        if len(getattr(data, split)) < config.train.batch_size:
            raise ValueError(
                f"adashare config: batch_size {config.train.batch_size} exceeds the {split} split "
                f"({len(getattr(data, split))} samples)"
            )


__all__ = ["FINALS", "TRAIN", "TRAIN_OPTIONS", "AdaShareConfig", "check_adashare"]
