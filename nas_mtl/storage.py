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

import os
import re
import warnings
from pathlib import Path

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import URL, make_url

HEARTBEAT_S = 30
GRACE_S = 120
"""RDB storages: workers write a heartbeat every HEARTBEAT_S; a RUNNING trial silent for GRACE_S is failed."""
CHILD_ENV = "NAS_MTL_STORAGE_URL"
"""The environment variable through which a search hands its storage URL to the workers it starts."""


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


def redact(url: str) -> str:
    """``url`` with its password shown as ``***`` (``env:`` / ``file:`` / ``journal:`` specs as they are)."""
    if url.startswith(("env:", "file:", "journal:")):
        return url
    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: hide anything between "user:" and "@"
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def open_storage(spec: str) -> BaseStorage:
    """An Optuna storage from a storage spec (module doc): journal file, or RDB with heartbeats.

    Raises:
        ValueError: one line naming the (redacted) URL and what went wrong: a bad URL, a missing driver, an
            unreachable server, refused credentials.
    """
    url = resolve(spec)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        if not path:
            raise ValueError("storage: 'journal:' needs a file path, e.g. journal:runs/x/study.journal")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as err:  # SQLAlchemy and the drivers raise many kinds (bad URL, no driver, no server)
        shown = redact(url)
        reason = _first_line(str(err)).replace(url, shown)
        if isinstance(err, ImportError) or "DB access module" in reason or "No module named" in reason:
            reason += '; the PostgreSQL driver: pip install -e ".[postgres]"'
        raise ValueError(
            f"storage: cannot open {shown!r} ({reason}); expected sqlite:///PATH, postgresql://..., journal:PATH, "
            "env:VAR or file:PATH"
        ) from None


def _first_line(text: str) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), text.strip())
    return re.sub(r"(//[^/:@\s]*:)[^@/\s]*@", r"\1***@", line)  # a URL the driver quoted


__all__ = [
    "CHILD_ENV",
    "GRACE_S",
    "HEARTBEAT_S",
    "open_storage",
    "redact",
    "resolve",
    "sqlite_url",
]
