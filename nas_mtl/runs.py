"""The run-folder protocol every training run, search and study follows.

- **Settings recorded once, compared with one error.** What a run's results depend on is recorded with them
  (a checkpoint's ``config``, a study's record, a score table's header, a cached measurement's ``settings``);
  resuming compares it with the current settings through :func:`check_settings`, which names every differing
  key with both values. Keys in :data:`RUNTIME_KEYS` (the device, progress output) may change between
  sessions and are never compared.
- **Atomic writes.** Files are written to a temporary name beside their path and renamed over it
  (:func:`save_atomic`, :func:`write_json_atomic`): a killed process never leaves half a file, and several
  writers (workers of one search) never mix theirs.
- **One process per run folder.** :func:`run_lock` holds an exclusive lock on ``RUN_DIR/.lock`` while a
  command runs there; a second process gets a one-line error naming the holder. The operating system drops
  the lock when its process dies, so a killed run never blocks the next one (which says whose lock it took
  over). Workers of one search coordinate through the Optuna storage instead.
- **Names are names, paths stay inside.** A task, arm, balancer or method name that becomes a path part is
  checked once where it enters (:func:`check_name`), and every path built under a run folder from such names
  goes through :func:`run_path`, which refuses one that resolves outside the folder.
- **Save / restore.** Checkpoints are plain ``torch.save`` dicts read back with :func:`load_checkpoint`
  (tensors and containers only, ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import socket
import stat
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RUNTIME_KEYS = frozenset({"device", "progress", "num_workers", "pin_memory"})
"""Settings that may change between sessions of one run at any depth (resume on another device, without bars, with
another number of data-loading workers: the batches are the same)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}")
"""What a name that may become a path part looks like: letters, digits and ``_ . + = -``, not starting with ``.``
or ``-`` (so never ``.``, ``..`` or a hidden file), no separator, at most 100 characters."""


def check_name(name: object, what: str, source: str | Path | None = None) -> str:
    """``name`` if it is a safe path part (:data:`NAME_PATTERN`), else ValueError naming ``what`` (e.g.
    ``"task name"``) and ``source`` (the file or option it came from)."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return name
    where = f"{source}: " if source is not None else ""
    raise ValueError(
        f"{where}{what} {name!r}: not a name (use letters, digits and _ . + = -, not starting with . or -, at most "
        "100 characters)"
    )


def run_path(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts...``, refused with ValueError when it would resolve outside ``root`` (an absolute part,
    ``..``, or a link out of the folder): every path the toolkit builds from a name under a run folder, an
    export or a data folder goes through here."""
    root = Path(root)
    path = root.joinpath(*parts)
    base = root.resolve()
    target = path.resolve()
    if target != base and base not in target.parents:
        shown = "/".join(str(p) for p in parts)
        raise ValueError(f"{root}: {shown!r} leads outside this folder (to {target}); refused")
    return path


def replace_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: a killed process never leaves
    half a file, and concurrent writers (workers of one search) each rename their own temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`replace_atomic`)."""
    replace_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_json_atomic(data: Any, path: str | Path) -> None:
    """JSON (indented) to ``path`` atomically (see :func:`replace_atomic`)."""
    replace_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1) + "\n"))


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", schema: Schema | None = None, optional: Schema | None = None
) -> dict[str, Any]:
    """A checkpoint written by :func:`save_atomic`, tensors mapped to ``device``; a damaged one (truncated, not a
    checkpoint, or without the keys and kinds of ``schema`` / ``optional``: :func:`check_record`) raises
    ValueError naming the file, the key and what to do."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise ValueError(
            f"{path}: damaged checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "delete it to restart that run from its beginning"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a nas_mtl checkpoint (a {type(state).__name__}); delete it to restart that run")
    return check_record(
        state, path, "checkpoint", schema or {}, "delete it to restart that run from its beginning", optional
    )


def read_json(path: str | Path, what: str, required: Collection[str] = (), action: str = "delete it") -> Any:
    """The JSON in ``path``; a damaged file (not JSON, truncated, or an object without the ``required`` keys)
    raises ValueError naming the file, what is wrong and the ``action`` that repairs the run folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: damaged {what} (not JSON: {err}); {action}") from None
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path}: damaged {what} (no {', '.join(missing)}); {action}")
    return data


# ------------------------------------------------------------------ typed records
@dataclasses.dataclass(frozen=True)
class Kind:
    """What one field of a record must hold: ``name`` (said in errors), ``test``, and for a table the kind of its
    values (``of``, checked per key); ``nullable``: JSON null is allowed too."""

    name: str
    test: Callable[[Any], bool]
    of: Kind | None = None
    nullable: bool = False

    def problem(self, value: Any, key: str) -> str | None:
        """None when ``value`` fits, else ``"KEY: expected NAME, got VALUE"`` naming the innermost bad key."""
        if value is None and self.nullable:
            return None
        if not self.test(value):
            return f"{key}: expected {self.name}, got {_short(value)}"
        if self.of is not None:
            return next((p for k, v in value.items() if (p := self.of.problem(v, f"{key}.{k}"))), None)
        return None


INTEGER = Kind("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUMBER = Kind("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
TEXT = Kind("a string", lambda v: isinstance(v, str))
FLAG = Kind("true or false", lambda v: isinstance(v, bool))
LIST = Kind("a list", lambda v: isinstance(v, list))
TABLE = Kind("a table", lambda v: isinstance(v, dict))
TENSOR = Kind("a tensor", lambda v: isinstance(v, torch.Tensor))
Schema = Mapping[str, Kind]
"""A record's fields and their kinds (:func:`check_record`)."""


def table_of(kind: Kind) -> Kind:
    """A table (JSON object) with string keys whose values are each ``kind``."""
    return Kind("a table", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), of=kind)


def or_null(kind: Kind) -> Kind:
    """``kind`` or JSON null."""
    return dataclasses.replace(kind, name=f"{kind.name} or null", nullable=True)


def check_record(
    data: Any, path: str | Path, what: str, schema: Schema, action: str = "delete it", optional: Schema | None = None
) -> dict[str, Any]:
    """``data`` (read from ``path``) if it is a table with every key of ``schema`` and the keys of both schemas
    hold their kinds; else ValueError in one line naming the file, the ``what``, the first bad key and the
    ``action`` that repairs the run folder."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: damaged {what} (a {type(data).__name__}, not a table); {action}")
    missing = [k for k in schema if k not in data]
    if missing:
        raise ValueError(f"{path}: damaged {what} (no {', '.join(missing)}); {action}")
    fields = [*schema.items(), *((k, kind) for k, kind in (optional or {}).items() if k in data)]
    problem = next((p for key, kind in fields if (p := kind.problem(data[key], key))), None)
    if problem:
        raise ValueError(f"{path}: damaged {what} ({problem}); {action}")
    return data


def read_record(
    path: str | Path, what: str, schema: Schema, action: str = "delete it", optional: Schema | None = None
) -> dict[str, Any]:
    """The JSON record in ``path`` checked against ``schema`` (required keys) and ``optional`` (keys checked when
    present) by :func:`check_record`; every damage is one ValueError naming the file and the key."""
    return check_record(read_json(path, what, (), action), path, what, schema, action, optional)


LOCK = ".lock"


_NOTE = re.compile(r"(pid \d+ on \S+\n)?")
"""What a lock file holds: nothing, or the note of the process holding it exclusively."""


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, opened without following a link; refused when it is a link, not a regular
    file of its own (a hard link to another file) or holds anything but a lock note: it is never truncated then."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path}: is a link; a run folder's lock file must be a plain file (delete it)") from None
        raise
    info = os.fstat(fd)
    content = os.pread(fd, 4096, 0) if stat.S_ISREG(info.st_mode) else b""
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or not _NOTE.fullmatch(content.decode("utf-8", "replace")):
        os.close(fd)
        raise ValueError(f"{path}: not a nas_mtl lock file (a link, or other content); refused: move it away")
    return fd


@contextmanager
def run_lock(run_dir: str | Path, shared: bool = False) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if missing) for the ``with`` block: exclusive (one process: a
    command, a local study), or ``shared`` (the processes of one distributed study: its launcher and every worker
    for their whole run, so that an exclusive user of the folder is refused while any of them runs).

    Raises ValueError naming the holder's PID and host when the lock is held in the other mode (or exclusively).
    A lock note left by a process that died (the lock itself died with it) is taken over with a message on
    stderr. The lock file is opened without following links and is only ever emptied when it holds a lock note.
    Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            note = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            holder = note or "another process (a distributed study's launcher or workers, which share the lock)"
            raise ValueError(
                f"{run_dir}: in use by {holder}; wait for it to finish or stop it (one process per run folder, or "
                "the workers of one distributed study)"
            ) from None
        if shared:  # several holders: none writes a note, and none empties another's
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        left = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if left:  # its holder was killed: the lock went with it, the note stayed
            print(f"nas-mtl: {run_dir}: taking over the lock of {left} (no longer running)", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no note
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def settings_diff(
    saved: Mapping[str, Any], now: Mapping[str, Any], ignore: Collection[str] = RUNTIME_KEYS, prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for every leaf that differs, recursing into mappings;
    keys named in ``ignore`` are skipped at any depth, a key missing on one side reads as None."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        if key in ignore:
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += settings_diff(old, new, ignore, f"{prefix}{key}.")
        elif old != new and not (_is_seq(old) and _is_seq(new) and list(old) == list(new)):
            out.append((f"{prefix}{key}", old, new))
    return out


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def check_settings(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    source: str | Path,
    what: str = "run",
    ignore: Collection[str] = RUNTIME_KEYS,
) -> None:
    """Raise ValueError when the settings recorded in ``source`` differ from ``now``: one line naming each
    differing key with both values (long values by name only)."""
    diff = settings_diff(saved, now, ignore)
    if diff:
        shown = ", ".join(f"{key} ({_short(old)} -> {_short(new)})" for key, old, new in diff)
        raise ValueError(
            f"{source}: this {what} was made with other settings: {shown}; use a new run folder or the same settings"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__} of {len(value)}" if hasattr(value, "__len__") else "…"


__all__ = [
    "LOCK",
    "NAME_PATTERN",
    "RUNTIME_KEYS",
    "check_name",
    "INTEGER",
    "LIST",
    "NUMBER",
    "FLAG",
    "TABLE",
    "TENSOR",
    "TEXT",
    "Kind",
    "Schema",
    "check_record",
    "check_settings",
    "load_checkpoint",
    "or_null",
    "read_json",
    "read_record",
    "table_of",
    "replace_atomic",
    "run_lock",
    "run_path",
    "save_atomic",
    "settings_diff",
    "write_json_atomic",
]
