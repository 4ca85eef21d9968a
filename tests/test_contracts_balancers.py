"""Contracts every registered balancer keeps, whatever its method: its spec rebuilds it (options included), its
``state_dict`` resumes a run bitwise, and its flags say what it does -- ``one_task_is_equal``: on a single-task
network it trains exactly as equal weighting; ``shared_only``: on a graph that shares no parameter it does too,
and without the flag it does not.

All on a tiny hand-written network (two 1x1-convolution blocks with tanh on two-channel 1 x 1 "images", a linear
head per task, no BatchNorm), trained the way :class:`nas_mtl.train.Trainer` does it: ``prepare``, then per step
``backward``, the optimiser's step and ``after_step``, and ``end_epoch`` every :data:`STEPS_PER_EPOCH` steps. The
comparisons are bitwise: the same float operations in the same order must give the same bits.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from nas_mtl.backbones.base import Backbone, BlockInfo
from nas_mtl.balancing import create_balancer
from nas_mtl.balancing.base import BALANCERS, Balancer
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork

TASKS = ("a", "b", "c")
STEPS_PER_EPOCH = 2
STEPS = 8
"""Four epochs: DWA's weights leave 1 from the third epoch on, the learned weights (uncertainty, FAMO, GradNorm)
move after every step."""

OPTIONS: dict[str, dict[str, Any]] = {
    "aligned-mtl": {"scale": "median"},
    "aligned-mtl-ub": {"scale": "rmse"},
    "cagrad": {"c": 0.25, "rescale": 2},
    "dwa": {"temperature": 3.5},
    "equal": {},
    "famo": {"gamma": 0.02, "lr": 0.05, "max_norm": 0.5},
    "gls": {"eps": 1e-6},
    "gradnorm": {"alpha": 0.75, "lr": 0.05},
    "imtl-g": {"mode": "ub"},
    "imtl-g-ub": {},
    "mgda": {"normalization": "l2"},
    "mgda-ub": {"normalization": "loss+"},
    "nash-mtl": {"max_norm": 0.5},
    "pcgrad": {"seed": 3},
    "rlw": {"seed": 4},
    "static": {"a": 2.0},  # a task of every network below
    "uncertainty": {"lr": 0.05, "init": -0.5},
    "upgrad": {},
}
"""Options other than the defaults, checked beside the defaults (a balancer without options here is checked with its
defaults only). ``mode`` is not an option of the spec: ``imtl-g`` with mode ``ub`` is ``imtl-g-ub``."""

DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
"""The flag tests run in both: float32 trains, and float64 shows a weight that is 1 only after rounding to float32
(FAMO's z / (c L) with one task was 1 - 2^-53 for some losses)."""

NAMES = BALANCERS.names()
VARIANTS = [pytest.param(name, {}, id=name) for name in NAMES]
VARIANTS += [pytest.param(name, OPTIONS[name], id=f"{name}-options") for name in NAMES if OPTIONS.get(name)]


def _blocks() -> list[nn.Module]:
    return [nn.Sequential(nn.Conv2d(2, 4, 1), nn.Tanh()), nn.Sequential(nn.Conv2d(4, 4, 1), nn.Tanh())]


BACKBONE = Backbone("hand", [BlockInfo("l0", False), BlockInfo("l1", False)], (2, 1, 1), _blocks)


def _network(
    tasks: Sequence[str], graph: str = "hard_sharing", seed: int = 0, dtype: torch.dtype = torch.float32
) -> MultiTaskNetwork:
    """The hand-written network on ``tasks``, laid out by ``SharingGraph.<graph>`` (hard sharing or independent)."""
    torch.manual_seed(seed)
    heads = {t: nn.Sequential(nn.Flatten(), nn.Linear(4, 1)) for t in tasks}
    return MultiTaskNetwork(getattr(SharingGraph, graph)(tasks, BACKBONE.layer_names), BACKBONE, heads).to(dtype)


def _batch(step: int, tasks: Sequence[str], dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Step ``step``'s batch: the tasks read one feature with alternating signs and growing scales (they conflict,
    so gradient-combining methods act), plus noise (every loss stays positive, as FAMO needs)."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 2, 1, 1, generator=g)
    feature = x[:, 0, 0] - x[:, 1, 0]
    noise = {t: 0.1 * torch.randn(8, 1, generator=g) for t in TASKS}
    y = {t: (-1) ** i * (i + 1) * feature + noise[t] for i, t in enumerate(TASKS) if t in tasks}
    return x.to(dtype), {t: v.to(dtype) for t, v in y.items()}


def _losses(network: nn.Module, x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = network(x)
    return {t: (out[t] - y[t]).square().mean() for t in y}


class _Run:
    """A network, its optimiser (SGD with momentum: state to resume) and a prepared balancer, trained step by step."""

    def __init__(self, network: MultiTaskNetwork, balancer: Balancer) -> None:
        self.network, self.balancer = network, balancer.prepare(network)
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
        self.step = 0
        self.sums: dict[str, float] = {}

    def train(self, steps: int) -> list[tuple[dict[str, float], list[torch.Tensor | None]]]:
        """``steps`` more steps; per step the balancer's reported weights and each parameter's gradient."""
        seen = []
        for _ in range(steps):
            x, y = _batch(self.step, self.network.tasks, next(self.network.parameters()).dtype)
            losses = _losses(self.network, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            weights = self.balancer.backward(losses, self.network)
            seen.append((weights, [None if p.grad is None else p.grad.clone() for p in self.network.parameters()]))
            self.optimizer.step()
            self.balancer.after_step(lambda x=x, y=y: self._recompute(x, y))
            for t, v in losses.items():
                self.sums[t] = self.sums.get(t, 0.0) + float(v.detach())
            self.step += 1
            if self.step % STEPS_PER_EPOCH == 0:
                self.balancer.end_epoch({t: v / STEPS_PER_EPOCH for t, v in self.sums.items()})
                self.sums = {}
        return seen

    def _recompute(self, x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return _losses(self.network, x, y)

    def checkpoint(self) -> bytes:
        """What the trainer's checkpoint keeps of the run, through ``torch.save`` (read back ``weights_only``)."""
        buffer = io.BytesIO()
        state = {"model": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}
        torch.save({**state, "balancer": self.balancer.state_dict(), "step": self.step}, buffer)
        return buffer.getvalue()

    @classmethod
    def resume(cls, checkpoint: bytes, network: MultiTaskNetwork, spec: str) -> _Run:
        """A fresh balancer built from ``spec``, prepared, then given the saved state (the trainer's order)."""
        state = torch.load(io.BytesIO(checkpoint), weights_only=True)
        network.load_state_dict(state["model"])
        run = cls(network, create_balancer(spec))
        run.optimizer.load_state_dict(state["optimizer"])
        run.balancer.load_state_dict(state["balancer"])
        run.step = state["step"]
        return run


def _same(a: list, b: list) -> bool:
    """Bitwise equality of two runs' per-step weights and gradients."""
    if len(a) != len(b):
        return False
    for (wa, ga), (wb, gb) in zip(a, b):
        if wa != wb or len(ga) != len(gb):
            return False
        if any((x is None) != (y is None) or (x is not None and not torch.equal(x, y)) for x, y in zip(ga, gb)):
            return False
    return True


def _gradients(seen: list) -> list:
    """The gradients of :meth:`_Run.train`'s record, without the weights (which each method reports its own way)."""
    return [({}, grads) for _, grads in seen]


def _trains_as_equal(
    name: str, options: Mapping[str, Any], tasks: Sequence[str], graph: str, dtype: torch.dtype
) -> bool:
    """Whether the balancer's gradients equal equal weighting's, bitwise, at every one of :data:`STEPS` steps."""
    balanced = _Run(_network(tasks, graph, dtype=dtype), create_balancer(name, **options)).train(STEPS)
    equal = _Run(_network(tasks, graph, dtype=dtype), create_balancer("equal")).train(STEPS)
    return _same(_gradients(balanced), _gradients(equal))


# ---------------------------------------------------------------------- spec
def test_the_options_table_names_only_registered_balancers():
    """Every registered balancer runs the contracts with its defaults (a new one needs no line here); the table
    adds non-default options, so a renamed balancer must not leave its entry behind unchecked."""
    assert set(OPTIONS) <= set(NAMES)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_the_spec_rebuilds_the_balancer_options_included(name, options):
    balancer = create_balancer(name, **options)
    again = create_balancer(balancer.spec)
    assert again.spec == balancer.spec and type(again) is type(balancer)
    assert again.options() == balancer.options()
    assert create_balancer(again.spec).spec == balancer.spec  # a fixed point
    given = {k: v for k, v in options.items() if k != "mode"}
    assert {k: again.options()[k] for k in given} == given  # options not dropped on the way
    mode = options.get("mode")
    if mode is not None:
        assert balancer.spec.split(":")[0] == f"{name}-{mode}"


@pytest.mark.parametrize("name", NAMES)
def test_the_spec_names_every_option_of_the_factory(name):
    """Each keyword of the registered factory is in :meth:`Balancer.options` (so in the spec and the checkpoint's
    record), except ``mode``, which the name carries, and free ``**weights`` (static: the task names)."""
    balancer = create_balancer(name)
    for param in BALANCERS.signature(name).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD or param.name == "mode":
            continue
        assert param.name in balancer.options(), (name, param.name, balancer.spec)


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_state_dict_resumes_bitwise(name, options):
    """k = 4 steps (two epochs, the trainer checkpoints at epoch ends), then m = 4 more: in one run, and in a fresh
    network, optimiser and balancer restored from the checkpoint. The same weights and gradients at every step
    and the same parameters at the end, bitwise."""
    k, m = 4, 4
    balancer = create_balancer(name, **options)
    run = _Run(_network(TASKS), balancer)
    run.train(k)
    checkpoint = run.checkpoint()
    straight = run.train(m)
    resumed_run = _Run.resume(checkpoint, _network(TASKS, seed=99), balancer.spec)
    resumed = resumed_run.train(m)
    assert _same(straight, resumed), name
    for p, q in zip(run.network.parameters(), resumed_run.network.parameters()):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------- flags
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_one_task_is_equal_matches_behaviour(name, options, dtype):
    """On a single-task network: flagged, exactly equal weighting's gradients at every step; not flagged, some step
    differs -- except static weighting without weights (every weight 1), for which the flag is conservative: its
    weights are options, so the flag cannot know them."""
    balancer = create_balancer(name, **options)
    same = _trains_as_equal(name, options, ["a"], "hard_sharing", dtype)
    if balancer.one_task_is_equal:
        assert same, f"{balancer.spec} is flagged one_task_is_equal but trains a single task otherwise"
    elif name == "static" and not options:
        assert same  # conservative flag (see the docstring)
    else:
        assert not same, f"{balancer.spec} trains a single task exactly as equal weighting: flag it one_task_is_equal"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_shared_only_matches_behaviour(name, options, dtype):
    """On independent networks (no parameter shared by two tasks): flagged ``shared_only``, exactly equal
    weighting's gradients at every step; not flagged, some step differs -- except static weighting without weights
    (conservative, as above)."""
    balancer = create_balancer(name, **options)
    same = _trains_as_equal(name, options, TASKS, "independent", dtype)
    if balancer.shared_only:
        assert same, f"{balancer.spec} is flagged shared_only but changes the update of unshared parameters"
    elif name == "static" and not options:
        assert same  # conservative flag (see test_one_task_is_equal_matches_behaviour)
    else:
        assert not same, f"{balancer.spec} leaves unshared parameters as equal weighting does: flag it shared_only"


def test_the_hand_written_network_shares_as_intended():
    """The flag tests' premises: the independent graph has no group of two or more tasks, hard sharing has."""
    assert all(len(users) == 1 for users in _network(TASKS, "independent").parameter_groups())
    assert frozenset(TASKS) in _network(TASKS).parameter_groups()
    assert list(_network(["a"]).parameter_groups()) == [frozenset({"a"})]
