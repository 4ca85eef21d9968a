"""What several test files build alike: toy data (one-channel 8 x 8 images, labelled for the two tasks of
:func:`toy_split` or with a test's own targets), tiny networks and search spaces (``resnet_small`` of width 4-8),
and the options of searches of a few batches. The same seeds and values as the copies they replaced, so no test's
numbers changed by using them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from nas_mtl.backbones import create_backbone
from nas_mtl.backbones.base import Backbone
from nas_mtl.data import MultiTaskData, TensorMultiTaskDataset
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.soft import Coupling
from nas_mtl.space import SearchSpace
from nas_mtl.tasks import ClassificationTask, RegressionTask
from nas_mtl.train import seed_everything

TOY_SHAPE = (1, 8, 8)
"""(C, H, W) of the toy images."""
TINY_ADASHARE = {
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 16,
    "weight_steps": 2,
    "policy_steps": 2,
    "curriculum_speed": 1,
}
"""AdaShare options (study-file keys) for a search of a few batches: one warm-up epoch, one of policy learning."""
TINY_PROXY = {"inherit": True, "subset": 1.0, "warmstart_epochs": 1, "proxy_epochs": 1, "batch_size": 32}
TINY_PROXY |= {"reference": "hard"}
"""Proxy options (branch and exhaustive search) for scores of one epoch each, fine-tuned from one warm start."""

GraphFactory = Callable[[Sequence[str], Sequence[str]], SharingGraph]


def tiny_backbone(widths: Sequence[int] = (4, 8), depths: Sequence[int] = (1, 1)) -> Backbone:
    """``resnet_small`` on the toy images; the defaults give the blocks stem, s0.b0, s1.b0."""
    return create_backbone(
        "resnet_small", in_chans=TOY_SHAPE[0], input_size=TOY_SHAPE[1:], widths=tuple(widths), depths=tuple(depths)
    )


def tiny_space(widths: Sequence[int] = (4, 8), depths: Sequence[int] = (1, 1), name: str = "toy") -> SearchSpace:
    """A search space over :func:`tiny_backbone`: every block branchable, the backbone's skippable ones skippable."""
    bb = tiny_backbone(widths, depths)
    return SearchSpace(name, bb, bb.layer_names, bb.skippable)


def tiny_network(
    tasks: Sequence,
    graph: SharingGraph | GraphFactory = SharingGraph.hard_sharing,
    seed: int = 0,
    widths: Sequence[int] = (4, 8),
    depths: Sequence[int] = (1, 1),
    coupling: Coupling | None = None,
) -> MultiTaskNetwork:
    """A float32 network on :func:`tiny_backbone` with each task spec's head, initialised after
    ``seed_everything(seed)``.

    Args:
        tasks: the task specs.
        graph: a graph, or ``factory(task names, layer names)`` (default: hard sharing).
    """
    seed_everything(seed)
    bb = tiny_backbone(widths, depths)
    if not isinstance(graph, SharingGraph):
        graph = graph([t.name for t in tasks], bb.layer_names)
    return MultiTaskNetwork.from_tasks(graph, bb, tasks, coupling=coupling)


def toy_images(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` standard normal toy images, drawn from ``generator`` (None: torch's global generator)."""
    return torch.randn(n, *TOY_SHAPE, generator=generator, dtype=dtype)


TOY_TASKS = (ClassificationTask("a", 3), RegressionTask("b", 2))
"""Two tasks the toy images carry (:func:`toy_split`)."""


def toy_split(n: int, seed: int) -> TensorMultiTaskDataset:
    """``n`` toy images (generator seeded with ``seed``) labelled for :data:`TOY_TASKS`: ``a``, the level (of 3)
    of the top-left quarter's mean; ``b``, the image's mean and its right half's."""
    g = torch.Generator().manual_seed(seed)
    x = toy_images(n, g)
    a = (x[:, 0, :4, :4].mean((1, 2)) * 3).clamp(-1, 1).round().long() + 1
    b = torch.stack([x.mean((1, 2, 3)), x[:, :, 4:].mean((1, 2, 3))], 1)
    return TensorMultiTaskDataset(x, {"a": a, "b": b})


def toy_data(
    name: str,
    tasks: Sequence,
    split: Callable[[int, int], TensorMultiTaskDataset],
    sizes: tuple[int, int, int] = (64, 32, 32),
) -> MultiTaskData:
    """Toy data whose train, validation and test splits are ``split(n, seed)`` with ``sizes`` and seeds 0, 1, 2."""
    return MultiTaskData(name, tuple(tasks), TOY_SHAPE, *(split(n, seed) for seed, n in enumerate(sizes)))


__all__ = [
    "TINY_ADASHARE",
    "TINY_PROXY",
    "TOY_SHAPE",
    "TOY_TASKS",
    "tiny_backbone",
    "tiny_network",
    "tiny_space",
    "toy_data",
    "toy_images",
    "toy_split",
]
