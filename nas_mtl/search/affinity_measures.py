"""Task-affinity measures: each gives T x T task-task scores (higher = tasks go better together).

- Lookahead inter-task affinity (Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS 2021, Eq. 3): how a step on task i's loss changes task j's loss.
- Gradient cosine similarity on the shared parameters (as in Yu et al., "Gradient Surgery for
  Multi-Task Learning", NeurIPS 2020, which uses it to detect conflicting gradients).
- Layer-wise representation similarity between single-task networks: RSA (Vandenhende et al.,
  "Branched Multi-Task Networks: Deciding What Layers To Share", BMVC 2020, Sec. 3.2) or linear CKA
  (Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019, Eq. 4).

The training-time measures are recorded by :class:`AffinityRecorder`, a step hook of
:func:`nas_mtl.train.train`; the representation measures by :func:`layer_features` + :func:`layer_similarity`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..network import MultiTaskNetwork
from ..tasks import TaskSpec
from ..train import StepContext

TRAINING_MEASURES = ("lookahead", "gradcos")
"""Measures recorded during one hard-sharing training run (both at once, from the same gradients)."""
REPRESENTATION_MEASURES = ("rsa", "cka")
"""Measures computed layer by layer from trained single-task networks."""


# ---------------------------------------------------------------------- training-time measures
def cosine_matrix(vectors: Tensor) -> Tensor:
    """(T, T) cosine similarities between the rows of ``vectors`` (T, P); a zero row gives 0."""
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def lookahead_affinity(
    losses_at: Callable[[Mapping[str, Tensor]], Tensor],
    shared: Mapping[str, Tensor],
    grads: Sequence[Sequence[Tensor]],
    base_losses: Tensor,
    lr: float,
) -> Tensor:
    """TAG lookahead affinity (Fifty et al. 2021, Eq. 3) on one batch:
    ``Z[i, j] = 1 - L_j(θ_s - lr ∇_{θ_s} L_i) / L_j(θ_s)``.

    The lookahead is a plain SGD step of size ``lr`` on the shared parameters only (task-specific
    parameters stay put), as in the paper's Eq. 2; positive ``Z[i, j]``: i's step lowers j's loss.

    Args:
        losses_at: maps replacement values for the shared parameters (name -> tensor) to the (T,)
            task losses on the same batch (e.g. through ``torch.func.functional_call``).
        shared: the shared parameters by name (their current values θ_s).
        grads: ``grads[i]`` = ∇_{θ_s} L_i, one tensor per entry of ``shared`` (same order).
        base_losses: (T,) task losses at θ_s.
        lr: lookahead step size η.
    """
    names = list(shared)
    rows = []
    with torch.no_grad():
        for task_grads in grads:
            stepped = {n: shared[n] - lr * g for n, g in zip(names, task_grads, strict=True)}
            rows.append(1 - losses_at(stepped) / base_losses)
    return torch.stack(rows)


def shared_parameters(network: MultiTaskNetwork) -> dict[str, nn.Parameter]:
    """The parameters every task of ``network`` uses (the trunk of hard sharing), by name."""
    everyone = frozenset(network.tasks)
    group = {id(p) for p in network.parameter_groups().get(everyone, [])}
    shared = {n: p for n, p in network.named_parameters() if id(p) in group}
    if not shared:
        raise ValueError(
            f"affinity: network {network.graph} has no parameters shared by all tasks {list(network.tasks)}; "
            "lookahead and gradient-cosine affinity are measured on a hard-sharing trunk"
        )
    return shared


class AffinityRecorder:
    """Step hook recording lookahead affinity and gradient cosine every ``every`` steps of training.

    Per measured step: T gradient passes (``torch.autograd.grad``, graph retained) for the per-task
    gradients of the shared parameters, which give both measures, plus T forward passes for the
    lookahead losses (``functional_call`` with the stepped shared parameters and copies of the
    buffers, so BatchNorm running statistics are not disturbed). The matrices are averaged over
    measured steps (TAG averages over training); per-epoch averages are kept for plots.

    Args:
        specs: the network's task specs (their ``loss``), in network task order.
        lr: lookahead step size (TAG uses the training learning rate).
        every: measure every ``every``-th step (counted over the whole run).
    """

    def __init__(self, specs: Sequence[TaskSpec], lr: float, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"affinity: every must be a positive integer, got {every!r}")
        if not lr > 0:
            raise ValueError(f"affinity: lookahead lr must be > 0, got {lr!r}")
        self.specs = tuple(specs)
        self.lr = float(lr)
        self.every = every
        self.calls = 0
        self.unlabelled = 0
        """Measured steps passed over because a task had no label in the batch."""
        self.seconds = 0.0
        self._epochs: dict[int, dict[str, list[Tensor]]] = {}

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def __call__(self, ctx: StepContext) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        if any(t not in ctx.losses for t in self.tasks):  # a task without labels in this batch: no pairwise measure
            self.unlabelled += 1
            return
        t0 = time.perf_counter()
        network, tasks = ctx.network, self.tasks
        shared = shared_parameters(network)
        params = list(shared.values())
        grads = [torch.autograd.grad(ctx.losses[t], params, retain_graph=True) for t in tasks]
        flat = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads])
        buffers = dict(network.named_buffers())
        targets = {s.name: ctx.targets[s.name].to(ctx.x.device) for s in self.specs}

        def losses_at(values: Mapping[str, Tensor]) -> Tensor:
            out = functional_call(network, {**{n: b.clone() for n, b in buffers.items()}, **values}, (ctx.x,))
            return torch.stack([s.loss(out[s.name], targets[s.name]) for s in self.specs])

        base = torch.stack([ctx.losses[t].detach() for t in tasks])
        epoch = self._epochs.setdefault(ctx.epoch, {m: [] for m in TRAINING_MEASURES})
        epoch["lookahead"].append(lookahead_affinity(losses_at, shared, grads, base, self.lr).cpu())
        epoch["gradcos"].append(cosine_matrix(flat.detach()).cpu())
        self.seconds += time.perf_counter() - t0

    @property
    def steps(self) -> int:
        """Number of measured steps so far."""
        return sum(len(e["lookahead"]) for e in self._epochs.values())

    def matrix(self, measure: str) -> np.ndarray:
        """(T, T) average of ``measure`` over every measured step."""
        values = [m for e in self._epochs.values() for m in e[_check_training_measure(measure)]]
        if not values:
            raise ValueError("affinity: no step was measured (no training step ran; is the run already finished?)")
        return torch.stack(values).mean(0).double().numpy()

    def per_epoch(self, measure: str) -> np.ndarray:
        """(E, T, T): the average of ``measure`` within each epoch that had measured steps."""
        name = _check_training_measure(measure)
        return np.stack([torch.stack(e[name]).mean(0).double().numpy() for e in self._epochs.values() if e[name]])


def _check_training_measure(measure: str) -> str:
    if measure not in TRAINING_MEASURES:
        raise ValueError(f"affinity: measure must be one of {list(TRAINING_MEASURES)}, got {measure!r}")
    return measure


# ---------------------------------------------------------------------- representation measures
@torch.no_grad()
def layer_features(network: MultiTaskNetwork, x: Tensor) -> list[Tensor]:
    """Per-layer block outputs of a single-path network on ``x``, each flattened to (K, D) (eval mode)."""
    if network.graph.num_tasks != 1:
        raise ValueError(f"layer features: expected a single-task network, got graph {network.graph}")
    feats: dict[int, Tensor] = {}
    handles = [
        row[0].register_forward_hook(lambda _m, _i, out, layer=layer: feats.__setitem__(layer, out.flatten(1)))
        for layer, row in enumerate(network.blocks)
    ]
    was_training = network.training
    network.eval()
    try:
        network(x)
    finally:
        network.train(was_training)
        for h in handles:
            h.remove()
    return [feats[layer] for layer in range(len(network.blocks))]


def rdm(features: Tensor) -> np.ndarray:
    """Representation dissimilarity matrix (K, K): 1 - Pearson correlation between samples' features
    (Kriegeskorte et al. 2008; Vandenhende et al. 2020, Sec. 3.2)."""
    return 1.0 - np.corrcoef(features.double().cpu().numpy())


def rsa_similarity(rdm_a: np.ndarray, rdm_b: np.ndarray) -> float:
    """Spearman rank correlation between the upper triangles of two RDMs (Vandenhende et al. 2020)."""
    upper = np.triu_indices_from(rdm_a, k=1)
    from scipy.stats import rankdata  # here: scipy.stats takes half a second to import

    a, b = rankdata(rdm_a[upper]), rankdata(rdm_b[upper])
    return float(np.corrcoef(a, b)[0, 1])


def centered_gram(features: Tensor) -> np.ndarray:
    """Doubly centred linear Gram matrix H X Xᵀ H of (K, D) features (the kernel form of CKA)."""
    x = features.double().cpu().numpy()
    x = x - x.mean(0, keepdims=True)
    return x @ x.T


def linear_cka(gram_a: np.ndarray, gram_b: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019, Eq. 4) from centred Gram matrices:
    HSIC(a, b) / sqrt(HSIC(a, a) HSIC(b, b)); invariant to orthogonal maps and isotropic scaling."""
    hsic = float((gram_a * gram_b).sum())
    norm = float(np.sqrt((gram_a * gram_a).sum() * (gram_b * gram_b).sum()))
    return hsic / norm if norm > 0 else 0.0


_REPRESENTATIONS: dict[str, tuple[Callable[[Tensor], np.ndarray], Callable[[np.ndarray, np.ndarray], float]]] = {
    "rsa": (rdm, rsa_similarity),
    "cka": (centered_gram, linear_cka),
}


def layer_similarity(features: Sequence[Sequence[Tensor]], measure: str) -> np.ndarray:
    """(L, T, T) task-task similarity per layer from ``features[t][l]`` (K, D_l) of T single-task networks.

    Args:
        measure: "rsa" (Spearman between RDMs) or "cka" (linear CKA).
    """
    if measure not in _REPRESENTATIONS:
        raise ValueError(f"affinity: representation measure must be one of {list(_REPRESENTATIONS)}, got {measure!r}")
    summarize, compare = _REPRESENTATIONS[measure]
    num_tasks, num_layers = len(features), len(features[0])
    if any(len(f) != num_layers for f in features):
        raise ValueError(f"affinity: every task needs features for all {num_layers} layers")
    out = np.ones((num_layers, num_tasks, num_tasks))
    for layer in range(num_layers):
        summaries = [summarize(features[t][layer]) for t in range(num_tasks)]
        for i in range(num_tasks):
            for j in range(i + 1, num_tasks):
                out[layer, i, j] = out[layer, j, i] = compare(summaries[i], summaries[j])
    return out


__all__ = [
    "AffinityRecorder",
    "REPRESENTATION_MEASURES",
    "TRAINING_MEASURES",
    "centered_gram",
    "cosine_matrix",
    "layer_features",
    "layer_similarity",
    "linear_cka",
    "lookahead_affinity",
    "rdm",
    "rsa_similarity",
    "shared_parameters",
]
