"""Loss-weighting methods: one backward pass of ``Σ_t w_t L_t`` with weights the method adapts as training goes.

Unlike the gradient-combining methods these need no per-task gradient: the cost of a step is that of equal
weighting (FAMO adds one forward pass for its weight update). The weights scale every parameter's gradient,
heads included (``shared_only`` is False), as in the papers and in LibMTL.

* Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
  Scene Geometry and Semantics", CVPR 2018): a learned log variance ``s_t`` per task and the loss
  ``Σ_t ½ (exp(-s_t) L_t + s_t)`` (their Eq. 7 with ``s = log σ²``, as LibMTL and the Nash-MTL / FAMO code
  write it); ``s`` is trained by its own Adam (the reference trainers' separate parameter group, lr 0.025).
* DWA, Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
  Eq. 7 and the MTAN code): in epoch e ≥ 3, ``w_t = T softmax_t(r_t / temperature)`` with
  ``r_t = L̄_t(e-1) / L̄_t(e-2)`` the ratio of the task's mean training losses over the last two epochs; 1 before.
* RLW, Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for
  Multi-Task Learning", TMLR 2022): every step fresh weights ``softmax(z)``, ``z ~ N(0, I)``.
* FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, Alg. 1 and the authors'
  ``famo.py``): the gradient of ``Σ_t z_t log L_t / c`` with ``z = softmax(ξ)`` and ``c = Σ_t z_t / L_t``, i.e.
  weights ``z_t / (c L_t)``; shared gradients clipped to norm ``max_norm``; after the optimiser's step the logits
  ξ move by Adam (weight decay γ) along ``-J_softmaxᵀ δ``, ``δ_t = log L_t(before) − log L_t(after)`` on the
  same batch (one extra forward pass, :meth:`~.base.Balancer.after_step`).
* GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
  Networks", ICML 2018): see :class:`GradNorm`.

Missing labels: a task absent from a step's losses gets no weight that step (RLW and FAMO weigh the tasks
present; uncertainty weighting leaves that task's ``s`` untouched; FAMO's δ and GradNorm's weight gradient are 0
for it).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..graph import SKIP
from .base import Balancer, SeededGenerator, check_number, register_balancer
from .grouped import check_multitask, loss_values
from .representation import shared_trunk


class LossWeighting(Balancer):
    """A method whose update is the gradient of ``Σ_t w_t L_t`` with the weights of :meth:`weights_for`."""

    shared_only = False

    @abstractmethod
    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        """This step's weights from the (finite) task losses."""

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        weights = self.weights_for(loss_values(losses, self.name), network)
        torch.stack([weights[t] * v for t, v in losses.items()]).sum().backward()
        return weights


def _tasks(network: nn.Module, losses: Sequence[str]) -> list[str]:
    """The network's tasks (a MultiTaskNetwork), else those of the losses."""
    return list(getattr(network, "tasks", losses))


@register_balancer("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): ``½ (exp(-s_t) L_t + s_t)``, ``s_t`` learned.

    Args:
        lr: Adam learning rate of the log variances ``s`` (0.025 as in the Nash-MTL and FAMO trainers).
        init: their initial value (0: σ = 1; LibMTL starts at -0.5).
    """

    name = "uncertainty"
    one_task_is_equal = False

    def __init__(self, lr: float = 0.025, init: float = 0.0) -> None:
        self.lr = check_number(self.name, "lr", lr)
        if isinstance(init, bool) or not isinstance(init, int | float) or not math.isfinite(init):
            raise ValueError(f"uncertainty: init must be a finite number, got {init!r}")
        self.init = float(init)
        self.log_var: dict[str, nn.Parameter] = {}
        self._optimizer: torch.optim.Adam | None = None

    def options(self) -> dict[str, Any]:
        return {"init": self.init, "lr": self.lr}

    def _ensure(self, tasks: Sequence[str]) -> None:
        """Create ``s`` for tasks not seen yet (one Adam parameter group each, so an absent task is not moved)."""
        for t in tasks:
            if t not in self.log_var:
                self.log_var[t] = nn.Parameter(torch.tensor(self.init, dtype=torch.float64, device="cpu"))
                if self._optimizer is None:
                    self._optimizer = torch.optim.Adam([self.log_var[t]], lr=self.lr)
                else:
                    self._optimizer.add_param_group({"params": [self.log_var[t]]})

    def prepare(self, network: nn.Module) -> UncertaintyWeighting:
        """Start afresh (a resumed run's state is loaded after this)."""
        self.log_var, self._optimizer = {}, None
        self._ensure(_tasks(network, []))
        return self

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        self._ensure(_tasks(network, list(loss)))
        weights = {}
        for t, s in self.log_var.items():
            s.grad = None
            if t in loss:
                precision = math.exp(-float(s.detach()))
                weights[t] = 0.5 * precision
                s.grad = torch.tensor(
                    0.5 - 0.5 * precision * loss[t], dtype=s.dtype, device=s.device
                )  # ∂/∂s of ½(e^{-s} L + s)
        return {t: weights[t] for t in loss}

    def after_step(self, recompute: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        if self._optimizer is not None:
            self._optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        if self._optimizer is None:
            return {}
        return {
            "tasks": list(self.log_var),
            "log_var": torch.stack([s.detach() for s in self.log_var.values()]),
            "optimizer": self._optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.log_var, self._optimizer = {}, None
        self._ensure(state["tasks"])
        with torch.no_grad():
            for s, value in zip(self.log_var.values(), state["log_var"]):
                s.copy_(value)
        self._optimizer.load_state_dict(state["optimizer"])


@register_balancer("static")
class StaticWeights(LossWeighting):
    """Static task weights (the grid-searched baseline of Sener & Koltun 2018): the gradient of ``Σ_t w_t L_t``.

    Args:
        **weights: ``TASK=WEIGHT`` (>= 0), e.g. ``static:left=1.2,right=0.8``; tasks not given weigh 1.
    """

    name = "static"
    one_task_is_equal = False

    def __init__(self, **weights: float) -> None:
        self.weights = {t: check_number(self.name, t, w) for t, w in weights.items()}

    def options(self) -> dict[str, Any]:
        return dict(self.weights)

    def prepare(self, network: nn.Module) -> StaticWeights:
        tasks = getattr(network, "tasks", None)
        unknown = sorted(set(self.weights) - set(tasks)) if tasks is not None else []
        if unknown:
            raise ValueError(f"static: no task(s) {unknown} in the network; its tasks: {list(tasks)}")
        return self

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        return {t: self.weights.get(t, 1.0) for t in loss}


def simplex_grid(tasks: Sequence[str], step: float) -> list[dict[str, float]]:
    """Weight vectors on the simplex scaled to sum to T: every ``w_t`` a positive multiple of ``T * step``.

    Raises:
        ValueError: ``step`` not of the form 1/n (n >= 2) or leaving no vector with every weight positive.
    """
    n = round(1 / step) if isinstance(step, int | float) and not isinstance(step, bool) and step > 0 else 0
    if n < 2 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"step: expected 1/n for an integer n >= 2 (0.5, 0.25, 0.1, ...), got {step!r}")
    t = len(tasks)
    if n < t:
        raise ValueError(f"step: {step} leaves no weight vector with all {t} weights positive (needs step <= 1/{t})")

    def parts(total: int, k: int) -> list[tuple[int, ...]]:
        if k == 1:
            return [(total,)]
        return [(i, *rest) for i in range(1, total - k + 2) for rest in parts(total - i, k - 1)]

    return [{task: round(c * t / n, 10) for task, c in zip(tasks, combo)} for combo in parts(n, t)]


@register_balancer("dwa")
class DWA(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019): weights from the last two epochs' loss ratios.

    Args:
        temperature: the softmax temperature T (2 in the paper; large: equal weights).

    A task whose mean loss is not positive in either of the two epochs (e.g. no label) has ratio 1.
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = check_number(self.name, "temperature", temperature)
        if self.temperature == 0:
            raise ValueError("dwa: temperature must be > 0, got 0")
        self.history: list[dict[str, float]] = []
        self.weights: dict[str, float] = {}

    def options(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def prepare(self, network: nn.Module) -> DWA:
        """Start afresh (a resumed run's state is loaded after this)."""
        self.history, self.weights = [], {}
        return self

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        return {t: self.weights.get(t, 1.0) for t in loss}

    def end_epoch(self, train_loss: Mapping[str, float]) -> None:
        self.history = [*self.history[-1:], dict(train_loss)]
        if len(self.history) < 2:
            return
        before, last = self.history
        tasks = list(last)
        ratios = torch.tensor(
            [last[t] / before[t] if before.get(t, 0.0) > 0 and last[t] > 0 else 1.0 for t in tasks],
            dtype=torch.float64,
            device="cpu",
        )
        self.weights = dict(zip(tasks, (len(tasks) * torch.softmax(ratios / self.temperature, 0)).tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "weights": self.weights}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self.weights = dict(state.get("weights", {}))


@register_balancer("rlw")
class RLW(LossWeighting):
    """Random Loss Weighting (Lin et al., TMLR 2022): ``softmax(z)``, ``z ~ N(0, I)`` drawn afresh every step.

    Args:
        seed: seeds the balancer's own generator (None: ``torch.initial_seed()`` at the first step, the run's
            seed when torch was seeded).
    """

    name = "rlw"

    def __init__(self, seed: int | None = None) -> None:
        self._random = SeededGenerator(seed, self.name)

    def options(self) -> dict[str, Any]:
        return {"seed": self._random.seed}

    def prepare(self, network: nn.Module) -> RLW:
        self._random.reset()
        return self

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        z = torch.randn(len(loss), generator=self._random.get(), dtype=torch.float64, device="cpu")
        return dict(zip(loss, torch.softmax(z, 0).tolist()))

    def state_dict(self) -> dict[str, Any]:
        return self._random.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._random.load_state_dict(state)


class LearnedTaskVector:
    """One learned value per task (FAMO's logits, GradNorm's weights) trained by its own Adam; checkpointable.

    Args:
        owner: the balancer's name (in errors).
        init: every task's initial value.
        lr, weight_decay: the Adam's (PyTorch's L2 ``weight_decay``).
    """

    def __init__(self, owner: str, init: float, lr: float, weight_decay: float = 0.0) -> None:
        self.owner, self.init, self.lr, self.weight_decay = owner, init, lr, weight_decay
        self.reset()

    def reset(self) -> None:
        self.tasks: list[str] = []
        self.value: nn.Parameter | None = None
        self.optimizer: torch.optim.Adam | None = None

    def ensure(self, tasks: Sequence[str]) -> None:
        """Create the vector for ``tasks`` on first use; ValueError for a task outside those afterwards."""
        if self.value is None and tasks:
            self.tasks = list(tasks)
            self.value = nn.Parameter(torch.full((len(tasks),), float(self.init), dtype=torch.float64, device="cpu"))
            self.optimizer = torch.optim.Adam([self.value], lr=self.lr, weight_decay=self.weight_decay)
        missing = sorted(set(tasks) - set(self.tasks))
        if missing:
            raise ValueError(
                f"{self.owner}: task(s) {missing} are not among the tasks it was prepared for {self.tasks}"
            )

    def values(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.value.detach().tolist()))

    def step(self, grad: torch.Tensor) -> None:
        """One Adam step along ``grad`` (one entry per task)."""
        self.value.grad = grad
        self.optimizer.step()
        self.value.grad = None

    def state_dict(self) -> dict[str, Any]:
        if self.value is None:
            return {}
        return {"tasks": self.tasks, "value": self.value.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.reset()
        self.ensure(state["tasks"])
        with torch.no_grad():
            self.value.copy_(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])


def last_block_parameters(network: nn.Module, task: str) -> list[nn.Parameter]:
    """GradNorm's W for ``task``: the deepest block every task runs together (the paper's last shared layer, one
    W for all) when there is one, else the last block on the task's own path; empty when it skips every block."""
    trunk = shared_trunk(network)
    if trunk:
        layer, copy = trunk[-1]
        return [p for p in network.blocks[layer][copy].parameters() if p.requires_grad]
    path = network.graph.path(task)
    for layer in reversed(range(len(path))):
        if path[layer] != SKIP:
            return [p for p in network.blocks[layer][path[layer]].parameters() if p.requires_grad]
    return []


@register_balancer("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018): weights learned so each task's gradient norm tracks its training rate.

    Args:
        alpha: the asymmetry α (the paper's 1.5 on NYUv2; 0: equal gradient norms).
        lr: Adam learning rate of the weights.

    Per step (their Algorithm 1): ``G_i = w_i ||∇_W L_i||`` on W = the deepest block all tasks run together (the
    paper's last shared layer, here the whole block; without one, each task's last block), ``r_i = L̃_i / mean(L̃)`` with
    ``L̃_i = L_i / L_i(0)`` (L_i(0): the task's loss at its first step), the target ``mean(G) r_i^α`` held
    constant, ``L_grad = Σ_i |G_i − target_i|``; the network takes the gradient of ``Σ w_i L_i``, the weights one
    Adam step on ``∂L_grad/∂w_i = sign(G_i − target_i) ||∇_W L_i||`` and are renormalised to sum to T (kept
    above 1e-6 before that, so no task's loss is ever negated).
    """

    name = "gradnorm"
    cost = "one backward pass, plus one per task through its head and last block"

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.alpha = check_number(self.name, "alpha", alpha)
        self.lr = check_number(self.name, "lr", lr)
        self._weights = LearnedTaskVector(self.name, 1.0, self.lr)
        self.initial: dict[str, float] = {}
        self._pending: torch.Tensor | None = None
        self._w_of: tuple[nn.Module, dict[str, list[nn.Parameter]]] | None = None

    @property
    def tasks(self) -> list[str]:
        return self._weights.tasks

    @property
    def weights(self) -> nn.Parameter | None:
        """The task weights w (summing to T)."""
        return self._weights.value

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "lr": self.lr}

    def prepare(self, network: nn.Module) -> GradNorm:
        """Start afresh (a resumed run's state is loaded after this)."""
        check_multitask(network)
        self._weights.reset()
        self.initial, self._pending, self._w_of = {}, None, None
        self._weights.ensure(network.tasks)
        return self

    def detach(self) -> None:
        self._w_of = None  # no reference to the network once training ends

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        w = self._weights.values()
        return {t: w[t] for t in loss}

    def weight_gradient(self, loss: Mapping[str, float], norms: Mapping[str, float]) -> torch.Tensor:
        """``∂L_grad/∂w`` from this step's losses and gradient norms ``||∇_W L_i||`` (0 for absent tasks)."""
        for t, v in loss.items():
            self.initial.setdefault(t, v)
        present = [t for t in self.tasks if t in loss]
        w = self._weights.values()
        g = {t: w[t] * norms[t] for t in present}
        mean_g = sum(g.values()) / len(present)
        rate = {t: loss[t] / self.initial[t] if self.initial[t] > 0 else 1.0 for t in present}
        mean_rate = sum(rate.values()) / len(present)
        grad = torch.zeros(len(self.tasks), dtype=torch.float64, device="cpu")
        for i, t in enumerate(self.tasks):
            if t in g:
                target = mean_g * (rate[t] / mean_rate) ** self.alpha if mean_rate > 0 else mean_g
                grad[i] = math.copysign(norms[t], g[t] - target) if g[t] != target else 0.0
        return grad

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        check_multitask(network)
        self._weights.ensure(network.tasks)
        loss = loss_values(losses, self.name)
        norms = {}
        if self._w_of is None or self._w_of[0] is not network:  # W per task, found once per network
            self._w_of = (network, {t: last_block_parameters(network, t) for t in network.tasks})
        for t in losses:
            params = self._w_of[1][t]
            grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True) if params else ()
            norms[t] = float(torch.nn.utils.get_total_norm([g for g in grads if g is not None])) if grads else 0.0
        bad = {t: v for t, v in norms.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(f"gradnorm: non-finite gradient for task(s) {sorted(bad)}; nothing was written")
        self._pending = self.weight_gradient(loss, norms)  # applied once the trainer has stepped
        return super().backward(losses, network)

    def after_step(self, recompute: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        if self._pending is None:
            return
        self._weights.step(self._pending)
        self._pending = None
        with torch.no_grad():
            self.weights.clamp_(min=1e-6)
            self.weights.mul_(len(self.tasks) / self.weights.sum())

    def state_dict(self) -> dict[str, Any]:
        state = self._weights.state_dict()
        return {**state, "initial": self.initial} if state else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._weights.load_state_dict({k: v for k, v in state.items() if k != "initial"})
        self.initial = dict(state.get("initial", {}))


FAMO_EPS = 1e-8
"""Added to every loss before its logarithm, as in the authors' code (``min_losses`` = 0)."""


def _log(value: float) -> float:
    """``log(value)``, NaN where it is undefined (value <= 0)."""
    return math.log(value) if value > 0 else math.nan


@register_balancer("famo")
class FAMO(LossWeighting):
    """FAMO (Liu et al., NeurIPS 2023): weights adapted every step so that all log losses fall alike, O(1) cost.

    Args:
        gamma: weight decay of the logits' Adam (the authors' regularisation coefficient γ, 0.01).
        lr: the logits' Adam learning rate (0.025).
        max_norm: clip the shared parameters' gradient to this norm (the authors' 1.0; 0: no clipping).

    Every loss must be positive (the method works on log losses).
    """

    name = "famo"
    scale_invariant = False  # the shared gradient is clipped to max_norm
    cost = "one backward pass, plus one forward pass for the weight update"

    def __init__(self, gamma: float = 0.01, lr: float = 0.025, max_norm: float = 1.0) -> None:
        self.gamma = check_number(self.name, "gamma", gamma)
        self.lr = check_number(self.name, "lr", lr)
        self.max_norm = check_number(self.name, "max_norm", max_norm)
        self._logits = LearnedTaskVector(self.name, 0.0, self.lr, weight_decay=self.gamma)
        self._before: dict[str, float] = {}

    @property
    def tasks(self) -> list[str]:
        return self._logits.tasks

    @property
    def logits(self) -> nn.Parameter | None:
        """ξ: the weights are softmax(ξ)."""
        return self._logits.value

    def options(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "lr": self.lr, "max_norm": self.max_norm}

    def _ensure(self, tasks: Sequence[str]) -> None:
        self._logits.ensure(tasks)

    def prepare(self, network: nn.Module) -> FAMO:
        """Start afresh (a resumed run's state is loaded after this)."""
        self._logits.reset()
        self._before = {}
        self._ensure(_tasks(network, []))
        return self

    def task_weights(self) -> dict[str, float]:
        """The current softmax of the logits, ``z``."""
        return dict(zip(self.tasks, torch.softmax(self.logits.detach(), 0).tolist()))

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        self._ensure(_tasks(network, list(loss)))
        bad = {t: v for t, v in loss.items() if v + FAMO_EPS <= 0}
        if bad:
            raise ValueError(f"famo: needs positive losses (it weighs log losses); task(s) {bad}")
        z = self.task_weights()
        q = {t: z[t] / (v + FAMO_EPS) for t, v in loss.items()}
        c = sum(q.values())
        self._before = dict(loss)
        return {t: q[t] / c for t in loss}  # z_t / (c L_t), written so that a lone task's weight is exactly 1

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        weights = super().backward(losses, network)
        if self.max_norm > 0 and callable(getattr(network, "parameter_groups", None)):
            shared = [p for users, ps in network.parameter_groups().items() if len(users) > 1 for p in ps]
            shared = [p for p in shared if p.grad is not None]
            if shared:
                torch.nn.utils.clip_grad_norm_(shared, self.max_norm)
        return weights

    def update(self, after: Mapping[str, float]) -> None:
        """One step of the logits from the losses before (this step's) and ``after`` the parameter update (none when
        a loss after it is not finite: the trainer's non-finite handling deals with the network)."""
        delta = torch.tensor(
            [
                _log(self._before[t] + FAMO_EPS) - _log(after[t] + FAMO_EPS)
                if t in self._before and t in after
                else 0.0
                for t in self.tasks
            ],
            dtype=torch.float64,
            device=self.logits.device,
        )
        if not torch.isfinite(delta).all():  # a loss went non-finite after the step: keep the logits finite
            return
        z = torch.softmax(self.logits.detach(), 0)
        self._logits.step(z * (delta - z @ delta))  # J_softmax(ξ)ᵀ δ, the authors' autograd.grad(softmax(w), w, δ)

    def after_step(self, recompute: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        if self._before:
            self.update({t: float(v.detach()) for t, v in recompute().items()})
            self._before = {}

    def state_dict(self) -> dict[str, Any]:
        return self._logits.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._logits.load_state_dict(state)


__all__ = [
    "DWA",
    "FAMO",
    "FAMO_EPS",
    "GradNorm",
    "LearnedTaskVector",
    "RLW",
    "LossWeighting",
    "StaticWeights",
    "UncertaintyWeighting",
    "last_block_parameters",
    "simplex_grid",
]
