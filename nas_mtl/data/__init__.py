"""Multi-task datasets behind one interface: ``create_dataset(name, **kwargs) -> MultiTaskData``."""

from . import families, folder, markers, multidigits, real, shapes  # noqa: F401  (registration)
from .base import (
    MultiTaskData,
    TensorMultiTaskDataset,
    batch_loader,
    create_dataset,
    data_fingerprint,
    iterate_batches,
    list_datasets,
    register_dataset,
)
from .real import CelebADataset, NpyFolderDataset

__all__ = [
    "CelebADataset",
    "MultiTaskData",
    "NpyFolderDataset",
    "TensorMultiTaskDataset",
    "batch_loader",
    "create_dataset",
    "data_fingerprint",
    "iterate_batches",
    "list_datasets",
    "register_dataset",
]
