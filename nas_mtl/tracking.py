"""Tracking: mirror a study's finished arm runs and searches into MLflow (``[tracking] mlflow = URI``).

The run folder stays the record; MLflow gets a copy to browse and compare. Every arm run (arm, balancer, seed;
also the runs of a ``[grid]``) and every search becomes one MLflow run in the experiment named after the study:

- an arm run: params (arm, task, balancer, seed, search seed, graph key, coupling, the study's training settings
  as ``train.KEY``), per-epoch metrics from its ``curves.csv`` (``epoch/train_loss/TASK``,
  ``epoch/val_loss/TASK``, ``epoch/val/TASK/METRIC``, ``epoch/seconds``; step = epoch), final metrics from its
  row (``test/TASK/METRIC``, ``val/TASK/METRIC``, ``params``, ``macs``, ``train_seconds``, ...), and as
  artifacts its JSON files (graph, model, result, row), ``curves.csv`` and two figures (topology, curves);
- a search: params (method, seed, the method's options, storage URLs redacted), metrics (``search_seconds`` and
  the numbers of its ``info`` as ``info/...``), and as artifacts its JSON files and figures.

An arm run also gets ``delta_m``: its Δm (%) against the single-task nets finished so far, as the report computes
it (:func:`~nas_mtl.report.runs_table`), with step = the number of single-task runs in that reference. The
reference grows while a study runs, so each later mirroring logs the run's Δm again where it changed (the metric's
latest value is the one to read; its history shows the reference growing).

Every run is the child of one *study run* (``study NAME``, folder ``.``), created by the first mirroring and
finished by :func:`log_study` once the report is written: the report's files (``report.md``, ``report.html``,
``summary.csv``, ``runs.csv``, ``verdict.json``, figures) as artifacts, each arm's mean Δm and its 95 % interval
as metrics (``delta_m/ARM/BALANCER/mean``, ``.../ci_low``, ``.../ci_high``), and the verdict's conclusion as the run's
description. The experiment is marked as model development (tag ``mlflow.experimentKind``, where not set), so
MLflow opens it in its training-runs view.

Logging is idempotent: each MLflow run is tagged with its run folder and sub-folder and with a digest of the
files it mirrors. Mirroring again keeps the runs already logged with that digest and replaces the others (a
logging attempt cut short, a run retrained since), so a resumed study never duplicates runs. A failure on
MLflow's side never costs a result: the study's files are written first, a tracking error is a one-line
warning, and the next run of the study logs what is missing. What MLflow itself logs while we mirror (warnings
with tracebacks about a damaged store, its INFO lines about database tables) is caught: each warning becomes one
line of a ``tracking:`` warning, the rest is dropped.

The nas_mtl modules this one uses are imported in its functions: :mod:`nas_mtl.study` imports this module (for
its config), and reading a study file or ``--help`` need not load MLflow, matplotlib or optuna.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mlflow_store import (  # noqa: F401  (FILE_STORE_ENV, _file_store_allowed: for tests and callers)
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FILE_STORE_ENV,
    INSTALL,
    artifact_location,
)
from .mlflow_store import client_class as _client_class
from .mlflow_store import experiment_id as _experiment_id
from .mlflow_store import guarded as _guarded
from .mlflow_store import is_number as _is_number
from .mlflow_store import log_batches as _log_batches
from .mlflow_store import name as _name
from .mlflow_store import part as _part

FORMAT = "nas_mtl.tracking/2"
"""Part of every digest: a new way of logging (this module's) replaces the runs logged the old way."""
RUN_DIR_TAG = "nas_mtl.run_dir"
FOLDER_TAG = "nas_mtl.folder"
DIGEST_TAG = "nas_mtl.digest"
KIND_TAG = "nas_mtl.kind"
LOGGED_AT_TAG = "nas_mtl.logged_at"
"""When the run was logged (seconds since the epoch): MLflow's start time is the run's own, from its record."""
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
STUDY_FOLDER = "."
"""The folder tag of a study's own run (the parent of its arm runs and searches)."""
DELTA_M = "delta_m"
_FIGURES = (".png", ".svg", ".pdf")


@dataclass(frozen=True)
class TrackingConfig:
    """``[tracking]``: where a study's finished arm runs and searches are mirrored.

    Args:
        mlflow: an MLflow tracking URI (file:./mlruns, sqlite:///mlflow.db, http://HOST:5000): each arm run and
            search becomes one MLflow run in the experiment named after the study (needs pip install -e
            ".[tracking]"); none: no tracking.
    """

    mlflow: str | None = None

    def __post_init__(self) -> None:
        if self.mlflow is not None and (not isinstance(self.mlflow, str) or not self.mlflow.strip()):
            raise ValueError(f"tracking config: mlflow must be a tracking URI or none, got {self.mlflow!r}")


@dataclass(frozen=True)
class Mirrored:
    """What :func:`mirror_study` did: MLflow runs ``logged`` (new or replacing a stale one), ``kept`` (logged
    before with the same files)."""

    logged: int
    kept: int


@dataclass(frozen=True)
class _Entry:
    """A finished arm run or search: ``kind`` ("arm", "grid" or "search"), its folder (``key``: relative to the
    run folder, posix) and the file that marks it finished (``record``: row.json or search.json)."""

    kind: str
    folder: Path
    key: str
    record: Path


def require_mlflow() -> None:
    """Raise ValueError (naming the install command) when MLflow is not installed: a study checks before it trains."""
    _client_class()


def mirror_study(
    run_dir: str | Path, experiment: str, uri: str, progress: bool = False, only: str | None = None
) -> Mirrored | None:
    """Log every finished arm run and search of the study in ``run_dir`` to MLflow at ``uri``, in experiment
    ``experiment`` (see the module doc); returns what it did, or None after a tracking error (a warning).
    ``only``: the one run folder (relative, e.g. ``arms/hard/equal/seed0``) to log, as a running study does after
    each run (found by folder: the study's other runs are not read).

    Raises:
        ValueError: MLflow is not installed.
    """
    from .storage import redact

    run_dir = Path(run_dir).resolve()
    done = _guarded(uri, run_dir, lambda client: _mirror(client, experiment, run_dir, uri, only))
    if done is None:
        return None
    if progress:
        print(
            f"MLflow ({redact(uri)}, experiment {experiment!r}): {done.logged} run(s) logged, {done.kept} were there",
            file=sys.stderr,
            flush=True,
        )
    return done


def log_study(run_dir: str | Path, experiment: str, uri: str, report_dir: str | Path | None = None) -> bool:
    """Finish the study run of ``run_dir`` in MLflow (see the module doc) with the report in ``report_dir``
    (default ``RUN_DIR/report``, as :func:`~nas_mtl.report.write_report` writes it): its files as artifacts, each
    arm's Δm as metrics, the verdict's conclusion as the description. Returns False after a tracking error (a
    warning).

    Raises:
        ValueError: MLflow is not installed.
    """
    run_dir = Path(run_dir).resolve()
    report = Path(report_dir) if report_dir is not None else run_dir / "report"
    return _guarded(uri, run_dir, lambda client: _log_study(client, experiment, run_dir, uri, report)) is not None


def _entries(run_dir: Path, only: str | None = None) -> list[_Entry]:
    """The finished runs of the study, or only the one in folder ``only`` (found without walking the study)."""
    from .layout import ROW, SEARCH_DONE

    if only is not None:
        kind = {"arms": "arm", "grid": "grid", "search": "search"}.get(only.split("/")[0])
        record = run_dir / only / (SEARCH_DONE if kind == "search" else ROW)
        return [_Entry(kind, record.parent, only, record)] if kind is not None and record.is_file() else []
    found = [("arm", p) for p in sorted(run_dir.glob(f"arms/**/{ROW}"))]
    found += [("grid", p) for p in sorted(run_dir.glob(f"grid/**/{ROW}"))]
    found += [("search", p) for p in sorted(run_dir.glob(f"search/**/{SEARCH_DONE}"))]
    return [_Entry(kind, p.parent, p.parent.relative_to(run_dir).as_posix(), p) for kind, p in found]


def _mirror(client: Any, experiment: str, run_dir: Path, uri: str = "", only: str | None = None) -> Mirrored:
    experiment_id = _experiment_id(client, experiment, artifact_location(uri, run_dir))
    entries = _entries(run_dir, only)
    # after each run of a running study (``only``): its MLflow runs and the study run's, not the experiment's
    logged_before = _logged_runs(client, experiment_id, run_dir, None if only is None else (only, STUDY_FOLDER))
    settings = _settings(run_dir)
    parent = _study_run(client, experiment_id, experiment, run_dir, logged_before.get(STUDY_FOLDER, []), settings)
    scores = _delta_ms(run_dir) if any(e.kind == "arm" for e in entries) else {}
    logged = kept = 0
    for entry in entries:
        digest = _digest(entry)
        before = logged_before.get(entry.key, [])
        same = [r for r in before if r.data.tags.get(DIGEST_TAG) == digest and r.info.status == "FINISHED"]
        for run in before:
            if not same or run is not same[0]:
                client.delete_run(run.info.run_id)  # an attempt cut short, a run retrained since, a duplicate
        score = scores.get(entry.key)
        if same:
            kept += 1
            run_id = same[0].info.run_id
            if same[0].data.tags.get(PARENT_TAG) != parent:  # the study run was deleted and made again
                client.set_tag(run_id, PARENT_TAG, parent)
            if score is not None and same[0].data.metrics.get(DELTA_M) != score[0]:  # the reference grew
                client.log_metric(run_id, DELTA_M, score[0], int(time.time() * 1000), score[1])
            continue
        tags = {RUN_DIR_TAG: str(run_dir), FOLDER_TAG: entry.key, KIND_TAG: entry.kind, PARENT_TAG: parent}
        if entry.kind == "search":
            _log_search(client, experiment_id, entry, tags, digest, settings)
        else:
            _log_arm(client, experiment_id, entry, tags, digest, settings, score)
        logged += 1
    return Mirrored(logged, kept)


def _study_run(
    client: Any, experiment_id: str, experiment: str, run_dir: Path, before: list[Any], settings: Mapping[str, Any]
) -> str:
    """The id of the study's own run (made here the first time, RUNNING until :func:`log_study`)."""
    for extra in before[1:]:
        client.delete_run(extra.info.run_id)
    if before:
        return str(before[0].info.run_id)
    tags = {RUN_DIR_TAG: str(run_dir), FOLDER_TAG: STUDY_FOLDER, KIND_TAG: "study", LOGGED_AT_TAG: f"{time.time():.3f}"}
    run = client.create_run(experiment_id, tags=tags, run_name=f"study {experiment}")
    params = {f"train.{k}": v for k, v in settings.get("train", {}).items()}
    params["run_dir"] = str(run_dir)
    _log_batches(client, run.info.run_id, params, [])
    return str(run.info.run_id)


def _log_study(client: Any, experiment: str, run_dir: Path, uri: str, report: Path) -> bool:
    import pandas as pd

    from .runs import read_json

    experiment_id = _experiment_id(client, experiment, artifact_location(uri, run_dir))
    before = _logged_runs(client, experiment_id, run_dir).get(STUDY_FOLDER, [])
    parent = _study_run(client, experiment_id, experiment, run_dir, before, _settings(run_dir))
    if before and before[0].info.status != "RUNNING":
        client.update_run(parent, status="RUNNING")
    now = int(time.time() * 1000)
    metrics = []
    summary_file = report / "summary.csv"
    if summary_file.is_file():
        summary = pd.read_csv(summary_file)
        for _, row in summary.iterrows():
            key = _name(DELTA_M, str(row["arm"]), str(row["balancer"]))
            # every key a leaf (a file store keeps a key as a file: delta_m/A/B cannot also be a folder of others)
            for column, part in ((DELTA_M, "mean"), (f"{DELTA_M} ci_low", "ci_low"), (f"{DELTA_M} ci_high", "ci_high")):
                if column in row and _is_number(row[column]) and math.isfinite(row[column]):
                    metrics.append((f"{key}/{part}", float(row[column]), 0))
    _log_batches(client, parent, {}, [(k, v, now, step) for k, v, step in metrics])
    for path in sorted(report.iterdir()) if report.is_dir() else ():
        if path.is_file():
            client.log_artifact(parent, str(path))
        elif path.is_dir():
            client.log_artifacts(parent, str(path), path.name)
    verdict_file = report / "verdict.json"
    if verdict_file.is_file():
        found = read_json(verdict_file, "verdict", ())
        lines = [" ".join(found.get("conclusion") or [])]
        if found.get("recommended"):
            lines.append(f"Recommended: {found['recommended']} (run folder {found.get('run') or 'not recorded'}).")
        client.set_tag(parent, NOTE_TAG, "\n\n".join(x for x in lines if x))
        if found.get("recommended"):
            client.set_tag(parent, "nas_mtl.recommended", str(found["recommended"]))
    client.set_terminated(parent, "FINISHED")
    return True


def _delta_ms(run_dir: Path) -> dict[str, tuple[float, int]]:
    """``folder -> (Δm %, single-task runs in the reference)`` of the arm runs with a Δm so far (the single-task
    nets of one seed share their seed's); empty while some task has no single-task run yet."""
    from .layout import load_rows
    from .report.tables import SINGLE, runs_table

    try:
        rows = load_rows(run_dir)
        runs = runs_table(rows)
    except (ValueError, KeyError, OSError):  # no single-task run yet (or no run): no Δm yet
        return {}
    n = sum(1 for r in rows if r.arm == SINGLE)
    out = {}
    for folders, value in zip(runs["run_dir"], runs["delta_m"]):
        if isinstance(folders, str) and _is_number(value) and math.isfinite(value):
            out.update({folder: (float(value), n) for folder in folders.split(";")})
    return out


def _logged_runs(
    client: Any, experiment_id: str, run_dir: Path, folders: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """The active MLflow runs this run folder logged before, by sub-folder (only those of ``folders``, found by
    MLflow's filter, when given)."""
    out: dict[str, list[Any]] = {}
    quotable = folders is not None and not any("'" in f or "\\" in f for f in folders)
    queries = [f"tags.`{FOLDER_TAG}` = '{folder}'" for folder in folders] if quotable else [""]
    for query in queries:
        token = None
        while True:
            page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            for run in page:
                if run.data.tags.get(RUN_DIR_TAG) == str(run_dir) and FOLDER_TAG in run.data.tags:
                    out.setdefault(run.data.tags[FOLDER_TAG], []).append(run)
            token = page.token
            if not token:
                break
    return out


def _settings(run_dir: Path) -> Mapping[str, Any]:
    """The study record's settings (training settings, search options); empty where there is none."""
    from .layout import STUDY_RECORD

    try:
        return json.loads((run_dir / STUDY_RECORD).read_text()).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _digest(entry: _Entry) -> str:
    """What the MLflow run mirrors: the finishing record, and the curves of an arm run."""
    from .layout import CURVES

    h = hashlib.sha256(FORMAT.encode())
    for path in (entry.record, entry.folder / CURVES):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _log_arm(
    client: Any,
    experiment_id: str,
    entry: _Entry,
    tags: dict[str, str],
    digest: str,
    settings: Mapping[str, Any],
    score: tuple[float, int] | None,
) -> None:
    from .graph import graph_key
    from .layout import CURVES, RESULT, read_row
    from .plots import curves_plot, draw_topology
    from .runs import INTEGER, read_record

    row = read_row(entry.record, f"delete {entry.folder} to retrain that run (nas-mtl study)")
    graph = row.graph
    params: dict[str, Any] = {"arm": row.arm, "balancer": row.balancer, "seed": row.seed}
    params.update({"graph": graph_key(graph), "graph_name": graph.meta.get("name", "")})
    for key, value in (("task", row.task), ("search_seed", row.search_seed)):
        if value is not None:
            params[key] = value
    params.update({f"coupling.{k}": v for k, v in (row.coupling or {}).items()})
    params.update({f"train.{k}": v for k, v in settings.get("train", {}).items()})
    metrics = [
        (_name(split, task, m), v, 0)
        for split, values in (("test", row.test), ("val", row.val))
        for task, d in values.items()
        for m, v in d.items()
    ]
    metrics += [(k, getattr(row, k), 0) for k in ("params", "macs", "train_seconds", "search_seconds")]
    if score is not None:
        metrics.append((DELTA_M, score[0], score[1]))
    result = entry.folder / RESULT
    if result.is_file():
        done = read_record(
            result, "training result", {}, f"retrain the run in {entry.folder}", {"skipped_steps": INTEGER}
        )
        metrics.append(("skipped_steps", done.get("skipped_steps"), 0))
    curves = _read_curves(entry.folder / CURVES)
    metrics += curves
    name = " ".join(str(p) for p in (row.arm, row.task, row.balancer, f"seed{row.seed}") if p)
    files = [(p, None) for p in sorted(entry.folder.glob("*.json"))]
    files += [(p, None) for p in [entry.folder / CURVES] if p.is_file()]

    def figures(out: Path) -> None:
        draw_topology(graph, name, out / "topology.png")
        panels: dict[str, dict[str, list]] = {}
        labels = {}
        for key, value, epoch in curves:
            parts = key.split("/")
            if parts[:2] == ["epoch", "val"] and len(parts) == 4:
                panels.setdefault(parts[2], {}).setdefault(f"seed {row.seed}", []).append((epoch, value, value, value))
                labels[parts[2]] = f"val {parts[3]}"
        if panels:
            curves_plot(panels, labels, f"{name}: validation by epoch", out / "curves.png")

    seconds = row.train_seconds or 0.0
    _log_run(client, experiment_id, name, tags, digest, params, metrics, files, figures, entry.record, seconds)


def _read_curves(path: Path) -> list[tuple[str, float, int]]:
    """``(key, value, epoch)`` of every value in a run's ``curves.csv`` (empty cells: a task without labels)."""
    from .train import read_curves

    if not path.is_file():
        return []
    out = []
    seconds: dict[int, float | None] = {}
    for line in read_curves(path):
        epoch, task = line["epoch"], line["task"]
        for key, value in (
            (_name("epoch", "train_loss", task), line["train_loss"]),
            (_name("epoch", "val_loss", task), line["val_loss"]),
            (_name("epoch", "val", task, line["metric"]), line["val_metric"]),
        ):
            if value is not None:
                out.append((key, value, epoch))
        seconds.setdefault(epoch, line["seconds"])
    out += [("epoch/seconds", s, epoch) for epoch, s in seconds.items() if s is not None]
    return out


def _log_search(
    client: Any, experiment_id: str, entry: _Entry, tags: dict[str, str], digest: str, settings: Mapping[str, Any]
) -> None:
    from .graph import SharingGraph, graph_key
    from .layout import CHECKPOINT, read_search_record
    from .storage import redact

    summary = read_search_record(entry.record, f"delete {entry.folder} to rerun that search (nas-mtl study)")
    where = entry.key.split("/")[1:]  # METHOD/seedS (METHOD: a study made before search seeds)
    method = summary["method"]
    options = dict(settings.get("search", {}).get(where[0], {}))
    seed = re.fullmatch(r"seed(-?\d+)", where[-1]) if len(where) > 1 else None
    if seed is not None:
        options["seed"] = int(seed.group(1))
    graph = SharingGraph.from_dict(summary["graph"], source=str(entry.record))
    params = {"method": method, **options, "graph": graph_key(graph)}
    params = {k: redact(v) if isinstance(v, str) and "storage" in k else v for k, v in params.items()}
    info = summary.get("info", {})
    metrics = [("search_seconds", summary["seconds"], 0), *((k, v, 0) for k, v in _numbers(info, "info"))]
    if isinstance(info.get("storage"), str):
        tags = {**tags, "optuna.storage": redact(info["storage"]), "optuna.study": str(info.get("study", ""))}
    training = {p.parent for p in entry.folder.rglob(CHECKPOINT) if p.parent != entry.folder}
    files = [
        (p, p.parent.relative_to(entry.folder).as_posix() if p.parent != entry.folder else None)
        for p in sorted(entry.folder.rglob("*"))
        if p.is_file() and p.suffix in (".json", *_FIGURES) and not any(parent in training for parent in p.parents)
    ]
    name = " ".join(["search", *where])
    _log_run(client, experiment_id, name, tags, digest, params, metrics, files, None, entry.record, summary["seconds"])


def _numbers(tree: Any, prefix: str, depth: int = 3) -> Iterator[tuple[str, float]]:
    """``(key, value)`` of the numbers in nested dicts (lists skipped: histories are in the artifacts)."""
    if not isinstance(tree, Mapping) or depth == 0:
        return
    for k, v in tree.items():
        if k == "config":  # a method's options echoed in its info: logged as params
            continue
        key = f"{prefix}/{_part(str(k))}"
        if _is_number(v):
            yield key, v
        else:
            yield from _numbers(v, key, depth - 1)


def _log_run(
    client: Any,
    experiment_id: str,
    name: str,
    tags: Mapping[str, str],
    digest: str,
    params: Mapping[str, Any],
    metrics: list[tuple[str, Any, int]],
    files: list[tuple[Path, str | None]],
    figures: Callable[[Path], None] | None,
    record: Path,
    seconds: float,
) -> None:
    """One MLflow run, ending when ``record`` was written, ``seconds`` after it started; its digest tag and FINISHED
    status come last, so a run cut short is replaced next time. ``figures(folder)`` draws figures to log."""
    end = int(record.stat().st_mtime * 1000)
    start = end - int(1000 * seconds) if _is_number(seconds) and seconds > 0 else end
    tags = {**tags, LOGGED_AT_TAG: f"{time.time():.3f}"}
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=name)
    run_id = run.info.run_id
    try:
        _log_batches(client, run_id, params, [(k, v, end, step) for k, v, step in metrics])
        for path, where in files:
            client.log_artifact(run_id, str(path), where)
        if figures is not None:
            with tempfile.TemporaryDirectory() as tmp:
                figures(Path(tmp))
                for path in sorted(Path(tmp).iterdir()):
                    client.log_artifact(run_id, str(path), "figures")
        client.set_tag(run_id, DIGEST_TAG, digest)
        client.set_terminated(run_id, "FINISHED", end_time=end)
    except Exception:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise


__all__ = ["INSTALL", "Mirrored", "TrackingConfig", "log_study", "mirror_study", "require_mlflow"]
