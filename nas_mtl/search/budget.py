"""Search budgets in hard-sharing trainings: a deterministic compute model, the same on every machine.

One unit is one training of hard sharing as the user will train the answer (``epochs`` epochs on the whole
training set, validated after each). Any training's cost is its per-sample MACs times the samples it passes
over, relative to that unit: a training step's forward and backward pass cost about three forward passes
(Kaplan et al. 2020's 6N FLOPs per token for training vs 2N for inference), a validation pass one, so

    cost(graph, epochs, n) = MACs(graph) * epochs * (3 n + n_val) / (MACs(hard) * unit_epochs * (3 N + n_val))

with ``n`` the samples trained on (a proxy's subset) and ``N`` the training set. Wall time on two CPU cores
follows it within the machines' noise (benchmarks/search_payoff.py reports both); a budget in these units means
the same search on any machine, which a budget in seconds does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..data import MultiTaskData
from ..graph import SharingGraph
from ..network import MultiTaskNetwork
from ..space import SearchSpace
from .proxy import ProxyConfig, graph_key

TRAIN_PASSES = 3.0
"""Cost of one training sample (forward + backward) in forward passes."""


@dataclass
class CostModel:
    """Costs of trainings on ``data`` in ``space`` in units of one hard-sharing training of ``unit_epochs``."""

    data: MultiTaskData
    space: SearchSpace
    unit_epochs: int
    _macs: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.unit_epochs, bool) or not isinstance(self.unit_epochs, int) or self.unit_epochs < 1:
            raise ValueError(f"cost model: unit_epochs must be an integer >= 1, got {self.unit_epochs!r}")

    def macs(self, graph: SharingGraph) -> int:
        """Per-sample MACs of ``graph``'s network (heads included), cached by tree."""
        key = f"{graph_key(graph)}|{','.join(graph.tasks)}"
        if key not in self._macs:
            network = MultiTaskNetwork.from_tasks(graph, self.space.backbone, self.data.tasks)
            self._macs[key] = int(network.cost().macs)
        return self._macs[key]

    def training(self, graph: SharingGraph, epochs: float, samples: int | None = None) -> float:
        """Units spent training ``graph`` for ``epochs`` on ``samples`` training samples (default: all)."""
        n_train, n_val = len(self.data.train), len(self.data.val)
        n = n_train if samples is None else samples
        hard = self.space.hard_sharing(self.data.task_names)
        per_epoch = TRAIN_PASSES * n + n_val
        unit = self.macs(hard) * self.unit_epochs * (TRAIN_PASSES * n_train + n_val)
        return self.macs(graph) * epochs * per_epoch / unit

    def singles(self, epochs: float, samples: int | None = None, tasks: Sequence[str] | None = None) -> float:
        """Units spent training one network per task (each task alone), as Δm's references are."""
        names = self.data.task_names if tasks is None else tasks
        return sum(
            self.training(SharingGraph.hard_sharing([t], self.space.layers, self.space.skippable), epochs, samples)
            for t in names
        )

    def proxy_setup(self, config: ProxyConfig) -> float:
        """Units :meth:`~.proxy.Proxy.prepare` spends: the warm start and the references (none recorded)."""
        hard = self.space.hard_sharing(self.data.task_names)
        if config.inherit:
            warm = self.training(hard, config.warmstart.epochs)
            return warm + (self.singles(config.warmstart.epochs) if config.reference == "single" else 0.0)
        n = subset_size(self.data, config)
        if config.reference == "single":
            return self.singles(config.finetune.epochs, n)
        return self.training(hard, config.finetune.epochs, n)

    def proxy_trial(self, graph: SharingGraph, config: ProxyConfig) -> float:
        """Units one proxy score of ``graph`` spends (all its fine-tuning epochs: a pruned trial counts whole)."""
        return self.training(graph, config.finetune.epochs, subset_size(self.data, config))


def subset_size(data: MultiTaskData, config: ProxyConfig) -> int:
    """Training samples the proxy trains each tree on (``config.subset`` of the training set, as ``_subset``)."""
    return round(config.subset * len(data.train))


__all__ = ["TRAIN_PASSES", "CostModel", "subset_size"]
