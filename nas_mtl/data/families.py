"""Families: six tasks in two planted families, few labels per task -- a problem where neither hard sharing nor
independent networks is right.

Each image (3 x S x S) is a striped grey background with one flat-coloured disc, plus Gaussian pixel noise. Two
independent latent angles are drawn per image:

- texture -- the stripes' orientation a, uniform on [0, 180) degrees (stripes repeat every 180). Tasks
  ``stripes_0``, ``stripes_120``, ``stripes_240``: cos(2a - k), the orientation's doubled angle projected on
  three axes k = 0, 120, 240 degrees apart;
- colour -- the disc's hue h, uniform on the colour wheel. Tasks ``hue_0``, ``hue_120``, ``hue_240``:
  cos(2 pi h - k), the hue angle projected on the same three axes.

Nuisances, which no task predicts: stripe frequency (2.5-5 cycles per side), phase and contrast; the disc's
position, radius and brightness (HSV value 0.55-1, saturation 0.85).

**Few labels per task.** In the training split each image is labelled for one task per family only: a seeded
permutation deals the images to the family's three tasks in turn, so a task has ``n_train / 3`` labels while its
family, together, has a label on every image (validation and test images carry every label).

What that plants (``info["planted_groups"]``, :func:`planted_tree`):

- within a family, the three tasks are linear read-outs of one two-dimensional feature (the angle's cosine and
  sine), so a network shared by the family learns that feature from three times the labels of any one task;
- across families the tasks share nothing, and a narrow network's width is contested: the planted tree gives
  each family its own network from the first block on.

Neither hard sharing (every task in every block) nor independent networks (each task alone on a third of the
labels) is the answer; the planted tree is. Measured by ``benchmarks/families.py`` (retrained from scratch, data
and training seeds 0-4, ``search_spaces/families.toml``, 600 training images, 30 epochs, equal weighting; Δm of
test MAE against the independent networks' seed mean, paired differences with 95 % t intervals; noise floor =
seed std of Δm pooled over the arms, 8.1):

- planted - independent: +17.6 [+7.3, +27.9] (per seed +6.2 to +26.6; 2.2 x the noise floor); both families
  gain (stripes MAE 0.068 -> 0.055, hue 0.160 -> 0.136);
- planted - hard sharing: +49.8 [+42.0, +57.5] (6.1 x the noise floor);
- planted - the families sharing the stem: +7.8 [+2.0, +13.7]: sharing even the first block across families
  costs.

How the generator got here (measured, 2 seeds each, before this design): shapes' latents read out as different
task kinds (quadrant / size, hue / chroma) or as coarse and fine classes of one latent made family sharing no
better than independent networks (-2 to -21 Δm): a shared trunk whose linear heads must serve several partitions
of one angle loses what the extra labels give. Linear read-outs of one 2-D feature gain; with 100 labels per task
(300 images) the gain was smaller and unsteady (+1 to +24 by seed), with 200 it holds on every seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..graph import SharingGraph
from ..space import SearchSpace
from ..tasks import RegressionTask, TaskSpec
from .base import MultiTaskData, check_ints, procedural_splits, register_dataset, select_tasks
from .shapes import NOISE_STD, hsv_to_rgb

AXES = (0, 120, 240)
"""The projection axes of each family's tasks, in degrees of the latent angle."""
PLANTED_GROUPS = (tuple(f"stripes_{k}" for k in AXES), tuple(f"hue_{k}" for k in AXES))
"""The families: each reads one latent angle, and the two latents are independent."""
TASKS: tuple[TaskSpec, ...] = tuple(RegressionTask(name) for group in PLANTED_GROUPS for name in group)


def generate(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (N, 3, S, S) in [0, 1] and every task's target (N, 1)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5)[None]
    ys, xs = grid[:, :, None], grid[:, None, :]
    angle = rng.uniform(0, np.pi, n)  # texture latent
    theta = angle.astype(np.float32)[:, None, None]
    cycles = (2 * np.pi * rng.uniform(2.5, 5.0, n) / size).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    contrast = rng.uniform(0.15, 0.3, n).astype(np.float32)[:, None, None]
    background = 0.5 + contrast * np.sin(cycles * (xs * np.cos(theta) + ys * np.sin(theta)) + phase)
    hue = rng.uniform(0, 1, n)  # colour latent
    rgb = hsv_to_rgb(hue, 0.85, rng.uniform(0.55, 1.0, n)).astype(np.float32)[:, :, None, None]
    cx, cy = (rng.uniform(0.3, 0.7, (2, n)) * size)[:, :, None, None]
    radius = (rng.uniform(0.12, 0.2, n) * size)[:, None, None]
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    noise = NOISE_STD * rng.standard_normal((n, 3, size, size), dtype=np.float32)
    image = np.where(disc[:, None], rgb, background[:, None]) + noise
    targets = {}
    for k in AXES:
        shift = np.deg2rad(k)
        targets[f"stripes_{k}"] = np.cos(2 * angle - shift)[:, None]
        targets[f"hue_{k}"] = np.cos(2 * np.pi * hue - shift)[:, None]
    return np.clip(image, 0, 1), targets


def deal_labels(n: int, groups: Sequence[Sequence[str]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """For each task of ``groups``, a boolean mask over ``n`` images: within a group the images are dealt to its
    tasks in turn after one seeded permutation, so each image is labelled for exactly one task of each group."""
    out = {}
    for group in groups:
        order = rng.permutation(n)
        for k, task in enumerate(group):
            mask = np.zeros(n, dtype=bool)
            mask[order[k :: len(group)]] = True
            out[task] = mask
    return out


@register_dataset("families")
def families(
    n_train: int = 600,
    n_val: int = 300,
    n_test: int = 600,
    size: int = 16,
    seed: int = 0,
    few_labels: bool = True,
    tasks: str | Sequence[str] | None = None,
) -> MultiTaskData:
    """Six regression tasks in two planted families (see the module doc).

    Args:
        few_labels: label each training image for one task per family (True: the planted setting); False keeps
            every label (then sharing within a family brings no extra labels).
        tasks: a subset of task names (list or comma-separated string); None = all six.

    Images are standardised per channel with train statistics; targets are in [-1, 1] as generated. An unlabelled
    training target is NaN (a missing label, see :mod:`nas_mtl.tasks`).
    """
    check_ints("families", n_train=(n_train, 3), n_val=(n_val, 1), n_test=(n_test, 1), size=(size, 16))
    specs = select_tasks("families", TASKS, tasks)
    chosen = [t.name for t in specs]
    made = [generate(n, size, np.random.default_rng([seed, k])) for k, n in enumerate((n_train, n_val, n_test))]
    splits, _, normalization = procedural_splits(made, specs, ())
    groups = planted_groups(chosen)
    if few_labels:
        masks = deal_labels(n_train, groups, np.random.default_rng([seed, len(made)]))
        for name in chosen:
            target = splits["train"].targets[name].clone()
            target[torch.from_numpy(~masks[name])] = float("nan")
            splits["train"].targets[name] = target
    labelled = {t: int((~torch.isnan(splits["train"].targets[t]).any(dim=1)).sum()) for t in chosen}
    return MultiTaskData(
        name="families",
        tasks=specs,
        input_shape=(3, size, size),
        **splits,
        info={"planted_groups": groups, "normalization": normalization, "labels_per_task": labelled},
    )


def planted_groups(tasks: Sequence[str]) -> list[list[str]]:
    """:data:`PLANTED_GROUPS` restricted to ``tasks`` (empty groups dropped)."""
    known = [t.name for t in TASKS]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"families: unknown task(s) {unknown}; known: {known}")
    return [[t for t in g if t in tasks] for g in PLANTED_GROUPS if set(tasks).intersection(g)]


def planted_tree(tasks: Sequence[str], space: SearchSpace) -> SharingGraph:
    """The planted tree of ``space``: the layers before its first branchable one shared by all (none when that is
    the first layer, as in ``search_spaces/families.toml``), then one hard-shared branch per family."""
    if not space.branchable:
        raise ValueError(f"search space {space.name!r} has no branchable layer: the planted tree has no place")
    at = space.layers.index(space.branchable[0])
    return SharingGraph.from_groups(tasks, space.layers, planted_groups(tasks), at, space.skippable).with_meta(
        name="families:planted-tree"
    )


__all__ = [
    "AXES",
    "PLANTED_GROUPS",
    "TASKS",
    "deal_labels",
    "families",
    "generate",
    "planted_groups",
    "planted_tree",
]
