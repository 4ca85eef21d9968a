"""A training run's curves in its run folder (``curves.csv``): written each epoch, read back for reports."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .layout import CURVES
from .runs import replace_atomic

CURVE_COLUMNS = ("epoch", "task", "train_loss", "val_loss", "metric", "val_metric", "seconds")


def write_curves(history: Sequence[Mapping[str, Any]], specs: Sequence, path: Path) -> None:
    """``curves.csv`` from a run's history: per epoch and task the mean training loss, the validation loss and
    the validation value of the task's primary metric (empty where a task had no label)."""
    lines = [",".join(CURVE_COLUMNS)]
    for record in history:
        for t in specs:
            metric = t.primary_metric
            cells = (
                record["epoch"],
                t.name,
                record["train_loss"].get(t.name, ""),
                record.get("val_loss", {}).get(t.name, ""),
                metric,
                record["val"].get(t.name, {}).get(metric, ""),
                record["seconds"],
            )
            lines.append(",".join(repr(c) if isinstance(c, float) else str(c) for c in cells))
    replace_atomic(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def read_curves(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``curves.csv`` (:func:`write_curves`): ``epoch`` an int, ``task`` and ``metric``
    strings, the other columns floats or None (an empty cell: a task without labels there).

    Raises:
        ValueError: a damaged file (not text, another header, a short line, a cell that is not a number), in one
            line naming the file and the line; the file is left as it is.
    """
    action = "restore it from a backup or delete it to report that run without its curves"
    try:
        lines = list(csv.reader(Path(path).read_text().splitlines()))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: damaged training curves (not text); {action}") from None
    if not lines or tuple(lines[0]) != CURVE_COLUMNS:
        raise ValueError(f"{path}: damaged training curves (header is not {','.join(CURVE_COLUMNS)}); {action}")
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) != len(CURVE_COLUMNS):
            raise ValueError(
                f"{path}: damaged training curves (line {number}: {len(cells)} cells, expected "
                f"{len(CURVE_COLUMNS)}); {action}"
            )
        row: dict[str, Any] = dict(zip(CURVE_COLUMNS, cells))
        try:
            row["epoch"] = int(row["epoch"])
            for column in ("train_loss", "val_loss", "val_metric", "seconds"):
                row[column] = float(row[column]) if row[column] else None
        except ValueError as err:
            raise ValueError(f"{path}: damaged training curves (line {number}: {err}); {action}") from None
        rows.append(row)
    return rows


__all__ = ["CURVES", "CURVE_COLUMNS", "read_curves", "write_curves"]
