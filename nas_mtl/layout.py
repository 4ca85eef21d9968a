"""The run folder's layout: every file and folder name a run writes, the typed result row, and reading rows back.

A study's run folder::

    RUN_DIR/study.toml                           copy of the study file
    RUN_DIR/study.json                           what its results depend on (STUDY_RECORD)
    RUN_DIR/queue.json                           a distributed study's storage and study name (QUEUE_RECORD)
    RUN_DIR/grid.json                            the [grid]'s points and its best weights (GRID_RECORD)
    RUN_DIR/search/METHOD/seedS/                 one search: graph.json, search.json (SEARCH_DONE)
    RUN_DIR/arms/ARM/BALANCER/seedS/             a training run: checkpoint.pt, result.json, curves.csv,
                                                 model.json and row.json (its :class:`RunRow`, ROW)
    RUN_DIR/grid/BALANCER/seedS/                 a [grid] point's training run (laid out as an arm run)

Report, tracking and export read a run folder through this module alone; none of them imports the study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .graph import SharingGraph
from .runs import INTEGER, NUMBER, TABLE, TEXT, Kind, Schema, or_null, read_record, run_path, table_of

ROW = "row.json"
"""A study's finished arm run: its result row (``RUN_DIR/arms/ARM/BALANCER/seedS/row.json``)."""
SEARCH_DONE = "search.json"
"""A finished search (``RUN_DIR/search/METHOD/seedS/search.json``)."""
STUDY_RECORD = "study.json"
"""What a study's results depend on (``RUN_DIR/study.json``)."""
STUDY_COPY = "study.toml"
"""The copy of the study file in its run folder."""
GRID_RECORD = "grid.json"
"""``RUN_DIR/grid.json``: the ``[grid]`` runs' validation Δm and the best weights."""
QUEUE_RECORD = "queue.json"
"""``RUN_DIR/queue.json``: the storage (when it holds no password) and study of a distributed study."""
CHECKPOINT = "checkpoint.pt"
"""A training run's checkpoint (written every epoch; resumed from)."""
RESULT = "result.json"
"""A finished training run's result (metrics, times, environment)."""
CURVES = "curves.csv"
"""Per-epoch training curves in a run folder: one row per epoch and task."""
MODEL_MANIFEST = "model.json"
"""What builds a training run's network (read by :mod:`nas_mtl.export`)."""

Metrics = dict[str, dict[str, float]]


def slug(name: str) -> str:
    """A file or folder name for an arm or balancer spec ("single-task/left", "mgda:normalization=l2"): other
    characters become ``_``, and so do leading dots (never ``.``, ``..`` or a hidden name)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    dots = len(out) - len(out.lstrip("."))
    return "_" * dots + out[dots:] or "_"


def arm_label(arm: str, task: str | None) -> str:
    """``ARM`` or, for a single-task net, ``ARM/TASK``."""
    return f"{arm}/{task}" if task else arm


def search_key(method: str, seed: int) -> str:
    """``search/METHOD/seedS``: a search's folder under the run folder."""
    return f"search/{method}/seed{seed}"


def arm_key(arm: str, task: str | None, balancer: str, seed: int) -> str:
    """``arms/ARM/BALANCER/seedS``: an arm run's folder under the run folder."""
    return f"arms/{slug(arm_label(arm, task))}/{slug(balancer)}/seed{seed}"


def grid_key(balancer: str, seed: int) -> str:
    """``grid/BALANCER/seedS``: a ``[grid]`` point's training run."""
    return f"grid/{slug(balancer)}/seed{seed}"


def folder(run_dir: str | Path, key: str) -> Path:
    """The folder of run ``key`` in ``run_dir`` (refused when it would lead outside it)."""
    return run_path(run_dir, *key.split("/"))


ROW_SCHEMA: Schema = {
    "arm": TEXT,
    "task": or_null(TEXT),
    "balancer": TEXT,
    "seed": INTEGER,
    "graph": TABLE,
    "test": table_of(table_of(NUMBER)),
    "val": table_of(table_of(NUMBER)),
    "params": NUMBER,
    "macs": NUMBER,
    "train_seconds": NUMBER,
    "primary": table_of(
        Kind(
            "a [metric, higher_is_better] pair",
            lambda v: isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], bool),
        )
    ),
}
"""The fields of a result row (:data:`ROW`)."""
ROW_OPTIONAL: Schema = {
    "coupling": or_null(TABLE),
    "search_seconds": or_null(NUMBER),
    "search_seed": or_null(INTEGER),
    "env": TABLE,
}
SEARCH_SCHEMA: Schema = {"method": TEXT, "seconds": NUMBER, "graph": TABLE}
"""The fields of a finished search's record (:data:`SEARCH_DONE`); ``info`` and ``env`` are optional tables."""


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One finished arm run: what it trained, its metrics and its cost (``row.json``)."""

    arm: str
    task: str | None
    """The task of a single-task net (arm ``single-task``); None otherwise."""
    balancer: str
    seed: int
    graph: SharingGraph
    test: Metrics
    val: Metrics
    params: int
    macs: int
    train_seconds: float
    primary: Mapping[str, tuple[str, bool]]
    """Each task's primary metric and whether higher is better."""
    coupling: Mapping[str, Any] | None = None
    """A soft-sharing arm's coupling (:class:`~nas_mtl.soft.Coupling` as a dict)."""
    search_seconds: float | None = 0.0
    search_seed: int | None = None
    """The seed of the search that found a searched arm's graph."""
    env: Mapping[str, Any] | None = None
    """What the run's numbers depend on (versions, threads, device, CPU); None in rows written before it was."""
    folder: str | None = dataclasses.field(default=None, compare=False)
    """The run's folder relative to the study's (``arms/ARM/BALANCER/seedS``), set by :func:`load_rows`; not
    written to ``row.json``."""

    @property
    def label(self) -> str:
        """``ARM`` or ``ARM/TASK`` (a single-task net)."""
        return arm_label(self.arm, self.task)

    @property
    def directions(self) -> dict[str, dict[str, bool]]:
        """``{task: {primary metric: higher_is_better}}`` (what :func:`~nas_mtl.metrics.delta_m` takes)."""
        return {t: {m: bool(h)} for t, (m, h) in self.primary.items()}

    def to_dict(self) -> dict[str, Any]:
        """The row as ``row.json`` holds it."""
        return {
            "arm": self.arm,
            "task": self.task,
            "balancer": self.balancer,
            "seed": self.seed,
            "graph": self.graph.to_dict(),
            **({"coupling": dict(self.coupling)} if self.coupling is not None else {}),
            "test": self.test,
            "val": self.val,
            "params": self.params,
            "macs": self.macs,
            "train_seconds": self.train_seconds,
            "search_seconds": self.search_seconds,
            "search_seed": self.search_seed,
            **({"env": dict(self.env)} if self.env is not None else {}),
            "primary": {t: [m, h] for t, (m, h) in self.primary.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "row") -> RunRow:
        """A row from its dict (checked as :func:`read_row` checks a file)."""
        return cls(
            arm=data["arm"],
            task=data["task"],
            balancer=data["balancer"],
            seed=data["seed"],
            graph=SharingGraph.from_dict(data["graph"], source=f"{source}: graph"),
            test=data["test"],
            val=data["val"],
            params=data["params"],
            macs=data["macs"],
            train_seconds=data["train_seconds"],
            primary={t: (m, h) for t, (m, h) in data["primary"].items()},
            coupling=data.get("coupling"),
            search_seconds=data.get("search_seconds"),
            search_seed=data.get("search_seed"),
            env=data.get("env"),
        )


def as_rows(rows: Sequence[RunRow | Mapping[str, Any]]) -> list[RunRow]:
    """``rows`` as :class:`RunRow` (each given as one or as its dict, e.g. read from JSON)."""
    return [r if isinstance(r, RunRow) else RunRow.from_dict(r) for r in rows]


def read_row(path: str | Path, action: str) -> RunRow:
    """The result row in ``path`` (:data:`ROW_SCHEMA`), or one ValueError naming the file, the key and ``action``."""
    data = read_record(path, "result row", ROW_SCHEMA, action, ROW_OPTIONAL)
    try:
        return RunRow.from_dict(data, str(path))
    except ValueError as err:  # a graph that is no graph
        raise ValueError(f"{str(err).splitlines()[0]}; {action}") from None


def read_search_record(path: str | Path, action: str) -> dict[str, Any]:
    """The finished search's record in ``path`` (:data:`SEARCH_SCHEMA`), checked like :func:`read_row`."""
    return read_record(path, "search result", SEARCH_SCHEMA, action, {"info": TABLE, "env": TABLE})


def check_row_place(row: RunRow, path: Path, arm_folder: str | None) -> None:
    """Raise ValueError (one line naming ``path`` and the key) unless ``row`` is what the run of its folder
    (``[ARM/]BALANCER/seedS/row.json``; ``arm_folder``: the ARM part, None where unknown) wrote: a row copied
    from another seed, balancer or arm is never reused."""
    places = [("seed", row.seed, path.parent.name, f"seed{row.seed}")]
    places.append(("balancer", row.balancer, path.parent.parent.name, slug(row.balancer)))
    if arm_folder is not None:
        places.append(("arm", row.label, arm_folder, slug(row.label)))
    for key, value, found, want in places:
        if found != want:
            raise ValueError(
                f"{path}: {key} {value!r} does not match its folder ({found}); delete {path.parent} to retrain it"
            )


def load_rows(run_dir: str | Path) -> list[RunRow]:
    """Every finished arm run's row under ``run_dir`` (what a report is built from), each checked against its
    folder (``arms/ARM/BALANCER/seedS``)."""
    rows = []
    for p in sorted(Path(run_dir).glob(f"arms/**/{ROW}")):
        row = read_row(p, f"delete {p.parent} to retrain that run (nas-mtl study)")
        parts = p.relative_to(run_dir).parts
        check_row_place(row, p, parts[1] if len(parts) == 5 else None)
        rows.append(dataclasses.replace(row, folder="/".join(parts[:-1])))
    if not rows:
        raise ValueError(f"{run_dir}: no finished arm runs (arms/**/{ROW}); run `nas-mtl study` first")
    return rows


__all__ = [
    "CHECKPOINT",
    "CURVES",
    "GRID_RECORD",
    "MODEL_MANIFEST",
    "QUEUE_RECORD",
    "RESULT",
    "ROW",
    "ROW_OPTIONAL",
    "ROW_SCHEMA",
    "SEARCH_DONE",
    "SEARCH_SCHEMA",
    "STUDY_COPY",
    "STUDY_RECORD",
    "RunRow",
    "arm_key",
    "as_rows",
    "arm_label",
    "check_row_place",
    "folder",
    "grid_key",
    "load_rows",
    "read_row",
    "read_search_record",
    "search_key",
    "slug",
]
