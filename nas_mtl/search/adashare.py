"""AdaShare (Sun et al., "AdaShare: Learning What To Share For Efficient Deep Multi-Task Learning", NeurIPS 2020).

Every skippable block l and task t get policy logits over {select, skip}; a task runs the one shared copy
of block l when it selects it and the identity shortcut when it skips it. Logits and weights are learned
jointly through Gumbel-softmax samples of the decisions, then a policy is drawn from the learned
distribution and retrained from scratch as a :class:`~nas_mtl.graph.SharingGraph` (``from_policy``).

Schedule (paper Sec. 3; reference code github.com/sunxm2357/AdaShare @27e6fb5, ``train.py``):

1. warm-up: ``warmup_epochs`` of hard sharing (every task selects every block);
2. ``epochs`` search rounds, each one pass of weight updates on ``data.train`` with the policy fixed, then
   one pass of policy updates on ``data.val`` with the weights fixed (the reference alternates one pass
   over each of two halves of its training set; we use the validation split, as the issue asks);
3. curriculum: in round r only the last ``min(S, r // curriculum_speed + 1)`` of the S skippable blocks have
   a decision; the earlier ones are fixed to "select" and their logits get no gradient at all (the paper's
   statement; the reference also lets its sharing term and Adam's weight decay move the fixed ones);
4. the Gumbel temperature starts at ``tau`` and is multiplied by ``tau_decay`` after every round.

Policy loss (paper Sec. 3): ``Σ_t w_t L_t + λ_sparsity L_sparsity + λ_sharing L_sharing`` over the active
blocks A:

* ``L_sparsity = Σ_t mean_{l∈A} −log p_skip[l, t]`` (reference ``get_sparsity_loss2``: cross-entropy of the
  logits towards "skip"; the paper writes ``Σ log α`` with α the select probability, same direction);
* ``L_sharing = Σ_{t<t'} Σ_{l∈A} (S − l)/S · |z[l, t] − z[l, t']|`` with ``z`` the select log-odds and
  l = 0..S−1 from the input side: the paper's (L − l)/L weights, decreasing with depth so that early blocks
  are shared (counting l from 0 keeps a pull of 1/S on the last block; counted from 1 it would get none).
  The reference's ``get_hamming_loss`` uses (l + 1)/L (increasing with depth) on the raw select
  logit; on two-column logits only the log-odds difference is zero exactly when two tasks' select
  probabilities agree, so we use that.

Defaults, all from the reference's NYUv2 2-task config (``yamls/adashare/nyu_v2_2task.yml``) and
``envs/blockdrop_env.py``: ``tau`` 5 (init_temp), ``tau_decay`` 0.965 (decay_temp), policy Adam lr 0.01 and
weight decay 5e-4, weights lr 1e-3 (lr = backbone_lr) with weight decay 1e-4 — Adam(betas=(0.5, 0.999))
during the warm-up, SGD(momentum 0.9) afterwards —, λ_sparsity 0.05 (reg_w), λ_sharing 0.05 (reg_w_hamming;
other configs: NYUv2 3-task 0.001 / 0.05, CityScapes 0.01 / 0.1, Taskonomy 0.001 / 0.005), curriculum_speed 3
(Taskonomy 1), logits initialised equal (p_select = 0.5, init_method "equal"), soft Gumbel samples
(hard_sampling False), 8 policies sampled at the end (README, "Retrain Phase"). The reference retrains the 8
samples and reports the best; we rank them by the supernet's validation loss instead and return the others
as candidates. Not reproduced: the reference's step decay of the warm-up learning rate (x0.5 every 4000
iterations) and its choice of the "best" policy checkpoint by test-set metrics. Budgets (epochs, warm-up, batch
size 64 vs 16) are scaled down for CPU; for budgets of a few hundred policy steps, raise ``policy_lr`` and
lower ``tau_decay`` (the reference takes ~8000 policy steps and ~300 temperature decays).

Execution: the supernet is a :class:`~nas_mtl.network.MultiTaskNetwork` with one copy of every block, run
under gates (``network(x, gates=...)``), the executor every retrained graph uses too. Why it is faster than the
reference, which runs the whole backbone once per task per step: blocks without a decision yet (the curriculum's
early blocks, the non-skippable ones before the first decision) run once for all tasks; from the first decided
block on, with soft gates or hard gates whose gradient is needed, every task continues on its own stream (the
gradient of task t's gate needs ``block(h_t) − h_t``, so sharing a stream would merge gate gradients), all
streams interleaved along the batch in one tensor so that a block runs once per step on all of them. Hard gates
without gradient (weight phase with ``hard_sampling``, final scoring) are a policy, run as its
:class:`~nas_mtl.graph.SharingGraph`: equal select/skip prefixes once, skipped blocks not at all.
BatchNorm: the reference runs each task through the shared backbone in a separate call, so its BN layers
share affine parameters and running statistics but normalise each task's activations with that task's
batch statistics. The stream-aware twins of :func:`~nas_mtl.network.stream_norms` do the same in one call per
layer, which keeps batching exact (timm's ``BatchNormAct2d`` included: its dropout and activation follow the
norm; a BatchNorm subclass with another forward of its own is rejected with a TypeError).
``benchmarks/adashare.py`` measures both executions side by side.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..backbones import Backbone
from ..balancing import create_balancer
from ..config import nested, option, to_options
from ..data import MultiTaskData, data_fingerprint, iterate_batches
from ..graph import SharingGraph
from ..network import Gates, MultiTaskNetwork
from ..progress import progress
from ..runs import (
    INTEGER,
    LIST,
    NUMBER,
    TABLE,
    TENSOR,
    Schema,
    check_record,
    check_settings,
    load_checkpoint,
    save_atomic,
    write_json_atomic,
)
from ..space import SearchSpace
from ..tasks import TaskSpec, labelled_losses
from ..train import TrainConfig, balanced_backward, kept_buffers, resolve_device, seed_everything
from . import SearchMethod, SearchResult, register_search_method

SELECT, SKIP = 0, 1
"""Columns of the policy logits (the reference's order: column 0 multiplies the block's output)."""

NEAR_TIE = 0.1
"""A learned select probability within this of 0.5 is a near-tie: the argmax there is a coin the sparsity term tips.
Measured in ``benchmarks/search_quality.py``: with the paper's policy settings at a budget of 80 policy steps the
probabilities end in 0.40-0.51 and at 4 of 5 seeds the argmax skips every block for every task (13 Δm points
below hard sharing when retrained); see :func:`adashare_search`."""
CHECKPOINT = "adashare_checkpoint.pt"
CHECKPOINT_SCHEMA: Schema = {
    "identity": TABLE,
    "epoch": INTEGER,
    "elapsed": NUMBER,
    "history": LIST,
    "net": TABLE,
    "weight_opt": TABLE,
    "policy_opt": TABLE,
    "gumbel": TENSOR,
    "rng": TENSOR,
}
"""What an AdaShare checkpoint (:data:`CHECKPOINT`) holds besides an optional ``balancer`` state table."""
HISTORY = "policy_history.json"
FINALS = ("sample", "argmax")


TRAIN = TrainConfig(epochs=30, batch_size=64, weight_decay=1e-4)
"""AdaShare's defaults of the training options it uses (:data:`TRAIN_OPTIONS`)."""
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "device", "progress")
"""The :class:`~nas_mtl.train.TrainConfig` fields AdaShare reads; the others must keep their defaults."""


@dataclass(frozen=True)
class AdaShareConfig:
    """AdaShare search settings; defaults follow the reference code (see the module docstring).

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


# ---------------------------------------------------------------------- regularisers
def depth_weights(num_blocks: int) -> Tensor:
    """Sharing weights (S − l)/S, l = 0..S−1 from the input side (the paper's (L − l)/L): early blocks weigh most."""
    return (num_blocks - torch.arange(num_blocks, dtype=torch.float32)) / num_blocks


def sparsity_loss(logits: Tensor) -> Tensor:
    """``Σ_t mean_l −log p_skip[l, t]`` for logits (blocks, tasks, 2) (reference ``get_sparsity_loss2``)."""
    return -F.log_softmax(logits, dim=-1)[..., SKIP].mean(dim=0).sum()


def sharing_loss(logits: Tensor, weights: Tensor) -> Tensor:
    """``Σ_{t<t'} Σ_l weights[l] |z[l, t] − z[l, t']|`` with z the select log-odds (AdaShare's sharing loss)."""
    z = logits[..., SELECT] - logits[..., SKIP]
    pairs = (z[:, :, None] - z[:, None, :]).abs().sum(dim=(1, 2)) / 2
    return (weights.to(z) * pairs).sum()


def policy_regularizer(logits: Tensor, active: int, config: AdaShareConfig) -> Tensor:
    """λ_sparsity L_sparsity + λ_sharing L_sharing + L2 decay, over the last ``active`` blocks only."""
    num_blocks = logits.shape[0]
    z = logits[num_blocks - active :]
    loss = config.sparsity * sparsity_loss(z)
    loss = loss + config.sharing * sharing_loss(z, depth_weights(num_blocks)[num_blocks - active :])
    return loss + 0.5 * config.policy_weight_decay * z.square().sum()


# ---------------------------------------------------------------------- supernet
class AdaShareSupernet(nn.Module):
    """The search's network: a :class:`~nas_mtl.network.MultiTaskNetwork` with one copy of every backbone block
    (hard sharing), run under gates (``network(x, gates=...)``), and the policy logits (S skippable blocks, T
    tasks, 2).

    A task's activation after block l is ``h + u[l, t] (block_l(h) − h)``: the block when u = 1, the skip
    when u = 0 (the reference's ``fx * p_select + residual * p_skip``).
    """

    def __init__(self, backbone: Backbone, tasks: Sequence[TaskSpec], policy_layers: Sequence[int]) -> None:
        super().__init__()
        self.tasks = tuple(t.name for t in tasks)
        self.policy_layers = tuple(policy_layers)
        skippable = [backbone.layer_names[i] for i in self.policy_layers]
        graph = SharingGraph.hard_sharing(self.tasks, backbone.layer_names, skippable)
        blocks = backbone.build()  # blocks first, then heads: the initialisation order of the original supernet
        heads = {t.name: t.build_head(backbone.feature_shape, backbone.input_shape[1:]) for t in tasks}
        self.network = MultiTaskNetwork(graph, backbone, heads, inherit=blocks)
        self.network.stream_norms()  # stream-aware BatchNorm now: an unsupported norm fails here, not mid-search
        # init_method "equal": both logits 0.5, p_select = 0.5
        self.logits = nn.Parameter(torch.full((len(self.policy_layers), len(self.tasks), 2), 0.5))

    @property
    def blocks(self) -> list[nn.Module]:
        """The backbone blocks, one per layer."""
        return [row[0] for row in self.network.blocks]

    @property
    def heads(self) -> nn.ModuleList:
        return self.network.heads

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.network.parameters())

    def select_prob(self) -> Tensor:
        """(S, T) probability that task t selects policy block s."""
        return self.logits.detach().softmax(dim=-1)[..., SELECT].cpu()

    def sample_gates(self, tau: float, active: int, hard: bool, generator: torch.Generator, grad: bool) -> Gates:
        """Gumbel-softmax select gates of the last ``active`` policy blocks; earlier layers always select.

        ``hard``: straight-through one-hot samples (value 0/1, gradient of the soft sample). ``grad``:
        keep the graph to the logits (policy phase).
        """
        start = len(self.policy_layers) - active
        logits = self.logits[start:] if grad else self.logits[start:].detach()
        noise = -torch.empty(logits.shape).exponential_(generator=generator).log().to(logits.device)
        soft = ((logits + noise) / tau).softmax(dim=-1)[..., SELECT]
        gates = soft
        if hard:  # exact 0/1 without gradient, so that the forward can share prefixes and skip blocks
            one_hot = (soft > 0.5).to(soft.dtype)
            gates = one_hot - soft.detach() + soft if grad else one_hot
        out: list[Tensor | None] = [None] * len(self.network.blocks)
        for row, layer in enumerate(self.policy_layers[start:]):
            out[layer] = gates[row]
        return out

    def fixed_gates(self, select: Sequence[Sequence[bool]]) -> Gates:
        """Hard 0/1 gates of a policy ``select[s][t]`` over the policy blocks."""
        out: list[Tensor | None] = [None] * len(self.network.blocks)
        for row, layer in zip(select, self.policy_layers):
            out[layer] = torch.tensor([float(bool(s)) for s in row], device=self.logits.device)
        return out

    def forward(self, x: Tensor, gates: Gates) -> dict[str, Tensor]:
        """Head outputs ``{task: prediction}`` under ``gates`` (see :meth:`MultiTaskNetwork.forward`)."""
        return self.network(x, gates=gates)


# ---------------------------------------------------------------------- the search
def _steps(dataset: Dataset, batch_size: int, steps: int | None, seed: int) -> Iterator:
    """``steps`` shuffled batches (None: one pass), passes reshuffled by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while steps is None or done < steps:
        for batch in iterate_batches(dataset, batch_size, shuffle=True, generator=generator, drop_last=True):
            yield batch
            done += 1
            if done == steps:
                return
        if steps is None:
            return


def check_adashare(data: MultiTaskData, space: SearchSpace, config: AdaShareConfig) -> None:
    """ValueError if ``config`` cannot run on ``data`` and ``space`` (checked before a study trains anything)."""
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


class _Search:
    """The state of one search: supernet, optimisers, RNGs, history; one method per epoch kind."""

    def __init__(self, data: MultiTaskData, space: SearchSpace, config: AdaShareConfig) -> None:
        check_adashare(data, space, config)
        self.data, self.space, self.config = data, space, config
        self.device = resolve_device(config.train.device)
        seed_everything(config.train.seed)
        policy_layers = [i for i, name in enumerate(space.layers) if name in space.skippable]
        self.net = AdaShareSupernet(space.backbone, data.tasks, policy_layers).to(self.device)
        self.weights = [config.task_weights.get(t, 1.0) for t in data.task_names]
        self.blocks = tuple(space.layers[i] for i in policy_layers)
        self.gumbel = torch.Generator().manual_seed(config.train.seed)
        self.policy_opt = torch.optim.Adam([self.net.logits], lr=config.policy_lr)
        # None: the reference's weighted sum; else a balancer on the weight updates (detached by close())
        self.balancer = (
            None if config.balancer == "equal" else create_balancer(config.balancer).prepare(self.net.network)
        )
        self.weight_opt = self._weight_optimizer(search=False)  # replaced by SGD at search round 0
        self.epoch, self.elapsed, self.history = 0, 0.0, []
        self.fingerprint = data_fingerprint(data)  # recorded with every checkpoint, compared on resume

    def _weight_optimizer(self, search: bool) -> torch.optim.Optimizer:
        params, c = self.net.weight_parameters(), self.config
        if search:
            return torch.optim.SGD(params, lr=c.train.lr, momentum=0.9, weight_decay=c.train.weight_decay)
        return torch.optim.Adam(params, lr=c.train.lr, betas=(0.5, 0.999), weight_decay=c.train.weight_decay)

    @property
    def total_epochs(self) -> int:
        return self.config.warmup_epochs + self.config.train.epochs

    def _validate_targets(self, x: Tensor, y: Mapping[str, Tensor]) -> None:
        """Each task's ``validate_target`` on one batch (ValueError naming the task), as ``train.py`` does."""
        for t in self.data.tasks:
            t.validate_target(y[t.name], x.shape[0])

    def _loss(
        self, x: Tensor, y: Mapping[str, Tensor], gates: Gates, where: str
    ) -> tuple[Tensor, dict[str, float], dict[str, Tensor]]:
        """The weighted total, the per-task values (checked finite) and the per-task loss tensors."""
        targets = {k: v.to(self.device) for k, v in y.items()}
        losses, _ = labelled_losses(self.net(x.to(self.device), gates), targets, self.data.tasks)
        if not losses:  # no task has a label in this batch
            return torch.zeros((), device=self.device), {}, {}
        values = dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist()))  # one host copy
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"adashare: non-finite loss for task(s) {bad} at {where}")
        total = sum(w * losses[t] for w, t in zip(self.weights, self.data.task_names) if t in losses)
        return total, values, losses

    def _phase(self, split: Dataset, steps: int | None, seed: int, desc: str, step_fn) -> dict[str, float]:
        """Run ``step_fn(x, y, where) -> per-task losses`` over batches (targets of the first one validated);
        mean per-task loss."""
        sums: dict[str, float] = dict.fromkeys(self.data.task_names, 0.0)
        n = dict.fromkeys(self.data.task_names, 0)  # steps in which each task had labels
        batches = _steps(split, self.config.train.batch_size, steps, seed)
        total = steps if steps is not None else len(split) // self.config.train.batch_size
        for i, (x, y) in enumerate(progress(batches, desc, self.config.train.progress, total=total)):
            if i == 0:
                self._validate_targets(x, y)
            for k, v in step_fn(x, y, f"epoch {self.epoch + 1} {desc} step {i + 1}").items():
                sums[k] += v
                n[k] += 1
        return {k: v / max(n[k], 1) for k, v in sums.items()}

    def _weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {t: w * losses[t] for w, t in zip(self.weights, self.data.task_names) if t in losses}

    def _weight_step(self, gates_fn):
        def step(x, y, where):
            gates = gates_fn()
            total, values, losses = self._loss(x, y, gates, where)
            if not losses:
                return values
            self.weight_opt.zero_grad(set_to_none=True)
            if self.balancer is None:
                total.backward()
            else:
                try:
                    balanced_backward(self.balancer, self._weighted(losses), self.net.network)
                except FloatingPointError as err:
                    raise FloatingPointError(f"adashare: {err} at {where}") from None
            self.weight_opt.step()
            if self.balancer is not None:

                def recompute() -> dict[str, Tensor]:  # same batch, same gates, updated weights
                    targets = {k: v.to(self.device) for k, v in y.items()}
                    with torch.no_grad(), kept_buffers(self.net):
                        out = self.net(x.to(self.device), gates)
                    return self._weighted(labelled_losses(out, targets, self.data.tasks)[0])

                self.balancer.after_step(recompute)
            return values

        return step

    def run_epoch(self) -> dict[str, Any]:
        """One warm-up epoch or one search round (weights on train, then policy on val)."""
        c, e = self.config, self.epoch
        t0 = time.perf_counter()
        self.net.train()
        seed = c.train.seed * 1_000_003 + 2 * e
        label = f"adashare {e + 1}/{self.total_epochs}"
        if e < c.warmup_epochs:
            hard_sharing = [None] * len(self.net.blocks)
            train_loss = self._phase(
                self.data.train, None, seed, f"{label} warm-up", self._weight_step(lambda: hard_sharing)
            )
            record = {"phase": "warmup", "train_loss": train_loss}
            if self.balancer is not None:
                self.balancer.end_epoch(train_loss)
        else:
            r = e - c.warmup_epochs
            if r == 0:
                self.weight_opt = self._weight_optimizer(search=True)
            tau, active = c.tau_at(r), c.active_at(r, len(self.blocks))

            def gates(grad: bool) -> Gates:
                return self.net.sample_gates(tau, active, c.hard_sampling, self.gumbel, grad)

            train_loss = self._phase(
                self.data.train, c.weight_steps, seed, f"{label} weights", self._weight_step(lambda: gates(False))
            )
            if self.balancer is not None:
                self.balancer.end_epoch(train_loss)

            def policy_step(x, y, where):
                total, losses, _ = self._loss(x, y, gates(True), where)
                total = total + policy_regularizer(self.net.logits, active, c)
                self.policy_opt.zero_grad(set_to_none=True)
                total.backward()
                self.policy_opt.step()
                return losses

            weights = self.net.weight_parameters()
            for p in weights:
                p.requires_grad_(False)
            try:
                val_loss = self._phase(self.data.val, c.policy_steps, seed + 1, f"{label} policy", policy_step)
            finally:
                for p in weights:
                    p.requires_grad_(True)
            record = {
                "phase": "search",
                "round": r + 1,
                "tau": tau,
                "active_blocks": active,
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
        self.elapsed += time.perf_counter() - t0
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            **record,
            "select_prob": self.net.select_prob().tolist(),
            "seconds": time.perf_counter() - t0,
            "elapsed": self.elapsed,
        }
        self.history.append(record)
        return record

    # ------------------------------------------------------------------ checkpoint
    def _identity(self) -> dict[str, Any]:
        free = ("epochs", "final", "num_samples", *TrainConfig.RUNTIME_FIELDS)  # may change between resumes
        c = {k: v for k, v in self.config.to_dict().items() if k not in free}
        return {
            "tasks": list(self.data.task_names),
            "layers": list(self.space.layers),
            "blocks": list(self.blocks),
            "config": c,
            "data": self.fingerprint,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "identity": self._identity(),
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "history": self.history,
            "net": self.net.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
            "gumbel": self.gumbel.get_state(),
            "balancer": self.balancer.state_dict() if self.balancer is not None else {},
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: Path) -> None:
        net = state.get("net")
        if isinstance(net, dict) and not any(str(k).startswith("network.") for k in net):
            raise ValueError(
                f"{source}: an AdaShare checkpoint of an earlier nas_mtl version (before the shared executor); "
                "delete it to restart the search"
            )
        action = "delete it to restart the search"
        check_record(state, source, "AdaShare checkpoint", CHECKPOINT_SCHEMA, action, {"balancer": TABLE})
        check_settings(state["identity"], self._identity(), source, "checkpoint")
        self.net.load_state_dict(state["net"])
        self.epoch, self.elapsed, self.history = state["epoch"], state["elapsed"], list(state["history"])
        self.weight_opt = self._weight_optimizer(search=self.epoch > self.config.warmup_epochs)
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.policy_opt.load_state_dict(state["policy_opt"])
        if self.balancer is not None and state.get("balancer"):
            self.balancer.load_state_dict(state["balancer"])
        self.gumbel.set_state(state["gumbel"].cpu())
        torch.set_rng_state(state["rng"].cpu())

    # ------------------------------------------------------------------ final policy
    @torch.no_grad()
    def val_loss(self, select: Sequence[Sequence[bool]]) -> float:
        """Weighted validation loss of a hard policy under the supernet's weights.

        BatchNorm normalises with batch statistics (each stream its own), as in the search: the running
        statistics were gathered under soft gates, which no hard policy reproduces, and would rank policies by
        that mismatch. They are left as they were.
        """
        self.net.train()
        saved = [b.clone() for b in self.net.buffers()]
        gates = self.net.fixed_gates(select)
        total, n = 0.0, 0
        n_val = len(self.data.val)  # batches of (nearly) equal size, so that their statistics are alike
        size = math.ceil(n_val / math.ceil(n_val / max(self.config.train.batch_size, 256)))
        for i, (x, y) in enumerate(iterate_batches(self.data.val, size, shuffle=False)):
            if i == 0:
                self._validate_targets(x, y)
            loss, _, _ = self._loss(x, y, gates, "final scoring")
            total += float(loss) * x.shape[0]
            n += x.shape[0]
        for b, old in zip(self.net.buffers(), saved):
            b.copy_(old)
        return total / n

    @property
    def unlearned(self) -> int:
        """Blocks (from the input side) the curriculum never reached: always selected during the search, their
        logits still at the initial p = 0.5."""
        return len(self.blocks) - self.config.active_at(self.config.train.epochs - 1, len(self.blocks))

    def final_prob(self) -> Tensor:
        """Select probabilities the final policy is drawn from: the learned ones, 1 for unlearned blocks."""
        prob = self.net.select_prob()
        prob[: self.unlearned] = 1.0
        return prob

    def argmax_policy(self) -> list[list[bool]]:
        """Select where p(select) >= 0.5 (a tie selects, the reference's argmax; unlearned blocks stay selected)."""
        return (self.final_prob() >= 0.5).tolist()

    def final_policies(self) -> list[dict[str, Any]]:
        """Candidate policies, best first: the argmax (:meth:`argmax_policy`), or ``num_samples`` draws from
        :meth:`final_prob` ranked by validation loss."""
        prob = self.final_prob()
        if self.config.final == "argmax":
            policies = [self.argmax_policy()]
        else:
            generator = torch.Generator().manual_seed(self.config.train.seed)
            draws = [
                (torch.rand(prob.shape, generator=generator) < prob).tolist() for _ in range(self.config.num_samples)
            ]
            policies = [p for i, p in enumerate(draws) if p not in draws[:i]]
        scored = [{"select": p, "val_loss": self.val_loss(p)} for p in policies]
        return sorted(scored, key=lambda s: s["val_loss"])

    def graph(self, select: Sequence[Sequence[bool]], **meta: Any) -> SharingGraph:
        by_layer = dict(zip(self.net.policy_layers, select))
        rows = [by_layer.get(i, [True] * len(self.data.task_names)) for i in range(len(self.space.layers))]
        return SharingGraph.from_policy(self.data.task_names, self.space.layers, rows, self.space.skippable).with_meta(
            method="adashare", **meta
        )


def adashare_search(
    data: MultiTaskData,
    space: SearchSpace,
    config: AdaShareConfig = AdaShareConfig(),
    run_dir: str | Path | None = None,
) -> SearchResult:
    """Learn an AdaShare select/skip policy and return it as a SharingGraph to retrain from scratch.

    With ``run_dir``, the search is checkpointed after every epoch (``adashare_checkpoint.pt``) and a
    checkpoint found there is resumed (same data, space and settings; ``epochs`` may grow); the per-epoch
    select probabilities go to ``policy_history.json`` and the heatmaps to ``policy.png`` /
    ``policy_epochs.png``. Save the result with ``result.save(run_dir)``. ``info`` holds the histories, the
    ranked candidate policies, the argmax policy's graph (``argmax_graph``, also when ``final`` is sample) and
    the cost, also in epochs of hard-sharing training (``cost_in_hard_sharing_epochs``, measured on the warm-up).
    ``near_ties`` counts the learned select probabilities within :data:`NEAR_TIE` of 0.5 (of ``learned_cells``);
    when all of them are, the policy was not learned and a UserWarning says so.
    """
    from .adashare_plots import plot_policy, plot_policy_history

    search = _Search(data, space, config)
    ckpt = None
    try:
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt = run_dir / CHECKPOINT
            if ckpt.exists():
                search.load_state_dict(load_checkpoint(ckpt), ckpt)
        while search.epoch < search.total_epochs:
            search.run_epoch()
            if run_dir is not None:
                save_atomic(search.state_dict(), ckpt)
                write_json_atomic(
                    {"tasks": list(data.task_names), "blocks": list(search.blocks), "history": search.history},
                    run_dir / HISTORY,
                )
    finally:
        if search.balancer is not None:
            search.balancer.detach()
    t0 = time.perf_counter()
    ranked = search.final_policies()
    prob = search.net.select_prob()
    seconds = search.elapsed + time.perf_counter() - t0
    graphs = [search.graph(p["select"], name=f"adashare#{i}", val_loss=p["val_loss"]) for i, p in enumerate(ranked)]
    warmup_s = sum(h["seconds"] for h in search.history if h["phase"] == "warmup")
    learned = prob[search.unlearned :]
    near_ties = int(((learned - 0.5).abs() < NEAR_TIE).sum())
    if learned.numel() and near_ties == learned.numel():
        warnings.warn(
            f"adashare: every learned select probability ended within {NEAR_TIE} of 0.5 "
            f"({float(learned.min()):.2f}-{float(learned.max()):.2f}): the policy was not learned at this budget and "
            "its argmax follows the sparsity term; raise policy_lr, lower tau_decay or search longer (README, AdaShare "
            "at small budgets)",
            stacklevel=2,
        )
    info = {
        "config": config.to_dict(),
        "tasks": list(data.task_names),
        "blocks": list(search.blocks),
        "select_prob": prob.tolist(),
        "policies": ranked,
        "near_ties": near_ties,  # learned (block, task) probabilities within NEAR_TIE of 0.5
        "learned_cells": learned.numel(),
        # the argmax policy also when final = sample (the paper's two answers: its argmax and the best sample)
        "argmax_graph": search.graph(search.argmax_policy(), name="adashare argmax").to_dict(),
        "warmup_seconds": warmup_s,
        "search_seconds": search.elapsed - warmup_s,
        # the whole search in epochs of hard-sharing training (the warm-up's, same data and batch size)
        "cost_in_hard_sharing_epochs": seconds / (warmup_s / config.warmup_epochs) if config.warmup_epochs else None,
        "history": search.history,
    }
    if run_dir is not None:
        chosen = ranked[0]["select"]
        plot_policy(prob.tolist(), search.blocks, data.task_names, run_dir / "policy.png", chosen)
        plot_policy_history(search.history, search.blocks, data.task_names, run_dir / "policy_epochs.png")
    return SearchResult("adashare", graphs[0].with_meta(select_prob=prob.tolist()), seconds, tuple(graphs[1:]), info)


@register_search_method("adashare")
def _method() -> SearchMethod:
    return SearchMethod(
        AdaShareConfig,
        adashare_search,
        check=check_adashare,
        help="AdaShare: differentiable select/skip policy per block and task (Sun et al. 2020)",
    )


__all__ = [
    "AdaShareConfig",
    "AdaShareSupernet",
    "CHECKPOINT",
    "FINALS",
    "HISTORY",
    "TRAIN",
    "TRAIN_OPTIONS",
    "adashare_search",
    "check_adashare",
    "depth_weights",
    "policy_regularizer",
    "sharing_loss",
    "sparsity_loss",
]
