"""The MLflow side of :mod:`nas_mtl.tracking`: a client on a store URI with every failure and every line MLflow logs
turned into one-line warnings, experiments made with their artifact location and kind, batched logging, and keys
MLflow accepts. MLflow is imported in the functions (reading a study or ``--help`` need not load it)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

INSTALL = 'pip install -e ".[tracking]"'
FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's kind for training runs (its UI's "Machine learning" experiments), not GenAI traces."""
_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
_METRICS_PER_BATCH = 1000


def guarded(uri: str, run_dir: Path, work: Callable[[Any], Any]) -> Any:
    """``work(client)`` on a client of ``uri``; None after an error (one warning line, never a traceback)."""
    from .storage import redact

    client_type = client_class()
    said: list[str] = []
    try:
        with file_store_allowed(uri), mlflow_logs() as said:
            return work(client_type(tracking_uri=uri))
    except Exception as err:  # MLflow and its stores raise many kinds (unreachable server, bad URI, full disk)
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        warnings.warn(
            f"tracking: MLflow at {redact(uri)!r} failed ({redact(reason)}); the results are in {run_dir}: run the "
            "study again to log them",
            stacklevel=3,
        )
        return None
    finally:
        for line in said:
            if (uri, line) not in _SAID:  # once per process: a running study mirrors after every run
                _SAID.add((uri, line))
                warnings.warn(f"tracking: MLflow at {redact(uri)!r} said: {redact(line)}", stacklevel=3)


_SAID: set[tuple[str, str]] = set()


class _Caught(logging.Handler):
    """Collects the first line of each distinct warning or error logged (tracebacks dropped)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = next((x.strip() for x in record.getMessage().splitlines() if x.strip()), record.levelname)
        if line not in self.lines:
            self.lines.append(line)


@contextlib.contextmanager
def mlflow_logs() -> Iterator[list[str]]:
    """While MLflow works: its own log records (and those it sends to the root logger, which would otherwise make
    the root logger print to stderr from then on) go to a collector; yields the warning lines collected."""
    caught = _Caught()
    loggers = [logging.getLogger(name) for name in ("", "mlflow", "alembic")]
    saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers = [caught]
        logger.propagate = logger is loggers[0]
    try:
        yield caught.lines
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


def client_class() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ValueError(f"tracking.mlflow: MLflow is not installed; {INSTALL}") from None
    return MlflowClient


@contextlib.contextmanager
def file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; a ``file:`` URI (or a plain
    path) in a study is that choice, so it is allowed while this module logs (a value the user set is kept)."""
    if urlparse(uri).scheme not in ("", "file") or FILE_STORE_ENV in os.environ:
        yield
        return
    os.environ[FILE_STORE_ENV] = "true"
    try:
        yield
    finally:
        os.environ.pop(FILE_STORE_ENV, None)


def artifact_location(uri: str, run_dir: Path) -> str | None:
    """Where a new experiment's artifacts go: beside the database of a ``sqlite:`` store (``mlartifacts`` next to
    the file), in the study folder for another database (``RUN_DIR/mlartifacts``); None where the store decides (a
    file store keeps them inside it, a tracking server serves its own). MLflow's own default for a database store
    is ``./mlruns`` of whatever folder the command ran in, outside the store the user named."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if path and path != ":memory:":  # sqlite:///rel/x.db is relative, sqlite:////abs/x.db absolute
            return Path(path).resolve().parent.joinpath("mlartifacts").as_uri()
    if scheme in ("postgresql", "mysql", "mssql") or scheme.startswith(("postgresql+", "mysql+", "mssql+")):
        return (run_dir / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(client: Any, name: str, artifacts: str | None = None) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            made = client.create_experiment(
                name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
            return str(made)
        except Exception:  # created meanwhile by another process?
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise ValueError(
            f"experiment {name!r} is deleted in MLflow; restore it (mlflow experiments restore) to log there"
        )
    if EXPERIMENT_KIND_TAG not in found.tags:  # a kind the user chose in MLflow's UI is kept
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(found.experiment_id)


def log_batches(client: Any, run_id: str, params: Mapping[str, Any], metrics: list[tuple[str, Any, int, int]]) -> None:
    """``params`` and ``metrics`` (key, value, time in ms, step; non-numbers skipped) in MLflow's batch sizes."""
    from mlflow.entities import Metric, Param

    param_list = [Param(name(k), v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    metric_list = [Metric(k, float(v), t, step) for k, v, t, step in metrics if is_number(v)]
    for i in range(0, len(param_list), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=param_list[i : i + _PARAMS_PER_BATCH])
    for i in range(0, len(metric_list), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_list[i : i + _METRICS_PER_BATCH])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def part(text: str) -> str:
    """One component of an MLflow key: characters MLflow refuses (and a bare ``.`` / ``..``) as ``_``."""
    part = re.sub(r"[^\w.\- ]", "_", text)
    return "_" if part in ("", ".", "..") else part


def name(*parts: str) -> str:
    return "/".join(part(str(p)) for p in parts)


__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FILE_STORE_ENV",
    "INSTALL",
    "artifact_location",
    "client_class",
    "experiment_id",
    "file_store_allowed",
    "guarded",
    "is_number",
    "log_batches",
    "mlflow_logs",
    "name",
    "part",
]
