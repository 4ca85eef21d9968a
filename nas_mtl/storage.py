"""Optuna storages by URL, with credentials kept out of messages, result files and command lines.

A storage is given as
  * an RDB URL: ``sqlite:///PATH``, ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (SQLAlchemy resolves
    ``postgresql://`` to psycopg 3: ``pip install -e ".[postgres]"``), ``postgresql+psycopg2://...``;
  * ``journal:PATH``: Optuna's JournalFileStorage (several processes on one machine);
  * ``env:VAR``: the URL is in environment variable VAR (nothing secret in files or on command lines);
  * ``file:PATH``: the URL is the first line of file PATH (e.g. a file only its owner can read).

Whatever is shown (errors, ``search.json``, logs) is :func:`redact`\\ ed: the password becomes ``***``.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial
from sqlalchemy.engine import URL, make_url

HEARTBEAT_S = 30
GRACE_S = 120
"""RDB storages: workers write a heartbeat every HEARTBEAT_S; a RUNNING trial silent for GRACE_S is failed
(the defaults; environment variables NAS_MTL_HEARTBEAT_S and NAS_MTL_GRACE_S set them for every process of a
deployment, workers started by a search included: :func:`heartbeat_settings`)."""
CHILD_ENV = "NAS_MTL_STORAGE_URL"
"""The environment variable through which a branch search (``--workers``) or a distributed study (``nas-mtl study
--workers``) hands its storage URL to the worker processes it starts: never on their command lines."""


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file ``path``, escaped (a ``?`` or ``%`` in a folder name stays a name)."""
    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(hide_password=False)


def resolve(spec: str) -> str:
    """The storage URL ``spec`` stands for: ``env:VAR`` and ``file:PATH`` read, anything else as it is.

    Raises:
        ValueError: an unset variable or an unreadable / empty file, named.
    """
    if spec.startswith("env:"):
        name = spec.removeprefix("env:")
        value = os.environ.get(name, "").strip()
        if not name or not value:
            raise ValueError(f"storage: {spec!r}: environment variable {name!r} is not set or empty")
        return value
    if spec.startswith("file:"):
        path = Path(spec.removeprefix("file:")).expanduser()
        try:
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except OSError as err:
            raise ValueError(f"storage: {spec!r}: cannot read {path} ({err.strerror})") from None
        value = lines[0] if lines else ""
        if not value:
            raise ValueError(f"storage: {spec!r}: {path} is empty (expected a storage URL on its first line)")
        return value
    return spec


SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""
CREATING_S = 10.0
"""An empty SQLite file younger than this may be a database another process is creating (it writes the header
within milliseconds): it is waited for, up to this long. An older empty file is a damaged storage."""
_QUERY = re.compile(r"[^=&/?#]+=[^&?#]*(?:&[^=&/?#]+=[^&?#]*)*")


def check_url(url: str) -> None:
    """Refuse an RDB URL whose path is followed by a ``#``, or by a ``?`` that does not start a query of
    ``key=value`` pairs joined by ``&`` (for SQLite, values without ``/``): a character typed in a folder name,
    which SQLAlchemy would silently cut the path at (``sqlite:////d/q?x/s.db`` opens ``/d/q``).

    Raises:
        ValueError: one line naming the (redacted) URL and the character, with the fix.
    """
    if "://" not in url:
        return
    tail = url.split("://", 1)[1].partition("/")[2]  # after the authority (user, password, host): path and query
    _, mark, query = tail.partition("?")
    bad = "#" if "#" in tail else None
    if bad is None and mark and not (_QUERY.fullmatch(query) and not (url.startswith("sqlite") and "/" in query)):
        bad = "?"
    if bad is not None:
        try:
            opened = f" (this would open {make_url(url).database!r})"
        except Exception:  # not a URL SQLAlchemy reads
            opened = ""
        raise ValueError(
            f"storage: {redact(url)!r}: a {bad!r} in a URL's path does not belong to a file name{opened}; "
            f"percent-encode it ({'%23' if bad == '#' else '%3F'}) or choose another folder"
        )


def check_sqlite_file(url: str) -> None:
    """Refuse the existing file of a ``sqlite:`` URL when it is empty or not an SQLite database: SQLite would
    silently start a new storage there (a search's earlier trials lost). A missing file is fine (created), so is
    an empty one another process is just creating (waited for, :data:`CREATING_S`).

    Raises:
        ValueError: one line naming the file and what to do; the file is left as it is.
    """
    try:
        database = make_url(url).database
    except Exception:  # not a URL SQLAlchemy reads: opening it says so
        return
    if not url.startswith("sqlite") or not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    while True:
        try:
            with path.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return  # created, or SQLite says what is wrong
        if header or age > CREATING_S:
            break
        time.sleep(0.1)
    if header != SQLITE_HEADER:
        what = "empty" if not header else "not an SQLite database"
        raise ValueError(
            f"{path.resolve()}: the storage is {what}; restore it from a backup or delete it to start again"
        )


def check_exists(spec: str) -> None:
    """Refuse a file storage (``sqlite:`` or ``journal:``) whose file does not exist, before anything opens it
    (opening creates it): for commands that only read a storage named by a record, such as ``nas-mtl status``."""
    url = resolve(spec)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
    elif url.startswith("sqlite:"):
        check_url(url)
        try:
            path = make_url(url).database or ""
        except Exception:  # not a URL SQLAlchemy reads: opening it says so
            return
    else:
        return
    if path and path != ":memory:" and not Path(path).is_file():
        raise ValueError(f"storage {redact(url)!r}: no such file {path}; nothing was created")


def describe(spec: str) -> str:
    """What storage ``spec`` opens, for one line on stderr: the resolved URL, redacted, a SQLite or journal
    file by its absolute path (``sqlite:////abs/study.db``)."""
    url = resolve(spec)
    if url.startswith("journal:"):
        return f"journal:{Path(url.removeprefix('journal:')).resolve()}"
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: opening it says so
        return redact(url)
    if url.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    return parsed.render_as_string(hide_password=True)


def redact(url: str) -> str:
    """``url`` with its password shown as ``***`` (``env:`` / ``file:`` / ``journal:`` specs as they are)."""
    if url.startswith(("env:", "file:", "journal:")):
        return url
    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: hide anything between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def heartbeat_settings(heartbeat_s: int | None = None, grace_s: int | None = None) -> tuple[int, int]:
    """``(heartbeat_s, grace_s)``: the given ones, else NAS_MTL_HEARTBEAT_S / NAS_MTL_GRACE_S, else the defaults;
    a one-line error unless 0 < heartbeat < grace."""
    out = []
    for value, var, default in (
        (heartbeat_s, "NAS_MTL_HEARTBEAT_S", HEARTBEAT_S),
        (grace_s, "NAS_MTL_GRACE_S", GRACE_S),
    ):
        if value is None:
            text = os.environ.get(var, str(default))
            if not text.isdigit():
                raise ValueError(f"{var}: expected a whole number of seconds, got {text!r}")
            value = int(text)
        out.append(value)
    if not 0 < out[0] < out[1]:
        raise ValueError(f"heartbeat: expected 0 < heartbeat ({out[0]} s) < grace period ({out[1]} s)")
    return out[0], out[1]


def open_storage(
    spec: str,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> BaseStorage:
    """An Optuna storage from a storage spec (module doc): journal file, or RDB with heartbeats.

    Args:
        heartbeat_s, grace_s: (default: :func:`heartbeat_settings`) RDB storages: a running trial records a
            heartbeat every ``heartbeat_s``; one
            silent for ``grace_s`` is failed by :func:`optuna.storages.fail_stale_trials`, which then calls
            ``stale_trial_callback`` (e.g. :func:`retry_stale_trials`).

    Raises:
        ValueError: one line naming the (redacted) URL and what went wrong: a bad URL, a missing driver, an
            unreachable server, refused credentials.
    """
    heartbeat_s, grace_s = heartbeat_settings(heartbeat_s, grace_s)
    url = resolve(spec)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        if not path:
            raise ValueError("storage: 'journal:' needs a file path, e.g. journal:runs/x/study.journal")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    check_url(url)
    if url.startswith("sqlite:"):
        check_sqlite_file(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
                    storage = RDBStorage(
                        url,
                        engine_kwargs=engine,
                        heartbeat_interval=heartbeat_s,
                        grace_period=grace_s,
                        **{_STALE_CALLBACK: stale_trial_callback},
                    )
                break
            except sqlalchemy.exc.DBAPIError as err:  # processes opening a new database at once: one made the
                racing = isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in str(err)  # tables
                if not racing or attempt == 4:
                    raise
                time.sleep(0.2 + random.random())
        if url.startswith("sqlite:"):
            _serialize_sqlite(storage)
        return storage
    except Exception as err:  # SQLAlchemy and the drivers raise many kinds (bad URL, no driver, no server)
        shown = redact(url)
        reason = _first_line(str(err)).replace(url, shown)
        if isinstance(err, ImportError) or "DB access module" in reason or "No module named" in reason:
            reason += '; the PostgreSQL driver: pip install -e ".[postgres]"'
        raise ValueError(
            f"storage: cannot open {shown!r} ({reason}); expected sqlite:///PATH, postgresql://..., journal:PATH, "
            "env:VAR or file:PATH"
        ) from None


def _serialize_sqlite(storage: RDBStorage) -> None:
    """Make every SQLite transaction of ``storage`` take the database's write lock when it begins.

    Optuna moves a trial WAITING -> RUNNING (how ``Study.ask`` pops an enqueued trial, and how a study job is
    claimed) by reading its state ``FOR UPDATE`` and then writing it; SQLite ignores ``FOR UPDATE``, so two
    processes could both read WAITING and both run the trial (measured: 2 of 40 jobs claimed twice by 4
    processes). ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for pysqlite) makes the read and the write one atomic
    step; other processes wait for the lock (up to the connection's 60 s timeout).
    """
    engine = storage.engine

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite: let the "begin" event below start transactions

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners (creating the tables) are not reused


_STALE_CALLBACK = (
    "heartbeat_stale_trial_callback"  # Optuna >= 4.9 (failed_trial_callback: deprecated there)
    if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage.__init__).parameters
    else "failed_trial_callback"
)


def fail_stale(study: optuna.Study) -> None:
    """:func:`optuna.storages.fail_stale_trials` (FAIL the RUNNING trials whose heartbeat is older than the grace
    period, then run the storage's stale-trial callback), without its experimental-feature warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retry_stale_trials(max_retry: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's callback that enqueues a stale trial (its worker died) again, up to ``max_retry`` times
    (``RetryHeartbeatStaleTrialCallback`` from Optuna 4.9, ``RetryFailedTrialCallback`` before)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        return (retry or optuna.storages.RetryFailedTrialCallback)(max_retry)


def _first_line(text: str) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), text.strip())
    return re.sub(r"(//[^/:@\s]*:)[^@/\s]*@", r"\1***@", line)  # a URL the driver quoted


__all__ = [
    "CHILD_ENV",
    "CREATING_S",
    "GRACE_S",
    "HEARTBEAT_S",
    "SQLITE_HEADER",
    "check_exists",
    "check_sqlite_file",
    "check_url",
    "describe",
    "fail_stale",
    "heartbeat_settings",
    "open_storage",
    "redact",
    "resolve",
    "retry_stale_trials",
    "sqlite_url",
]
