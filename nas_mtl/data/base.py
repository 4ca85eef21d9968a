"""The dataset interface: a MultiTaskData bundle, an in-memory dataset, batching and the registry."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..registry import Registry, is_reference
from ..tasks import TaskSpec

Batch = tuple[Tensor, dict[str, Tensor]]
"""``(images (B, C, H, W), {task: targets (B, ...)})``."""


@dataclass(frozen=True)
class MultiTaskData:
    """A multi-task dataset: task specs, input shape and train / val / test splits.

    Every split yields ``(image, {task: target})`` items; ``info`` carries dataset facts such as
    planted task groups, class names or target scaling.
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    input_shape: tuple[int, int, int]
    train: Dataset
    val: Dataset
    test: Dataset
    info: Mapping[str, Any] = field(default_factory=dict)
    origin: Mapping[str, Any] | None = None
    """How :func:`create_dataset` built it (``{"dataset": NAME, "kwargs": {...}}``): what another process needs
    to build the same data (workers of a search); None for data made otherwise."""

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names:
            raise ValueError(f"dataset {self.name!r}: no tasks")
        if len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: duplicate task names in {names}")
        for split in ("train", "val", "test"):  # in memory: one cheap pass, before any training
            dataset = getattr(self, split)
            if isinstance(dataset, TensorMultiTaskDataset):
                check_finite_inputs(dataset.images, f"dataset {self.name!r}: {split} images")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)


def check_finite_inputs(inputs: np.ndarray | Tensor, where: Path | str, stacked: bool = True) -> None:
    """Raise ValueError naming ``where`` (and for ``stacked`` inputs, the first sample along the first dimension)
    when a floating input holds NaN or Inf: one pass, a few million values at a time (a memory-mapped array is
    never read whole). Targets may be NaN (a missing label); inputs never."""
    if isinstance(inputs, Tensor):
        inputs = inputs.detach().cpu().numpy()
    if not np.issubdtype(inputs.dtype, np.floating):
        return
    if not stacked:
        if not np.isfinite(inputs).all():
            raise ValueError(f"{where}: NaN or Inf in this input; inputs must be finite numbers (fix or drop it)")
        return
    chunk = max(1, 2**24 // max(1, math.prod(inputs.shape[1:])))
    for start in range(0, len(inputs), chunk):
        block = np.asarray(inputs[start : start + chunk])
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{where}: sample {start + int(np.argmax(bad))} has a NaN or Inf input; inputs must be finite numbers "
                "(fix or drop that sample)"
            )


class TensorMultiTaskDataset(Dataset):
    """All samples in memory: ``images`` (N, C, H, W) float32 and one target tensor per task (first dim N)."""

    def __init__(self, images: Tensor, targets: Mapping[str, Tensor]) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.dtype != torch.float32:
            got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected a float32 tensor (N, C, H, W), got {got}")
        for task, target in targets.items():
            if not isinstance(target, Tensor) or target.dim() == 0 or target.shape[0] != images.shape[0]:
                got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
                raise ValueError(f"targets[{task!r}]: expected a tensor with first dim {images.shape[0]}, got {got}")
        self.images = images
        self.targets = dict(targets)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[i], {task: target[i] for task, target in self.targets.items()}

    def batch(self, index: Tensor) -> Batch:
        """The samples at ``index`` (a 1-D long tensor) by fancy indexing: no per-item collation."""
        return self.images[index], {task: target[index] for task, target in self.targets.items()}


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield ``(x, {task: y})`` batches covering ``dataset`` once.

    In-memory datasets are sliced directly (fast on CPU); any other dataset goes through a
    single-process DataLoader with default collation. The order depends only on ``generator``'s state.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(dataset, TensorMultiTaskDataset):
        # the order from ``generator`` alone (a DataLoader also draws its workers' base seed from its own)
        sampler = RandomSampler(dataset, generator=generator) if shuffle else None
        yield from DataLoader(dataset, batch_size, sampler=sampler, drop_last=drop_last, generator=torch.Generator())
        return
    n = len(dataset)
    order = torch.randperm(n, generator=generator, device="cpu") if shuffle else torch.arange(n, device="cpu")
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield dataset.batch(order[start : start + batch_size])


def batch_loader(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader | None:
    """A shuffling, last-batch-dropping DataLoader over ``dataset`` to reuse for every epoch (re-seed
    ``generator`` in place before each), or None for in-memory data (sliced directly by :func:`iterate_batches`).

    With ``num_workers`` > 0 the workers persist across epochs; their random streams (torch, NumPy, ``random``,
    which DataLoader seeds from its base seed) come from ``seed``, the run's, for a dataset that augments. The
    batches are bitwise those of :func:`iterate_batches` with the same generator state, for any number of workers:
    the order is drawn in this process (``torch.randperm`` on ``generator``, as both paths do) and each sample is
    read the same way.
    """
    if isinstance(dataset, TensorMultiTaskDataset):
        return None
    workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": pin_memory}
    sampler = RandomSampler(dataset, generator=generator)  # the order: torch.randperm on ``generator`` alone
    seeds = torch.Generator().manual_seed(seed)  # the workers' base seed, apart from the order's generator
    return DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, generator=seeds, **workers)


def check_ints(dataset: str, **fields: tuple[Any, int]) -> None:
    """Raise ValueError naming the first ``field=(value, minimum)`` that is not an integer >= minimum."""
    for key, (value, low) in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"dataset {dataset!r}: {key} must be an integer >= {low}, got {value!r}")


def select_names(dataset: str, field: str, wanted: str | Sequence[str], known: Sequence[str]) -> list[str]:
    """Validate a user's choice of names (a list or a comma-separated string) against ``known``."""
    names = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in names if w not in known]
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else f"need distinct names, got {names}"
        raise ValueError(f"dataset {dataset!r}: {field}: {problem}; known: {list(known)}")
    return names


def select_tasks(dataset: str, tasks: Sequence[TaskSpec], wanted: str | Sequence[str] | None) -> tuple[TaskSpec, ...]:
    """The specs named in ``wanted`` (a list or a comma-separated string), in that order; None = all."""
    if wanted is None:
        return tuple(tasks)
    by_name = {t.name: t for t in tasks}
    return tuple(by_name[w] for w in select_names(dataset, "tasks", wanted, list(by_name)))


DATASETS: Registry[MultiTaskData] = Registry("dataset", group="nas_mtl.datasets")
register_dataset = DATASETS.register
list_datasets = DATASETS.names


def create_dataset(name: str, **kwargs: Any) -> MultiTaskData:
    """Build dataset ``name`` (registered, an entry point of ``nas_mtl.datasets``, ``MODULE:FUNCTION`` /
    ``FILE.py:FUNCTION`` in the user's code, or a data folder with a ``tasks.toml``) with its options (errors
    name them); the data records them in :attr:`MultiTaskData.origin`."""
    if name not in DATASETS and not is_reference(name) and (Path(name) / "tasks.toml").is_file():
        return create_dataset("folder", root=str(Path(name).resolve()), **kwargs)  # a data folder (no code)
    data = DATASETS.create(name, **kwargs)
    if not isinstance(data, MultiTaskData):
        raise ValueError(f"dataset {name!r}: the factory returned a {type(data).__name__}, not a MultiTaskData")
    return dataclasses.replace(data, origin={"dataset": name, "kwargs": dict(kwargs)})


def data_fingerprint(data: MultiTaskData, n: int = 16) -> dict[str, Any]:
    """What a run's numbers depend on in ``data``, recorded by every resumable run (checkpoints, search records,
    caches, score tables) and compared on resume: how it was made (:attr:`MultiTaskData.origin`, None for data
    made otherwise), its tasks, the train / val / test sizes and a SHA-256 (first 16 hex digits) of ``n`` evenly
    spaced items per split (input and target bytes), which tells apart data of equal size and origin (edited files).

    Deterministic: another process that builds the same data (a search's workers) gets the same fingerprint.
    """
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        size, count = len(split), min(n, len(split))
        for i in sorted({round(k * (size - 1) / max(count - 1, 1)) for k in range(count)}):
            x, y = split[i]
            digest.update(np.ascontiguousarray(torch.as_tensor(x, device="cpu").detach().numpy()).tobytes())
            for task in sorted(y):
                digest.update(task.encode())
                digest.update(np.ascontiguousarray(torch.as_tensor(y[task], device="cpu").detach().numpy()).tobytes())
    origin = None if data.origin is None else json.loads(json.dumps(dict(data.origin), default=str))
    return {
        "name": data.name,
        "origin": origin,
        "tasks": list(data.task_names),
        "sizes": [len(data.train), len(data.val), len(data.test)],
        "sample": digest.hexdigest()[:16],  # 64 bits: shown whole in a refusal
    }


def carve_val(n: int, val_fraction: float, seed: int, dataset: str) -> tuple[list[int], list[int]]:
    """Seeded (train, val) index lists partitioning ``range(n)``."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise ValueError(f"dataset {dataset!r}: val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ValueError(f"dataset {dataset!r}: {n} training items are too few to carve a val split of {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def standardize(train: Tensor, *others: Tensor, dims: tuple[int, ...]) -> tuple[list[Tensor], Tensor, Tensor]:
    """Subtract the train mean and divide by the train std (over ``dims``) in every split.

    Returns the scaled splits (train first) and the mean / std (``keepdim`` shapes) to undo it. The statistics
    are summed in float64 and rounded to ``train``'s dtype, so the data is bitwise the same whatever the thread
    count (a float32 sum's order, and so its last bits, depends on it): a search's workers rebuild the same data
    (:func:`data_fingerprint`).
    """
    mean = train.double().mean(dim=dims, keepdim=True).to(train.dtype)
    std = train.double().std(dim=dims, keepdim=True).to(train.dtype).clamp_min(1e-8)
    return [(x - mean) / std for x in (train, *others)], mean, std


def procedural_splits(
    made: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]], specs: Sequence[TaskSpec], standardized: Container[str]
) -> tuple[dict[str, TensorMultiTaskDataset], dict[str, dict[str, float]], dict[str, list[float]]]:
    """The train / val / test datasets of a procedural generator's ``(images, targets)`` per split: images
    standardised per channel with train statistics, the ``standardized`` targets with their train mean / std,
    floating targets as float32. Returns the datasets by split, the target scaling (``info["target_scaling"]``)
    and the image normalisation (``info["normalization"]``)."""
    images, mean, std = standardize(*(torch.from_numpy(x).float() for x, _ in made), dims=(0, 2, 3))
    targets: list[dict[str, Tensor]] = [{} for _ in made]
    scaling = {}
    for spec in specs:
        values = [torch.from_numpy(t[spec.name]) for _, t in made]
        if spec.name in standardized:
            values, t_mean, t_std = standardize(*(v.float() for v in values), dims=(0,))
            scaling[spec.name] = {"mean": float(t_mean), "std": float(t_std)}
        for split_targets, value in zip(targets, values, strict=True):
            split_targets[spec.name] = value.float() if value.is_floating_point() else value
    splits = {
        s: TensorMultiTaskDataset(x, y) for s, x, y in zip(("train", "val", "test"), images, targets, strict=True)
    }
    return splits, scaling, {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}


__all__ = [
    "Batch",
    "batch_loader",
    "DATASETS",
    "MultiTaskData",
    "TensorMultiTaskDataset",
    "carve_val",
    "check_finite_inputs",
    "check_ints",
    "create_dataset",
    "data_fingerprint",
    "iterate_batches",
    "list_datasets",
    "procedural_splits",
    "register_dataset",
    "select_names",
    "select_tasks",
    "standardize",
]
