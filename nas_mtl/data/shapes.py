"""Shapes: procedural RGB images whose tasks depend on planted, independent latent factors.

Each image is one flat-coloured object (circle, square or triangle) over a striped grey background,
plus Gaussian pixel noise. Three independent groups of latent factors are drawn per image:

- geometry: shape type, area (3-12 % of the image), centre position, rotation (a nuisance);
- texture: stripe orientation (0/45/90/135 degrees, +-5 degrees jitter), stripe frequency
  (2-6 cycles per image side), phase and contrast (nuisances);
- colour: object hue (uniform) and brightness (HSV value 0.45-1, saturation 0.85).

Tasks read exactly one group each (``info["planted_groups"]`` lists the three families):
geometry -> ``shape`` (3 classes), ``size`` (area), ``mask`` (object vs background per pixel),
``distance`` (per-pixel distance to the object centre, depth-like); texture -> ``orientation``
(4 classes), ``frequency``; colour -> ``hue`` (6 classes centred on red, yellow, green, cyan, blue,
magenta), ``brightness``. A benchmark in the spirit of the planted-structure checks of task grouping
methods (Standley et al., "Which Tasks Should Be Learned Together", ICML 2020; Fifty et al., TAG,
NeurIPS 2021).

The families are families of image factors, not one shared latent variable per family: within the
geometry family ``size``, ``mask`` and ``distance`` share the object's centre and area (measured
affinities and representation similarities recover them together), while ``orientation`` /
``frequency`` and ``hue`` / ``brightness`` are independent variables that only share an image region,
and ``shape`` is hard at 16 px. Affinity-based grouping therefore recovers geometry vs texture, not the
full three-family partition (``benchmarks/affinity.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..tasks import ClassificationTask, DenseRegressionTask, RegressionTask, SegmentationTask, TaskSpec
from .base import (
    MultiTaskData,
    TensorMultiTaskDataset,
    check_ints,
    register_dataset,
    select_tasks,
    standardize,
)

SPLITS = ("train", "val", "test")
TASKS: tuple[TaskSpec, ...] = (
    ClassificationTask("shape", 3),
    RegressionTask("size"),
    SegmentationTask("mask", 2),
    DenseRegressionTask("distance"),
    ClassificationTask("orientation", 4),
    RegressionTask("frequency"),
    ClassificationTask("hue", 6),
    RegressionTask("brightness"),
)
PLANTED_GROUPS = (("shape", "size", "mask", "distance"), ("orientation", "frequency"), ("hue", "brightness"))
CLASS_NAMES = {
    "shape": ("circle", "square", "triangle"),
    "orientation": ("0", "45", "90", "135"),
    "hue": ("red", "yellow", "green", "cyan", "blue", "magenta"),
}
NOISE_STD = 0.08
"""Std of the Gaussian pixel noise (images in [0, 1] before standardisation)."""
DISTANCE_OFFSET = 0.05
"""Added to the centre distance (in image sides) so every pixel is a valid depth-like target."""


def _hsv_to_rgb(h: np.ndarray, s: float, v: np.ndarray) -> np.ndarray:
    """(N, 3) RGB from hue in [0, 1), one saturation and per-image values (the standard hexcone map)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h[:, None]) % 6.0
    return v[:, None] * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _object_mask(kind: np.ndarray, area: np.ndarray, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) bool: inside an equal-``area`` circle / square / equilateral triangle in object coords."""
    a = (area * size**2).astype(np.float32)[:, None, None]
    circle = u**2 + v**2 <= a / math.pi
    square = np.maximum(np.abs(u), np.abs(v)) <= np.sqrt(a) / 2
    inradius = np.sqrt(a / (3 * math.sqrt(3)))  # equilateral: area = 3 sqrt(3) r^2
    normals = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
    triangle = np.all([u * math.cos(t) + v * math.sin(t) <= inradius for t in normals], axis=0)
    return np.select([kind[:, None, None] == 0, kind[:, None, None] == 1], [circle, square], triangle)


def _generate(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (N, 3, S, S) in [0, 1] and their raw targets."""
    grid = (np.arange(size, dtype=np.float32) + 0.5)[None]
    ys, xs = grid[:, :, None], grid[:, None, :]
    # geometry
    kind = rng.integers(0, 3, n)
    area = rng.uniform(0.03, 0.12, n)
    cx, cy = (rng.uniform(0.3, 0.7, (2, n)) * size).astype(np.float32)[:, :, None, None]
    rot = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    dx, dy = xs - cx, ys - cy
    mask = _object_mask(kind, area, np.cos(rot) * dx + np.sin(rot) * dy, -np.sin(rot) * dx + np.cos(rot) * dy, size)
    # texture
    orient = rng.integers(0, 4, n)
    theta = np.deg2rad(45.0 * orient + rng.uniform(-5, 5, n)).astype(np.float32)[:, None, None]
    freq = rng.uniform(2.0, 6.0, n)
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    contrast = rng.uniform(0.15, 0.3, n).astype(np.float32)[:, None, None]
    cycles = (2 * np.pi * freq / size).astype(np.float32)[:, None, None]
    wave = cycles * (xs * np.cos(theta) + ys * np.sin(theta)) + phase
    background = 0.5 + contrast * np.sin(wave)
    # colour
    hue = rng.uniform(0, 1, n)
    value = rng.uniform(0.45, 1.0, n)
    rgb = _hsv_to_rgb(hue, 0.85, value).astype(np.float32)[:, :, None, None]
    noise = NOISE_STD * rng.standard_normal((n, 3, size, size), dtype=np.float32)
    image = np.where(mask[:, None], rgb, background[:, None]) + noise
    targets = {
        "shape": kind,
        "size": area[:, None],
        "mask": mask.astype(np.int64),
        "distance": (np.hypot(dx, dy) / size + DISTANCE_OFFSET)[:, None],
        "orientation": orient,
        "frequency": freq[:, None],
        "hue": np.round(6 * hue).astype(np.int64) % 6,
        "brightness": value[:, None],
    }
    return np.clip(image, 0, 1), targets


@register_dataset("shapes")
def shapes(
    n_train: int = 4000,
    n_val: int = 1000,
    n_test: int = 1000,
    size: int = 32,
    seed: int = 0,
    tasks: str | Sequence[str] | None = None,
) -> MultiTaskData:
    """Procedural multi-task images (3, size, size) with planted task groups (see the module doc).

    Args:
        tasks: a subset of task names (list or comma-separated string); None = all eight.

    Images are standardised per channel with train statistics. ``size``, ``frequency`` and
    ``brightness`` are standardised with their train mean / std (``info["target_scaling"]``:
    raw = value * std + mean); raw size is the area fraction, frequency is cycles per image side,
    brightness the HSV value. ``distance`` is in image sides plus :data:`DISTANCE_OFFSET`.
    """
    check_ints("shapes", n_train=(n_train, 2), n_val=(n_val, 1), n_test=(n_test, 1), size=(size, 16))
    specs = select_tasks("shapes", TASKS, tasks)
    made = [_generate(n, size, np.random.default_rng([seed, k])) for k, n in enumerate((n_train, n_val, n_test))]
    images, mean, std = standardize(*(torch.from_numpy(x).float() for x, _ in made), dims=(0, 2, 3))
    targets: list[dict[str, torch.Tensor]] = [{} for _ in SPLITS]
    scaling = {}
    for spec in specs:
        values = [torch.from_numpy(t[spec.name]) for _, t in made]
        if isinstance(spec, RegressionTask):
            values, t_mean, t_std = standardize(*(v.float() for v in values), dims=(0,))
            scaling[spec.name] = {"mean": float(t_mean), "std": float(t_std)}
        for split_targets, value in zip(targets, values, strict=True):
            split_targets[spec.name] = value.float() if value.is_floating_point() else value
    chosen = {t.name for t in specs}
    return MultiTaskData(
        name="shapes",
        tasks=specs,
        input_shape=(3, size, size),
        **{s: TensorMultiTaskDataset(x, y) for s, x, y in zip(SPLITS, images, targets, strict=True)},
        info={
            "planted_groups": [[t for t in g if t in chosen] for g in PLANTED_GROUPS if chosen.intersection(g)],
            "class_names": {k: list(v) for k, v in CLASS_NAMES.items() if k in chosen},
            "target_scaling": scaling,
            "normalization": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()},
        },
    )
