"""Data on disk with no code: a folder of arrays or images, per-task targets and a ``tasks.toml``.

Layout (``ROOT`` is what ``--data ROOT`` or ``[data] name = "folder"``, ``root = "ROOT"`` names)::

    ROOT/tasks.toml
    ROOT/train/inputs.npy      (N, C, H, W) array        or  ROOT/train/inputs/<id>.{npy,png,jpg,...}
    ROOT/train/<task>.npy      (N, ...) targets, row i = sample i   or  ROOT/train/<task>/<id>.{npy,png}
    ROOT/val/...               optional: without it, a seeded share of train (val_fraction, seed)
    ROOT/test/...

``tasks.toml``::

    [data]                     # every key optional
    name = "mydata"            # default: the folder's name
    inputs = "inputs"          # the input array / folder in each split
    layout = "CHW"             # of arrays with channels: "CHW" or "HWC" (images as numpy stores them)
    channels = 3               # image files: 3 (RGB) or 1 (grey)
    train = "train"            # split folders; val = false carves val from train
    val = "val"
    test = "test"
    val_fraction = 0.1
    seed = 0

    [tasks.digit]              # one table per task, in order
    kind = "classification"    # classification, multilabel, regression, segmentation, dense_regression, normals
    num_classes = 10           # the kind's fields (num_labels, num_outputs, ignore_index, ...)
    metric = "accuracy"        # the primary metric (default: the kind's first)
    target = "digit"           # its file / folder in each split (default: the task name)

Targets per kind, per sample (a stacked array adds N in front): classification and segmentation integers
(a scalar; an (H, W) map, e.g. a PNG); multilabel (num_labels,) of 0 / 1; regression (num_outputs,) or a
scalar; dense_regression (H, W) or (C, H, W); normals (3, H, W) (channels last with ``layout = "HWC"``).
Missing labels: ``ignore_index`` (-1) or NaN inside a target, or no file of a per-sample folder for that id.
Inputs of type uint8 (and image files) are scaled to [0, 1]; floating inputs are used as they are. Sample ids
are the file stems, sorted as numbers when all are numbers. Splits whose inputs and targets are all stacked
arrays are held in memory; per-sample folders are read on access.

The MTAN / LibMTL ``.npy`` layout of NYUv2 and CityScapes is this format with ``inputs = "image"``,
``layout = "HWC"``, ``test = "val"``, ``val = false`` and one table per task naming its folder (docs/data.md).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..runs import NAME_PATTERN
from ..tasks import TASK_KINDS, TaskSpec
from .base import (
    MultiTaskData,
    TensorMultiTaskDataset,
    carve_val,
    check_finite_inputs,
    iterate_batches,
    register_dataset,
)

TASKS_FILE = "tasks.toml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FILE_SUFFIXES = (".npy", *IMAGE_SUFFIXES)
LAYOUTS = ("CHW", "HWC")
DATA_KEYS = ("name", "inputs", "layout", "channels", "train", "val", "test", "val_fraction", "seed")


@dataclass(frozen=True)
class FolderFormat:
    """A parsed ``tasks.toml`` (see the module doc); ``targets`` maps each task to its file / folder stem."""

    root: Path
    name: str
    inputs: str
    layout: str
    channels: int
    splits: Mapping[str, str | None]
    val_fraction: float
    seed: int
    tasks: tuple[TaskSpec, ...]
    targets: Mapping[str, str]


def read_tasks_file(root: str | Path) -> FolderFormat:
    """Parse ``ROOT/tasks.toml``; a ValueError naming the file and the key when it does not fit."""
    root = Path(root)
    path = root / TASKS_FILE
    raw = _load_toml(root, path)

    def fail(key: str, problem: str) -> ValueError:
        return ValueError(f"{path}: {key}: {problem}")

    data = _data_table(raw, fail)
    layout, channels, val_fraction, seed = _data_options(data, fail)
    val = data.get("val", "val")
    splits = {
        "train": _file_name(data, "train", "train", fail),
        "val": None if val is False else _file_name(data, "val", "val", fail),
        "test": _file_name(data, "test", "test", fail),
    }
    specs, targets = _task_tables(raw.get("tasks"), fail)
    if splits["val"] in (splits["train"], splits["test"]) or splits["train"] == splits["test"]:
        raise fail("data", f"train, val and test must be different folders, got {splits}")
    return FolderFormat(
        root=root,
        name=_dataset_name(data.get("name", root.resolve().name), fail),
        inputs=_file_name(data, "inputs", "inputs", fail),
        layout=layout,
        channels=channels,
        splits=splits,
        val_fraction=float(val_fraction),
        seed=seed,
        tasks=tuple(specs),
        targets=targets,
    )


_Fail = Callable[[str, str], ValueError]
"""``(key, problem) -> ValueError`` naming the ``tasks.toml`` and the key."""


def _load_toml(root: Path, path: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a data folder declares its tasks there)")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None


def _data_table(raw: Mapping[str, Any], fail: _Fail) -> Mapping[str, Any]:
    """The ``[data]`` table (empty when absent), after checking the file's tables and the table's keys."""
    extra = sorted(set(raw) - {"data", "tasks"})
    if extra:
        raise fail(extra[0], "unknown table; expected [data] and [tasks.NAME]")
    data = raw.get("data", {})
    if not isinstance(data, Mapping):
        raise fail("data", "expected a table")
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise fail(f"data.{unknown[0]}", f"unknown key; accepted: {', '.join(DATA_KEYS)}")
    return data


def _data_options(data: Mapping[str, Any], fail: _Fail) -> tuple[str, int, int | float, int]:
    """``[data]``'s layout, channels, val_fraction and seed, checked in that order."""
    layout = data.get("layout", "CHW")
    if layout not in LAYOUTS:
        raise fail("data.layout", f"expected one of {list(LAYOUTS)}, got {layout!r}")
    channels = data.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise fail("data.channels", f"expected 1 or 3, got {channels!r}")
    val_fraction = data.get("val_fraction", 0.1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise fail("data.val_fraction", f"expected a number in (0, 1), got {val_fraction!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail("data.seed", f"expected an integer, got {seed!r}")
    return layout, channels, val_fraction, seed


def _file_name(data: Mapping[str, Any], key: str, default: str, fail: _Fail) -> str:
    """``[data]``'s ``key``: a file or folder name inside the data folder."""
    value = data.get(key, default)
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise fail(f"data.{key}", f"expected a file or folder name in the data folder, got {value!r}")
    return value


def _task_tables(tasks_table: Any, fail: _Fail) -> tuple[list[TaskSpec], dict[str, str]]:
    """The ``[tasks.NAME]`` tables, in order: each task's spec and its target file / folder stem."""
    if not isinstance(tasks_table, Mapping) or not tasks_table:
        raise fail("tasks", "expected one [tasks.NAME] table per task")
    specs, targets = [], {}
    for task, fields in tasks_table.items():
        if not isinstance(fields, Mapping):
            raise fail(f"tasks.{task}", "expected a table")
        fields = dict(fields)
        target = fields.pop("target", task)
        if not isinstance(target, str) or not NAME_PATTERN.fullmatch(target):
            raise fail(f"tasks.{task}.target", f"expected a file or folder name in the data folder, got {target!r}")
        kind = fields.get("kind")
        if kind not in TASK_KINDS:
            raise fail(f"tasks.{task}.kind", f"expected one of {', '.join(sorted(TASK_KINDS))}, got {kind!r}")
        if "name" in fields:
            raise fail(f"tasks.{task}.name", "the table's name is the task's name")
        try:
            specs.append(TaskSpec.from_dict({**fields, "name": task}))
        except (TypeError, ValueError) as err:
            raise fail(f"tasks.{task}", str(err)) from None
        targets[task] = target
    return specs, targets


def _dataset_name(value: Any, fail: _Fail) -> str:
    """The dataset's display name (no path part: any non-empty text on one line)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise fail("data.name", f"expected a non-empty name, got {value!r}")
    return value


# ---------------------------------------------------------------------- reading one component
def _sample_ids(folder: Path) -> dict[str, Path]:
    """``{id: file}`` of a per-sample folder (one file per id, known suffixes), sorted as numbers if all are."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES]
    by_id: dict[str, Path] = {}
    for p in files:
        if p.stem in by_id:
            raise ValueError(f"{folder}: two files for sample {p.stem!r}: {by_id[p.stem].name}, {p.name}")
        by_id[p.stem] = p
    numeric = all(s.isdigit() for s in by_id)
    return dict(sorted(by_id.items(), key=lambda kv: (int(kv[0]), kv[0]) if numeric else kv[0]))


def _source(split_dir: Path, stem: str) -> np.ndarray | dict[str, Path] | None:
    """A stacked array (memory-mapped), a per-sample folder's ``{id: file}``, or None when neither exists."""
    array, folder = split_dir / f"{stem}.npy", split_dir / stem
    if array.is_file() and folder.is_dir():
        raise ValueError(f"{split_dir}: both {array.name} and {folder.name}/ exist; keep one")
    if array.is_file():
        try:
            return np.load(array, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{array}: cannot read as .npy ({err})") from None
    if folder.is_dir():
        return _sample_ids(folder)
    return None


def _read_file(path: Path, channels: int | None) -> np.ndarray:
    """One sample's array: ``.npy`` as stored; an image file as (H, W) (``channels`` None or 1) or (H, W, 3)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as im:
            if channels == 3:
                return np.asarray(im.convert("RGB"))
            return np.asarray(im.convert("L") if channels == 1 and im.mode not in ("L", "I", "I;16", "F") else im)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read ({err})") from None


def _channels_first(arr: np.ndarray, layout: str, channels: int | None) -> np.ndarray:
    """(H, W) -> (1, H, W) when ``channels`` is 1; (H, W, C) -> (C, H, W) for layout HWC."""
    if arr.ndim == 2 and channels == 1:
        return arr[None]
    if arr.ndim == 3 and layout == "HWC":
        return arr.transpose(2, 0, 1)
    return arr


class _Reader:
    """Turns raw arrays of one task (or the inputs) into tensors, naming the file in every error."""

    def __init__(self, spec: TaskSpec | None, layout: str, channels: int) -> None:
        self.spec, self.layout, self.channels = spec, layout, channels

    def inputs(self, arr: np.ndarray, where: Path | str, image_file: bool = False) -> Tensor:
        """(C, H, W) float32: uint8 and image files scaled to [0, 1]."""
        if image_file:
            arr = arr if arr.ndim == 3 else arr[:, :, None]
            arr = arr.transpose(2, 0, 1)
        else:
            arr = arr[None] if arr.ndim == 2 else _channels_first(arr, self.layout, None)
        if arr.ndim != 3:
            raise ValueError(f"{where}: expected an input of shape (C, H, W) (layout {self.layout}), got {arr.shape}")
        if not image_file:  # image files hold no NaN
            check_finite_inputs(arr, where, stacked=False)
        return self._input_tensor(arr, where)

    def stacked_inputs(self, arr: np.ndarray, where: Path) -> Tensor:
        if arr.ndim == 3:
            arr = arr[:, None]
        elif arr.ndim == 4 and self.layout == "HWC":
            arr = arr.transpose(0, 3, 1, 2)
        if arr.ndim != 4:
            raise ValueError(f"{where}: expected inputs of shape (N, C, H, W) (layout {self.layout}), got {arr.shape}")
        check_finite_inputs(arr, where)
        return self._input_tensor(arr, where)

    @staticmethod
    def _input_tensor(arr: np.ndarray, where: Path | str) -> Tensor:
        if arr.dtype == np.uint8:
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 255.0)
        if arr.dtype == np.uint16:
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 65535.0)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{where}: inputs must be uint8 or floating, got dtype {arr.dtype}")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def target(self, arr: np.ndarray, where: Path | str, hw: tuple[int, int], batch: int | None = None) -> Tensor:
        """A target as the task's spec wants it (``batch`` = N for a stacked array, None for one sample)."""
        spec = self.spec
        lead = () if batch is None else (batch,)
        if batch is not None and (arr.ndim == 0 or arr.shape[0] != batch):
            raise ValueError(f"{where}: expected {batch} rows (one per input), got shape {arr.shape}")
        arr = np.asarray(arr)
        body = arr.shape[len(lead) :]
        layout = spec.TARGET_LAYOUT[1:]  # without B
        if layout == "C" and body == ():  # a scalar per sample: one output
            arr = arr.reshape(*lead, 1)
        elif layout == "" and body == (1,):
            arr = arr.reshape(lead)
        elif layout == "HW" and len(body) == 3 and 1 in (body[0], body[-1]):
            arr = arr.reshape(*lead, *(body[1:] if body[0] == 1 else body[:-1]))
        elif layout == "CHW":
            if len(body) == 2:
                arr = arr.reshape(*lead, 1, *body)
            elif len(body) == 3 and self.layout == "HWC":
                arr = np.moveaxis(arr, -1, len(lead))
        want = tuple(spec.out_channels if d == "C" else hw[0] if d == "H" else hw[1] for d in layout)
        body = tuple(arr.shape[len(lead) :])
        if body != want:
            channels_last = " (channels last with layout HWC)" if "C" in layout and len(want) == 3 else ""
            raise ValueError(
                f"{where}: task {spec.name!r} ({spec.kind}) expects a target of shape {want} per sample"
                f"{channels_last}, got {body}"
            )
        if spec.TARGET_INTEGER:
            if np.issubdtype(arr.dtype, np.floating):
                if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                    raise ValueError(
                        f"{where}: task {spec.name!r} ({spec.kind}) expects integer labels "
                        f"(ignore_index for a missing one), got fractions or NaN"
                    )
            elif not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{where}: task {spec.name!r} expects integer labels, got dtype {arr.dtype}")
            tensor = torch.from_numpy(np.array(arr, dtype=np.int64, order="C"))  # keeps 0-d
        else:
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"{where}: task {spec.name!r} expects numbers, got dtype {arr.dtype}")
            tensor = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
        try:
            spec.validate_target(tensor if batch is not None else tensor.unsqueeze(0), batch or 1)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return tensor

    def missing(self, hw: tuple[int, int]) -> Tensor:
        """One sample's target with no label (ignore_index or NaN everywhere)."""
        spec = self.spec
        shape = tuple(spec.out_channels if d == "C" else hw[0] if d == "H" else hw[1] for d in spec.TARGET_LAYOUT[1:])
        if spec.TARGET_INTEGER:
            return torch.full(shape, getattr(spec, "ignore_index", -1), dtype=torch.int64, device="cpu")
        return torch.full(shape, math.nan, dtype=torch.float32, device="cpu")


class FolderSplit(Dataset):
    """One split with at least one per-sample folder: items read on access (``(image, {task: target})``)."""

    def __init__(
        self,
        split_dir: Path,
        fmt: FolderFormat,
        inputs: np.ndarray | dict[str, Path],
        targets: Mapping[str, np.ndarray | dict[str, Path]],
        index: Sequence[int] | None = None,
    ) -> None:
        self.split_dir, self.fmt = split_dir, fmt
        self.inputs, self.targets = inputs, dict(targets)
        self.ids = list(inputs) if isinstance(inputs, dict) else [str(i) for i in range(len(inputs))]
        self.index = list(range(len(self.ids))) if index is None else list(index)
        self.readers = {t.name: _Reader(t, fmt.layout, fmt.channels) for t in fmt.tasks}
        self.input_reader = _Reader(None, fmt.layout, fmt.channels)
        self.hw: tuple[int, int] = tuple(self._input(0).shape[1:])
        self[0]  # a target of the wrong shape or type fails now, naming its file, not in the middle of a run

    def subset(self, index: Sequence[int]) -> FolderSplit:
        return FolderSplit(self.split_dir, self.fmt, self.inputs, self.targets, [self.index[i] for i in index])

    def __len__(self) -> int:
        return len(self.index)

    def _input(self, k: int) -> Tensor:
        i = self.index[k]
        if isinstance(self.inputs, dict):
            path = self.inputs[self.ids[i]]
            image = path.suffix.lower() != ".npy"
            x = self.input_reader.inputs(_read_file(path, self.fmt.channels if image else None), path, image)
            where = path
        else:
            where = f"{self.split_dir / self.fmt.inputs}.npy[{i}]"
            x = self.input_reader.inputs(np.asarray(self.inputs[i]), where)
        if hasattr(self, "hw") and tuple(x.shape[1:]) != self.hw:
            raise ValueError(f"{where}: input of size {tuple(x.shape[1:])}, but the split's first is {self.hw}")
        return x

    def __getitem__(self, k: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= k < len(self.index):
            raise IndexError(f"{self.split_dir}: index {k} out of range for {len(self.index)} items")
        x, i, out = self._input(k), self.index[k], {}
        for task, source in self.targets.items():
            reader = self.readers[task]
            if isinstance(source, dict):
                path = source.get(self.ids[i])
                out[task] = (
                    reader.missing(self.hw) if path is None else reader.target(_read_file(path, None), path, self.hw)
                )
            else:
                where = f"{self.split_dir / self.fmt.targets[task]}.npy[{i}]"
                out[task] = reader.target(np.asarray(source[i]), where, self.hw)
        return x, out


def _read_split(fmt: FolderFormat, split: str) -> Dataset:
    split_dir = fmt.root / fmt.splits[split]
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: split folder not found (data.{split} in {fmt.root / TASKS_FILE})")
    inputs = _source(split_dir, fmt.inputs)
    if inputs is None:
        raise FileNotFoundError(f"{split_dir}: no {fmt.inputs}.npy nor {fmt.inputs}/ (data.inputs)")
    n = len(inputs)
    if n == 0:
        raise ValueError(f"{split_dir / fmt.inputs}: no samples")
    targets = {}
    for spec in fmt.tasks:
        stem = fmt.targets[spec.name]
        source = _source(split_dir, stem)
        if source is None:
            raise FileNotFoundError(f"{split_dir}: no {stem}.npy nor {stem}/ for task {spec.name!r}")
        if isinstance(source, dict):
            ids = set(inputs) if isinstance(inputs, dict) else {str(i) for i in range(n)}
            stray = sorted(set(source) - ids)
            if stray:
                raise ValueError(f"{split_dir / stem}: file(s) for no input, e.g. {source[stray[0]].name}")
        elif len(source) != n:
            raise ValueError(f"{split_dir / stem}.npy: {len(source)} rows but {n} inputs in {split_dir / fmt.inputs}")
        targets[spec.name] = source
    if isinstance(inputs, dict) or any(isinstance(s, dict) for s in targets.values()):
        if not isinstance(inputs, dict):  # stacked inputs read per item: checked whole now, not mid-training
            check_finite_inputs(inputs, split_dir / f"{fmt.inputs}.npy")
        return FolderSplit(split_dir, fmt, inputs, targets)
    x = _Reader(None, fmt.layout, fmt.channels).stacked_inputs(np.asarray(inputs), split_dir / f"{fmt.inputs}.npy")
    hw = tuple(x.shape[2:])
    ys = {
        spec.name: _Reader(spec, fmt.layout, fmt.channels).target(
            np.asarray(targets[spec.name]), split_dir / f"{fmt.targets[spec.name]}.npy", hw, batch=n
        )
        for spec in fmt.tasks
    }
    return TensorMultiTaskDataset(x, ys)


def _take(dataset: Dataset, index: Sequence[int]) -> Dataset:
    if isinstance(dataset, TensorMultiTaskDataset):
        return TensorMultiTaskDataset(*dataset.batch(torch.as_tensor(index, dtype=torch.long)))
    return dataset.subset(index)


def _shape(dataset: Dataset) -> tuple[int, int, int]:
    return (
        tuple(dataset.images.shape[1:]) if isinstance(dataset, TensorMultiTaskDataset) else tuple(dataset[0][0].shape)
    )


@register_dataset("folder")
def folder(root: str | Path) -> MultiTaskData:
    """A data folder with a ``tasks.toml`` (format: :mod:`nas_mtl.data.folder`); no code needed."""
    fmt = read_tasks_file(root)
    train = _read_split(fmt, "train")
    info: dict[str, Any] = {"root": str(Path(root).resolve())}
    if fmt.splits["val"] is not None and (fmt.root / fmt.splits["val"]).is_dir():
        val = _read_split(fmt, "val")
    else:
        train_idx, val_idx = carve_val(len(train), fmt.val_fraction, fmt.seed, fmt.name)
        train, val = _take(train, train_idx), _take(train, val_idx)
        info["val_indices"] = val_idx
    test = _read_split(fmt, "test")
    shapes = {split: _shape(ds) for split, ds in (("train", train), ("val", val), ("test", test))}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{fmt.root}: inputs differ in shape between splits: {shapes}")
    return MultiTaskData(fmt.name, fmt.tasks, shapes["train"], train, val, test, info=info)


# ---------------------------------------------------------------------- nas-mtl data check
def summarize(data: MultiTaskData, batch_size: int = 256) -> dict[str, Any]:
    """Read every sample of every split (checking each target) and summarise: sizes, input range, and per task
    the labelled samples, the classes seen (integer tasks) or the range of the labelled values."""
    out: dict[str, Any] = {"name": data.name, "input_shape": list(data.input_shape), "splits": {}}
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        lo, hi, n = math.inf, -math.inf, 0
        tasks: dict[str, dict[str, Any]] = {
            t.name: {"labelled": 0, "min": math.inf, "max": -math.inf, "classes": set()} for t in data.tasks
        }
        for x, y in iterate_batches(dataset, batch_size, shuffle=False):
            n += x.shape[0]
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            for t in data.tasks:
                target, s = y[t.name], tasks[t.name]
                t.validate_target(target, x.shape[0])
                s["labelled"] += int(t.labelled(target).sum())
                if t.TARGET_INTEGER:
                    s["classes"] |= set(target[target != getattr(t, "ignore_index", -1)].unique().tolist())
                else:
                    values = target[~torch.isnan(target)]
                    if values.numel():
                        s["min"], s["max"] = min(s["min"], float(values.min())), max(s["max"], float(values.max()))
        for t in data.tasks:
            s = tasks[t.name]
            s["missing"] = n - s["labelled"]
            if t.TARGET_INTEGER:
                s["classes"] = sorted(s.pop("classes"))
                del s["min"], s["max"]
            else:
                del s["classes"]
                if s["min"] == math.inf:
                    s["min"] = s["max"] = None
        out["splits"][split] = {"samples": n, "input_min": lo, "input_max": hi, "tasks": tasks}
    return out


def format_summary(summary: Mapping[str, Any], tasks: Sequence[TaskSpec]) -> str:
    """The summary as the lines ``nas-mtl data check`` prints."""
    lines = [f"{summary['name']}: inputs {tuple(summary['input_shape'])}"]
    for split, s in summary["splits"].items():
        lines.append(f"  {split}: {s['samples']} samples, inputs in [{s['input_min']:.4g}, {s['input_max']:.4g}]")
        for t in tasks:
            row = s["tasks"][t.name]
            if "classes" in row:
                seen = row["classes"]
                what = f"classes {seen}" if len(seen) <= 12 else f"{len(seen)} classes in [{seen[0]}, {seen[-1]}]"
            else:
                what = "no values" if row["min"] is None else f"values in [{row['min']:.4g}, {row['max']:.4g}]"
            lines.append(
                f"    {t.name} ({t.kind}, metric {t.primary_metric}): {row['labelled']} labelled, "
                f"{row['missing']} missing; {what}"
            )
    return "\n".join(lines)


__all__ = [
    "FolderFormat",
    "FolderSplit",
    "TASKS_FILE",
    "folder",
    "format_summary",
    "read_tasks_file",
    "summarize",
]
