"""Shapes: procedural RGB images whose tasks are read from planted latent factors, one per task family.

Each image is one flat-coloured object (circle, square or triangle, rotated) over a striped grey
background, plus Gaussian pixel noise. Three independent latent factors are drawn per image, and every
task is a function of exactly one of them:

- geometry -- the object's placement: its centre (one per image quadrant, 6-22 % of the side away from
  the image centre on each axis) and its area (3-12 % of the image). Tasks: ``quadrant`` (4 classes:
  top-left, top-right, bottom-left, bottom-right), ``size`` (area), ``mask`` (object vs background
  per pixel), ``distance`` (per-pixel distance to the object centre, depth-like).
- texture -- the stripe angle (0/45/90/135 degrees +-10). Tasks: ``orientation`` (the 4 classes) and
  ``angle`` (regression of (cos 2a, sin 2a): the angle on the doubled-angle circle, where a and
  a + 180 degrees are the same stripes).
- colour -- the object's hue (uniform). Tasks: ``hue`` (6 classes centred on red, yellow, green,
  cyan, blue, magenta) and ``chroma`` (regression of (cos 2 pi h, sin 2 pi h), the hue on the colour
  wheel).

Nuisance factors, which no task predicts: the object's kind and rotation (only the mask's outline
depends on them), stripe frequency (2-6 cycles per image side), phase and contrast, object brightness
(HSV value 0.55-1, saturation 0.85).

Tasks of one family share their latent, tasks of different families share none, so the planted
grouping (``info["planted_groups"]``) is the right one for a task-grouping method to find: the planted
structure checks of Standley et al. ("Which Tasks Should Be Learned Together", ICML 2020) and Fifty et
al. (TAG, NeurIPS 2021) in a form whose answer is known. ``benchmarks/affinity.py`` measures which
affinity measures recover it (at 16 px, 800 images, 3 epochs, over seeds 0-4: lookahead, gradient cosine
and RSA on 5 of 5 seeds, CKA on 3 of 5; see tests/test_affinity.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..tasks import ClassificationTask, DenseRegressionTask, RegressionTask, SegmentationTask, TaskSpec
from .base import MultiTaskData, check_ints, procedural_splits, register_dataset, select_tasks

SPLITS = ("train", "val", "test")
TASKS: tuple[TaskSpec, ...] = (
    ClassificationTask("quadrant", 4),
    RegressionTask("size"),
    SegmentationTask("mask", 2),
    DenseRegressionTask("distance"),
    ClassificationTask("orientation", 4),
    RegressionTask("angle", num_outputs=2),
    ClassificationTask("hue", 6),
    RegressionTask("chroma", num_outputs=2),
)
PLANTED_GROUPS = (("quadrant", "size", "mask", "distance"), ("orientation", "angle"), ("hue", "chroma"))
STANDARDIZED = ("size",)
"""Scalar regression targets standardised with train statistics; ``angle`` and ``chroma`` are unit vectors."""
CLASS_NAMES = {
    "quadrant": ("top-left", "top-right", "bottom-left", "bottom-right"),
    "orientation": ("0", "45", "90", "135"),
    "hue": ("red", "yellow", "green", "cyan", "blue", "magenta"),
}
NOISE_STD = 0.08
"""Std of the Gaussian pixel noise (images in [0, 1] before standardisation)."""
DISTANCE_OFFSET = 0.05
"""Added to the centre distance (in image sides) so every pixel is a valid depth-like target."""


def hsv_to_rgb(h: np.ndarray, s: float, v: np.ndarray) -> np.ndarray:
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
    # geometry latent: centre (one per quadrant, away from the midlines) and area
    quadrant = rng.integers(0, 4, n)
    below, right = quadrant // 2, quadrant % 2
    offset = rng.uniform(0.06, 0.22, (2, n))
    cx = ((0.5 + np.where(right == 1, 1, -1) * offset[0]) * size).astype(np.float32)[:, None, None]
    cy = ((0.5 + np.where(below == 1, 1, -1) * offset[1]) * size).astype(np.float32)[:, None, None]
    area = rng.uniform(0.03, 0.12, n)
    kind = rng.integers(0, 3, n)  # nuisance
    rot = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]  # nuisance
    dx, dy = xs - cx, ys - cy
    mask = _object_mask(kind, area, np.cos(rot) * dx + np.sin(rot) * dy, -np.sin(rot) * dx + np.cos(rot) * dy, size)
    # texture latent: stripe angle
    orient = rng.integers(0, 4, n)
    angle = np.deg2rad(45.0 * orient + rng.uniform(-10, 10, n))
    theta = angle.astype(np.float32)[:, None, None]
    freq = rng.uniform(2.0, 6.0, n)  # nuisances: frequency, phase, contrast
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    contrast = rng.uniform(0.15, 0.3, n).astype(np.float32)[:, None, None]
    cycles = (2 * np.pi * freq / size).astype(np.float32)[:, None, None]
    wave = cycles * (xs * np.cos(theta) + ys * np.sin(theta)) + phase
    background = 0.5 + contrast * np.sin(wave)
    # colour latent: hue
    hue = rng.uniform(0, 1, n)
    value = rng.uniform(0.55, 1.0, n)  # nuisance
    rgb = hsv_to_rgb(hue, 0.85, value).astype(np.float32)[:, :, None, None]
    noise = NOISE_STD * rng.standard_normal((n, 3, size, size), dtype=np.float32)
    image = np.where(mask[:, None], rgb, background[:, None]) + noise
    targets = {
        "quadrant": quadrant,
        "size": area[:, None],
        "mask": mask.astype(np.int64),
        "distance": (np.hypot(dx, dy) / size + DISTANCE_OFFSET)[:, None],
        "orientation": orient,
        "angle": np.stack([np.cos(2 * angle), np.sin(2 * angle)], 1),
        "hue": np.round(6 * hue).astype(np.int64) % 6,
        "chroma": np.stack([np.cos(2 * np.pi * hue), np.sin(2 * np.pi * hue)], 1),
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

    Images are standardised per channel with train statistics. ``size`` is standardised with its train
    mean / std (``info["target_scaling"]``: raw area fraction = value * std + mean); ``angle`` and
    ``chroma`` are unit vectors; ``distance`` is in image sides plus :data:`DISTANCE_OFFSET`.
    """
    check_ints("shapes", n_train=(n_train, 2), n_val=(n_val, 1), n_test=(n_test, 1), size=(size, 16))
    specs = select_tasks("shapes", TASKS, tasks)
    made = [_generate(n, size, np.random.default_rng([seed, k])) for k, n in enumerate((n_train, n_val, n_test))]
    splits, scaling, normalization = procedural_splits(made, specs, STANDARDIZED)
    chosen = {t.name for t in specs}
    return MultiTaskData(
        name="shapes",
        tasks=specs,
        input_shape=(3, size, size),
        **splits,
        info={
            "planted_groups": [[t for t in g if t in chosen] for g in PLANTED_GROUPS if chosen.intersection(g)],
            "class_names": {k: list(v) for k, v in CLASS_NAMES.items() if k in chosen},
            "target_scaling": scaling,
            "normalization": normalization,
        },
    )


__all__ = [
    "CLASS_NAMES",
    "DISTANCE_OFFSET",
    "NOISE_STD",
    "PLANTED_GROUPS",
    "SPLITS",
    "STANDARDIZED",
    "TASKS",
    "hsv_to_rgb",
    "shapes",
]
