"""AdaShare's policy network: :class:`AdaShareSupernet` (the shared executor under Gumbel-softmax gates, and the
policy logits) and the regularisers of the policy loss (Sun et al. 2020, Sec. 3). See
:mod:`nas_mtl.search.adashare`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone
from ..environment import built_on_cpu
from ..graph import SharingGraph
from ..network import Gates, MultiTaskNetwork
from ..tasks import TaskSpec
from .adashare_config import AdaShareConfig

SELECT, SKIP = 0, 1
"""Columns of the policy logits (the reference's order: column 0 multiplies the block's output)."""


# ---------------------------------------------------------------------- regularisers
def depth_weights(num_blocks: int, device: torch.device | str = "cpu") -> Tensor:
    """Sharing weights (S − l)/S, l = 0..S−1 from the input side (the paper's (L − l)/L): early blocks weigh most."""
    return (num_blocks - torch.arange(num_blocks, dtype=torch.float32, device=device)) / num_blocks


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
    loss = loss + config.sharing * sharing_loss(z, depth_weights(num_blocks, z.device)[num_blocks - active :])
    return loss + 0.5 * config.policy_weight_decay * z.square().sum()


# ---------------------------------------------------------------------- supernet
class AdaShareSupernet(nn.Module):
    """The search's network: a :class:`~nas_mtl.network.MultiTaskNetwork` with one copy of every backbone block
    (hard sharing), run under gates (``network(x, gates=...)``), and the policy logits (S skippable blocks, T
    tasks, 2).

    A task's activation after block l is ``h + u[l, t] (block_l(h) − h)``: the block when u = 1, the skip
    when u = 0 (the reference's ``fx * p_select + residual * p_skip``).
    """

    @built_on_cpu
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
        noise = -torch.empty(logits.shape, device="cpu").exponential_(generator=generator).log().to(logits.device)
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


__all__ = [
    "SELECT",
    "SKIP",
    "AdaShareSupernet",
    "depth_weights",
    "policy_regularizer",
    "sharing_loss",
    "sparsity_loss",
]
