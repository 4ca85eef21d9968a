"""The balancer interface: turn per-task losses into parameter gradients."""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import nn

from ..registry import Registry


class Balancer(ABC):
    """Combines task losses into ``.grad`` on the network's parameters (one call per step).

    Subclasses implement :meth:`backward`; the trainer calls :meth:`prepare` once before the first
    forward pass and :meth:`detach` after the last step, zeroes gradients before each
    :meth:`backward`, steps the optimiser after it and then calls :meth:`after_step`; at the end of each
    epoch it calls :meth:`end_epoch` with the epoch's mean task losses. Balancers may use
    ``network.parameter_groups()`` to treat shared parameters (several tasks) differently from
    task-specific ones. A balancer that finds a non-finite gradient raises ``FloatingPointError``
    (the trainer's ``on_nonfinite`` policy decides what happens then).
    """

    name: str = ""
    shared_only: bool = False
    """True when only the update of parameters shared by several tasks depends on the method (task-specific
    parameters get their own task's gradient, as with equal weights): on a graph sharing nothing it is
    equal weighting. Loss-weighting methods (uncertainty, DWA) leave it False."""
    one_task_is_equal: bool = True
    """True when, on a network with a single task, the method trains exactly as equal weighting (its weight is
    then always 1: DWA, RLW, FAMO and every shared-only method); False for uncertainty weighting, whose learned
    weight scales even a lone task's gradient."""
    scale_invariant: bool = True
    """True when scaling every task's gradient by one factor scales the update by that factor and leaves the
    method's state alone: fp16's gradient scale is then undone exactly after the step (checked for every
    registered method in tests/test_precision.py). False where the method clips or normalises the combined
    gradient (Nash-MTL, FAMO): fp16 is refused for it."""
    cost: str = "one backward pass"
    """The method's cost class per training step (``nas-mtl list`` shows it beside the method's paper)."""

    def options(self) -> dict[str, Any]:
        """The keyword options that, with :attr:`name`, rebuild this balancer (part of :attr:`spec`)."""
        return {}

    @property
    def spec(self) -> str:
        """``"NAME[:KEY=VALUE,...]"``: the method and all its options (``create_balancer(spec)`` rebuilds a
        registered one); checkpoints record it so that a run is not resumed with another balancer."""
        options = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(self.options().items()))
        name = self.name or type(self).__name__
        return f"{name}:{options}" if options else name

    def prepare(self, network: nn.Module) -> Balancer:
        """Attach to ``network`` before its first forward pass (e.g. hooks); returns ``self``."""
        return self

    def detach(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Undo :meth:`prepare` (remove hooks); the balancer can be prepared again."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep so a resumed run continues exactly (e.g. a random generator)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027  (optional, not abstract)
        """Restore :meth:`state_dict` (called after :meth:`prepare` when training resumes)."""

    @abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        """Populate gradients from ``losses`` (``{task: scalar}``); return the task weights used."""

    def after_step(self, recompute: Callable[[], Mapping[str, torch.Tensor]]) -> None:  # noqa: B027  (optional)
        """Called once the optimiser has applied this step's gradients (not for a skipped step).

        Args:
            recompute: the same batch's task losses under the updated weights (no gradient; one forward pass,
                so only a method that needs them calls it, e.g. FAMO's weight update).
        """

    def end_epoch(self, train_loss: Mapping[str, float]) -> None:  # noqa: B027  (optional, not abstract)
        """Called after each training epoch with each task's mean training loss (tasks labelled in the epoch)."""


class SeededGenerator:
    """A balancer's own ``torch.Generator``: seeded at first use with ``seed``, or with ``torch.initial_seed()``
    (the run's seed when torch was seeded) when None; its state goes into checkpoints."""

    def __init__(self, seed: int | None, balancer: str) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"{balancer}: seed must be an integer or None, got {seed!r}")
        self.seed = seed
        self._generator: torch.Generator | None = None

    def get(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed() if self.seed is None else self.seed)
        return self._generator

    def reset(self) -> None:
        """The next :meth:`get` seeds a fresh generator."""
        self._generator = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self._generator is None else {"generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "generator" in state:
            self._generator = torch.Generator()
            self._generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto a GPU moved it there


def check_number(balancer: str, key: str, value: Any, low: float = 0.0) -> float:
    """``value`` as a float; ValueError naming the balancer and option unless it is a finite number >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
        raise ValueError(f"{balancer}: {key} must be a number >= {low}, got {value!r}")
    return float(value)


BALANCERS: Registry[Balancer] = Registry("balancer", group="nas_mtl.balancers")
register_balancer = BALANCERS.register
list_balancers = BALANCERS.names


def parse_key_value(item: str) -> tuple[str, Any] | None:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, VALUE read as JSON where it parses (``3`` -> 3), else kept as a
    string (``loss+``); both stripped. None when there is no ``=`` or the key is empty (callers raise,
    naming their option)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        return None
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw.strip()


def _format_value(value: Any) -> str:
    """``value`` as :func:`parse_key_value` reads it back: a string as is unless it would parse as JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


def parse_balancer(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a balancer spec ``"NAME"`` or ``"NAME:KEY=VALUE[,KEY=VALUE...]"`` into name and options.

    Values are read as JSON where they parse (``seed=3`` -> 3), else kept as strings
    (``normalization=loss+``), e.g. ``"mgda:normalization=l2"``, ``"pcgrad:seed=1"``. NAME may be a reference
    to the user's factory, ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``, options after a second colon
    (``"my_pkg.balancers:make:beta=0.5"``).
    """
    if not isinstance(spec, str):
        raise TypeError(f"balancer: expected a name such as 'mgda' or 'mgda:normalization=l2', got {spec!r}")
    name, sep, rest = spec.partition(":")
    function, _, options_text = rest.partition(":")
    if sep and name.strip() not in BALANCERS and re.fullmatch(r"[A-Za-z_]\w*", function.strip()):
        name, rest = f"{name.strip()}:{function.strip()}", options_text  # a reference, then its options
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        pair = parse_key_value(item)
        if pair is None:
            raise ValueError(f"balancer {spec!r}: expected KEY=VALUE, got {item!r} (form: NAME:KEY=VALUE,...)")
        key, value = pair
        if key in options:
            raise ValueError(f"balancer {spec!r}: option {key!r} given twice")
        options[key] = value
    return name.strip(), options


def check_stored_balancer(spec: object, source: str, trusted: Collection[str] = ()) -> str:
    """A balancer spec read back from data (a storage record): its name must be registered (or an installed
    entry point), or a code reference in ``trusted`` (see :meth:`nas_mtl.registry.Registry.check_stored`)."""
    if not isinstance(spec, str):
        raise ValueError(f"{source}: expected a balancer spec such as 'mgda', got {spec!r}")
    try:
        name = parse_balancer(spec)[0]
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    BALANCERS.check_stored(name, source, trusted)
    return spec


def create_balancer(spec: str, **kwargs: Any) -> Balancer:
    """Build a balancer from its name or spec (see :func:`parse_balancer`) plus keyword options.

    Unknown names raise ``ValueError`` listing the known ones; unknown options ``TypeError`` listing
    the parameters; invalid values the balancer's own ``ValueError``.
    """
    name, options = parse_balancer(spec)
    both = sorted(set(options) & set(kwargs))
    if both:
        raise ValueError(f"balancer {spec!r}: option(s) {both} given both in the spec and as keywords")
    return BALANCERS.create(name, **options, **kwargs)


__all__ = [
    "BALANCERS",
    "Balancer",
    "SeededGenerator",
    "check_number",
    "check_stored_balancer",
    "create_balancer",
    "list_balancers",
    "parse_balancer",
    "parse_key_value",
    "register_balancer",
]
