"""Loaders for user-provided real multi-task datasets in the formats popular MTL code uses.

- NYUv2 and CityScapes in the preprocessed ``.npy`` layout of MTAN (Liu et al., CVPR 2019;
  github.com/lorenmt/mtan) and LibMTL: ``root/{train,val}/{image,<task folders>}/{i}.npy``.
  Their ``val`` split is the customary test set; our val is a seeded share of their train split.
- CelebA in its official layout (Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015):
  ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/``, the multi-task
  setting of Sener & Koltun (NeurIPS 2018): one binary task per attribute, 64x64 images.

Items are loaded from disk on access (nothing is downloaded); images stay in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..tasks import (
    ClassificationTask,
    DenseRegressionTask,
    MultiLabelTask,
    SegmentationTask,
    SurfaceNormalTask,
    TaskSpec,
)
from .base import MultiTaskData, carve_val, check_ints, register_dataset, select_names, select_tasks

IMAGE_FOLDER = "image"


def _file_count(folder: Path) -> int:
    """Number of ``{i}.npy`` files in ``folder``, which must be exactly ``0.npy .. n-1.npy``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found (expected the MTAN/LibMTL .npy layout)")
    names = {p.name for p in folder.iterdir() if p.suffix == ".npy"}
    missing = [f"{i}.npy" for i in range(len(names)) if f"{i}.npy" not in names]
    if missing or not names:
        raise ValueError(
            f"{folder}: expected files 0.npy .. N-1.npy, " + (f"missing {missing[:3]}" if names else "none found")
        )
    return len(names)


def _load_npy(path: Path, channels: int | None, hw: tuple[int, int] | None) -> Tensor:
    """(H, W, C) array (or (H, W) if C = 1) as (C, H, W) float32; ``channels=None``: (H, W) int64 labels."""
    try:
        arr = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as .npy ({err})") from None
    if channels is None:
        ok, want = arr.ndim == 2, "(H, W) labels"
    else:
        if arr.ndim == 2 and channels == 1:
            arr = arr[:, :, None]
        ok, want = arr.ndim == 3 and arr.shape[2] == channels, f"(H, W, {channels})"
    if not ok or (hw is not None and tuple(arr.shape[:2]) != hw):
        size = "" if hw is None else f" with H, W = {hw}"
        raise ValueError(f"{path}: expected shape {want}{size}, got {arr.shape}")
    if channels is None:
        return torch.from_numpy(np.rint(arr).astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def _channels(spec: TaskSpec) -> int | None:
    """Channels of a task's stored target; None for integer label maps."""
    return None if isinstance(spec, SegmentationTask) else spec.out_channels


class NpyFolderDataset(Dataset):
    """One split of the MTAN/LibMTL layout: ``split_dir/image/{i}.npy`` plus one folder per task.

    Args:
        split_dir: e.g. ``root/train``.
        folders: ``{task name: folder name}`` under ``split_dir``.
        tasks: the specs of those tasks (they fix each target's layout).
    """

    def __init__(self, split_dir: Path, folders: Mapping[str, str], tasks: Sequence[TaskSpec]) -> None:
        self.split_dir = Path(split_dir)
        self.folders = dict(folders)
        self.tasks = tuple(tasks)
        n = _file_count(self.split_dir / IMAGE_FOLDER)
        for spec in self.tasks:
            folder = self.split_dir / self.folders[spec.name]
            count = _file_count(folder)
            if count != n:
                raise ValueError(f"{folder}: {count} files but {self.split_dir / IMAGE_FOLDER} has {n}")
        self.length = n
        self.hw = tuple(_load_npy(self.split_dir / IMAGE_FOLDER / "0.npy", 3, None).shape[1:])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= i < self.length:
            raise IndexError(f"{self.split_dir}: index {i} out of range for {self.length} items")
        image = _load_npy(self.split_dir / IMAGE_FOLDER / f"{i}.npy", 3, self.hw)
        targets = {
            spec.name: _load_npy(self.split_dir / self.folders[spec.name] / f"{i}.npy", _channels(spec), self.hw)
            for spec in self.tasks
        }
        return image, targets


def _npy_dataset(
    name: str,
    root: str | Path,
    specs: Sequence[TaskSpec],
    folders: Mapping[str, str],
    tasks: str | Sequence[str] | None,
    val_fraction: float,
    seed: int,
) -> MultiTaskData:
    """A MultiTaskData over ``root/train`` (train + carved val) and ``root/val`` (test)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: root folder {root} not found")
    chosen = select_tasks(name, specs, tasks)
    full_train = NpyFolderDataset(root / "train", folders, chosen)
    test = NpyFolderDataset(root / "val", folders, chosen)
    if test.hw != full_train.hw:
        raise ValueError(f"{root / 'val'}: images are {test.hw} but {root / 'train'} has {full_train.hw}")
    train_idx, val_idx = carve_val(len(full_train), val_fraction, seed, name)
    return MultiTaskData(
        name=name,
        tasks=chosen,
        input_shape=(3, *full_train.hw),
        train=Subset(full_train, train_idx),
        val=Subset(full_train, val_idx),
        test=test,
        info={
            "root": str(root),
            "val_indices": val_idx,
            "folders": {t.name: folders[t.name] for t in chosen},
        },
    )


@register_dataset("nyuv2")
def nyuv2(
    root: str | Path, val_fraction: float = 0.1, seed: int = 0, tasks: str | Sequence[str] | None = None
) -> MultiTaskData:
    """NYUv2 (13-class segmentation, depth, surface normals) in the MTAN/LibMTL layout.

    ``root/{train,val}/{image,label,depth,normal}/{i}.npy``: image HxWx3 in [0, 1], label HxW
    (-1 = ignore), depth HxWx1 (0 = missing), normal HxWx3.
    """
    specs = (SegmentationTask("segmentation", 13), DenseRegressionTask("depth"), SurfaceNormalTask("normal"))
    folders = {"segmentation": "label", "depth": "depth", "normal": "normal"}
    return _npy_dataset("nyuv2", root, specs, folders, tasks, val_fraction, seed)


@register_dataset("cityscapes")
def cityscapes(
    root: str | Path,
    num_classes: int = 7,
    val_fraction: float = 0.1,
    seed: int = 0,
    tasks: str | Sequence[str] | None = None,
) -> MultiTaskData:
    """CityScapes (7- or 19-class segmentation, depth) in the MTAN/LibMTL layout.

    ``root/{train,val}/{image,label_7 or label_19,depth}/{i}.npy`` (labels -1 = ignore).
    """
    if num_classes not in (7, 19):
        raise ValueError(f"dataset 'cityscapes': num_classes must be 7 or 19, got {num_classes!r}")
    specs = (SegmentationTask("segmentation", num_classes), DenseRegressionTask("depth"))
    folders = {"segmentation": f"label_{num_classes}", "depth": "depth"}
    return _npy_dataset("cityscapes", root, specs, folders, tasks, val_fraction, seed)


# --- CelebA --------------------------------------------------------------------------------------
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (CelebA needs {ATTR_FILE} and {PARTITION_FILE})")
    return path.read_text().splitlines()


def _read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Attribute names, image file names and the (N, 40) matrix of -1 / 1 from ``list_attr_celeba.txt``."""
    lines = _lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ValueError(f"{path}: line 1 must be the image count, line 2 the attribute names")
    names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != int(lines[0]):
        raise ValueError(f"{path}: line 1 says {int(lines[0])} images but {len(rows)} rows follow")
    for lineno, row in enumerate(rows, start=3):
        if len(row) != len(names) + 1 or not set(row[1:]) <= {"-1", "1"}:
            raise ValueError(f"{path}:{lineno}: expected a file name and {len(names)} values of -1 / 1, got {row}")
    values = np.array([row[1:] for row in rows], dtype=np.int64).reshape(len(rows), len(names))
    return names, [row[0] for row in rows], values


def _read_partition(path: Path, files: Sequence[str]) -> np.ndarray:
    """The split name of each of ``files`` from ``list_eval_partition.txt`` (0 train, 1 val, 2 test)."""
    split: dict[str, str] = {}
    for lineno, line in enumerate(_lines(path), start=1):
        row = line.split()
        if not row:
            continue
        if len(row) != 2 or row[1] not in PARTITIONS:
            raise ValueError(f"{path}:{lineno}: expected '<file> 0|1|2', got {line!r}")
        split[row[0]] = PARTITIONS[row[1]]
    missing = [f for f in files if f not in split]
    if missing:
        raise ValueError(f"{path}: no partition for {len(missing)} image(s), e.g. {missing[0]}")
    return np.array([split[f] for f in files])


class CelebADataset(Dataset):
    """CelebA images resized to ``image_size`` with binary attribute targets.

    Items are ``(image (3, S, S) in [0, 1], targets)``: ``{attribute: int64 0/1}`` per attribute, or
    ``{"attributes": float (k,) of 0/1}`` when ``multilabel``.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        names: Sequence[str],
        image_size: int,
        multilabel: bool,
    ) -> None:
        self.files = list(files)
        self.labels = torch.from_numpy(labels)
        self.names = list(names)
        self.image_size = image_size
        self.multilabel = multilabel

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
            image = torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if self.multilabel:
            return image, {"attributes": self.labels[i].float()}
        return image, {name: self.labels[i, j] for j, name in enumerate(self.names)}


@register_dataset("celeba")
def celeba(
    root: str | Path,
    attributes: str | Sequence[str] | None = None,
    as_multilabel: bool = False,
    image_size: int = 64,
) -> MultiTaskData:
    """CelebA face attributes with the official train / val / test partition.

    Args:
        root: folder with ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/``.
        attributes: attribute names to predict (list or comma-separated); None = all 40.
        as_multilabel: one multi-label task ``attributes`` instead of one binary task per attribute.
        image_size: side of the square (bilinear) resize.
    """
    root = Path(root)
    check_ints("celeba", image_size=(image_size, 8))
    all_names, files, values = _read_attributes(root / ATTR_FILE)
    names = all_names if attributes is None else select_names("celeba", "attributes", attributes, all_names)
    labels = (values[:, [all_names.index(a) for a in names]] + 1) // 2
    split = _read_partition(root / PARTITION_FILE, files)
    image_dir = root / IMAGE_DIR
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: image folder not found")
    present = {p.name for p in image_dir.iterdir()}
    absent = [f for f in files if f not in present]
    if absent:
        raise ValueError(f"{image_dir}: {len(absent)} image(s) listed in {ATTR_FILE} are missing, e.g. {absent[0]}")
    splits = {}
    for part in PARTITIONS.values():
        keep = np.flatnonzero(split == part)
        if keep.size == 0:
            raise ValueError(f"{root / PARTITION_FILE}: no images in the {part} split")
        paths = [image_dir / files[i] for i in keep]
        splits[part] = CelebADataset(paths, labels[keep], names, image_size, as_multilabel)
    tasks = (
        (MultiLabelTask("attributes", len(names)),) if as_multilabel else tuple(ClassificationTask(a, 2) for a in names)
    )
    return MultiTaskData(
        name="celeba",
        tasks=tasks,
        input_shape=(3, image_size, image_size),
        **splits,
        info={"root": str(root), "attributes": list(names), "sizes": {k: len(v) for k, v in splits.items()}},
    )


__all__ = [
    "ATTR_FILE",
    "CelebADataset",
    "IMAGE_DIR",
    "IMAGE_FOLDER",
    "NpyFolderDataset",
    "PARTITIONS",
    "PARTITION_FILE",
    "celeba",
    "cityscapes",
    "nyuv2",
]
