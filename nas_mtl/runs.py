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
- **Save / restore.** Checkpoints are plain ``torch.save`` dicts read back with :func:`load_checkpoint`
  (tensors and containers only, ``weights_only``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RUNTIME_KEYS = frozenset({"device", "progress"})
"""Settings that may change between sessions of one run at any depth (resume on another device, without bars)."""
ROW = "row.json"
"""A study's finished arm run: its result row (``RUN_DIR/arms/ARM/BALANCER/seedS/row.json``)."""
SEARCH_DONE = "search.json"
"""A study's finished search (``RUN_DIR/search/METHOD/seedS/search.json``)."""
STUDY_RECORD = "study.json"
"""What a study's results depend on (``RUN_DIR/study.json``)."""


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


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_atomic`, tensors mapped to ``device``; a damaged one (truncated, not a
    checkpoint) raises ValueError naming the file and what to do."""
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
    return state


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


LOCK = ".lock"


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Raises ValueError naming the holder's PID and host when another process holds it. A lock file left by
    a process that died (the lock itself died with it) is taken over with a message on stderr. Without
    ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(
                f"{run_dir}: in use by {holder}; wait for it to finish or stop it (one process per run folder)"
            ) from None
        fh.seek(0)
        left = fh.read().strip()
        if left:  # its holder was killed: the lock went with it, the note stayed
            print(f"nas-mtl: {run_dir}: taking over the lock of {left} (no longer running)", file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()  # a clean exit leaves no note
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


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
    "ROW",
    "RUNTIME_KEYS",
    "SEARCH_DONE",
    "STUDY_RECORD",
    "check_settings",
    "load_checkpoint",
    "read_json",
    "replace_atomic",
    "run_lock",
    "save_atomic",
    "settings_diff",
    "write_json_atomic",
]
