"""Predictions of an exported network on new inputs: ``nas-mtl predict EXPORT INPUTS --out DIR``.

An export (:mod:`nas_mtl.export`) is read as data: its ``manifest.json`` names the files (checked against their
SHA-256), the input shape and the normalisation the training data had. Inputs are raw, as the dataset read them
before normalising: a ``.npy`` array (N, C, H, W), or (N, H, W, C) with ``layout="HWC"``, uint8 scaled to [0, 1];
a folder of images (PNG / JPEG, sorted by name, scaled to [0, 1]); or a data folder with a ``tasks.toml`` (its
``split``, as ``nas-mtl data check`` reads it). Each is normalised with the manifest's per-channel mean and std.

The network runs from ``weights.safetensors`` (PyTorch) or, in an export with ONNX only, from ``model.onnx``
(onnxruntime). The output folder holds ``TASK.npy`` (every raw output: logits, values, dense maps, in task
order) and ``predictions.csv``: one row per input, per classification task its predicted class index and name
(where the manifest has class names), per scalar or vector regression its values (raw targets where the
manifest records the dataset's target scaling). Dense tasks are in their ``.npy`` only.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .export import UNKNOWN, checked_file, load_exported
from .runs import check_name, read_json, run_path, write_json_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
LAYOUTS = ("CHW", "HWC")


def read_inputs(path: str | Path, shape: tuple[int, int, int], layout: str = "CHW", split: str = "test") -> np.ndarray:
    """Raw inputs (N, C, H, W) float32 from ``path`` (see the module docstring); a one-line ValueError names the
    file, the shape found and the layout when they do not fit ``shape``."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    if path.is_dir() and (path / "tasks.toml").is_file():
        from .data import create_dataset

        data = create_dataset("folder", root=str(path.resolve()))  # this folder, never a dataset of that name
        dataset = getattr(data, split, None)
        if dataset is None:
            raise ValueError(f"{path}: no {split!r} split")
        arrays = np.stack([np.asarray(dataset[i][0], dtype=np.float32) for i in range(len(dataset))])
        layout = "CHW"  # the data folder's reader gives (C, H, W) whatever the files' layout
    elif path.is_dir():
        arrays = _read_images(path, shape[0])
        layout = "HWC"
    elif path.suffix == ".npy":
        try:
            arrays = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    else:
        raise ValueError(f"{path}: expected a .npy array, a folder of images or a data folder with a tasks.toml")
    if arrays.ndim == 3:
        arrays = arrays[None]
    if arrays.ndim != 4:
        raise ValueError(f"{path}: expected (N, C, H, W) or (N, H, W, C) inputs, got shape {arrays.shape}")
    if layout == "HWC":
        arrays = arrays.transpose(0, 3, 1, 2)
    if tuple(arrays.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{path}: inputs of shape {tuple(arrays.shape[1:])} read as {layout}; the network takes (C, H, W) = "
            f"{tuple(shape)} (use --layout {'HWC' if layout == 'CHW' else 'CHW'} for the other channel order)"
        )
    if arrays.dtype == np.uint8:
        return arrays.astype(np.float32) / 255.0
    if not np.issubdtype(arrays.dtype, np.floating):
        raise ValueError(f"{path}: expected uint8 or floating inputs, got {arrays.dtype}")
    return arrays.astype(np.float32)


def _read_images(folder: Path, channels: int) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"{folder}: images give 1 or 3 channels; the network takes {channels}")
    out = []
    for f in files:
        try:
            with Image.open(f) as image:
                out.append(np.asarray(image.convert(mode), dtype=np.uint8).reshape(image.size[1], image.size[0], -1))
        except OSError as err:
            raise ValueError(f"{f}: not a readable image ({err})") from None
    try:
        return np.stack(out)
    except ValueError:
        raise ValueError(f"{folder}: images of different sizes") from None


def normalize(inputs: np.ndarray, manifest: Mapping[str, Any]) -> np.ndarray:
    """``inputs`` standardised with the manifest's ``input.normalization`` (unchanged without one)."""
    norm = (manifest.get("input") or {}).get("normalization", UNKNOWN)
    if norm == UNKNOWN:
        raise ValueError(
            "manifest.json: input.normalization is not recorded (exported from a network built in Python, or from "
            "a run trained before it was recorded): export a run folder trained by this version"
        )
    if norm is None:
        return inputs
    mean = np.asarray(norm["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(norm["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return (inputs - mean) / std


def predict(
    export_dir: str | Path, inputs: np.ndarray, batch_size: int = 256, trusted: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Every task's raw output on ``inputs`` (raw, (N, C, H, W): normalised here), by task."""
    export_dir = Path(export_dir)
    manifest = read_json(export_dir / "manifest.json", "export manifest", ("tasks", "files"), "export the run again")
    tasks = task_names(manifest, export_dir / "manifest.json")
    x = normalize(inputs, manifest)
    outputs: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    if "weights" in manifest["files"]:
        import torch

        network = load_exported(export_dir, trusted)
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = network(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))
                for t in tasks:
                    outputs[t].append(out[t].numpy())
    else:
        import onnxruntime

        model = checked_file(export_dir, manifest, "onnx", str(export_dir / "manifest.json"))
        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for i in range(0, len(x), batch_size):
            for t, value in zip(tasks, session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size])})):
                outputs[t].append(value)
    return {t: np.concatenate(v) for t, v in outputs.items()}


def task_names(manifest: Mapping[str, Any], source: str | Path) -> list[str]:
    """The manifest's task names, each a safe file name (they name the ``TASK.npy`` files written)."""
    names = []
    for i, task in enumerate(manifest.get("tasks") or []):
        name = task.get("name") if isinstance(task, Mapping) else None
        names.append(check_name(name, f"tasks[{i}].name", source))
    if not names:
        raise ValueError(f"{source}: tasks: expected a non-empty list")
    return names


def write_predictions(outputs: Mapping[str, np.ndarray], manifest: Mapping[str, Any], out_dir: str | Path) -> Path:
    """``TASK.npy`` per task and ``predictions.csv`` (see the module docstring) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = task_names(manifest, out_dir / "manifest.json")
    kinds = dict(zip(names, (t.get("kind") for t in manifest["tasks"])))
    info = manifest.get("outputs") or {}
    columns: dict[str, list[Any]] = {}
    for task, values in outputs.items():
        if task not in kinds:
            raise ValueError(f"predictions: task {task!r} is not one of the manifest's {names}")
        np.save(run_path(out_dir, f"{task}.npy"), values)
        extra = info.get(task) or {}
        if kinds[task] == "classification" and values.ndim == 2:
            index = values.argmax(1)
            columns[f"{task}.class"] = index.tolist()
            classes = extra.get("class_names")
            if classes:
                columns[f"{task}.name"] = [classes[i] if i < len(classes) else "" for i in index]
        elif values.ndim == 2 and kinds[task] == "regression":
            scale = extra.get("target_scaling")
            raw = values * scale["std"] + scale["mean"] if scale else values
            for j in range(values.shape[1]):
                columns[f"{task}.{j}" if values.shape[1] > 1 else task] = raw[:, j].tolist()
    path = out_dir / "predictions.csv"
    n = len(next(iter(outputs.values())))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", *columns])
        for i in range(n):
            writer.writerow([i, *(columns[c][i] for c in columns)])
    write_json_atomic({"inputs": n, "tasks": list(outputs), "columns": list(columns)}, out_dir / "predict.json")
    return path


__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "normalize", "predict", "read_inputs", "task_names", "write_predictions"]
