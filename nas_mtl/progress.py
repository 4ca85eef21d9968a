"""Progress output that fits where it goes: a tqdm bar on a terminal, plain lines in a file or CI log.

The library prints nothing unless asked (``TrainConfig(progress=True)``, the CLI's default); then
:func:`progress` shows a bar when standard error is a terminal and otherwise one plain line when the
loop ends (and one every :data:`LINE_SECONDS` while it runs), so a redirected log holds no carriage
returns or bar redraws.

A study's time left is an estimate from the durations of the runs it finished in this session. A run is named
by its folder under the run folder (``search/METHOD/seedS``, ``arms/ARM/BALANCER/seedS``, ``grid/BALANCER/seedS``)
and its *kind* is the first two parts: ``search/METHOD`` (a search's other seeds cost about what one did) or
``arms/ARM`` (an arm's other seeds and balancers cost about what one retraining of it did). A run still to do is
estimated by the mean duration of the finished runs of its kind; without one, by the mean of the finished runs
of its family (searches, or retrainings: arm and grid runs); while a family has no finished run there is no
estimate (a search's time says nothing about a retraining's: on the quickstart one search took ten retrainings'
time, and guessing with it said 18 minutes left of a 4.5-minute study). Runs read back from an
earlier session never enter the means (they take no time), nor do runs that continued from a checkpoint (their
time is part of a run's).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from statistics import fmean
from time import monotonic
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

from .units import seconds as duration

T = TypeVar("T")

LINE_SECONDS = 60.0
"""How often a long loop prints a plain line when the output is not a terminal."""

_STOP = threading.Event()


def request_stop() -> None:
    """Ask every loop wrapped by :func:`progress` to stop: its next step raises ``KeyboardInterrupt``.

    A signal handler that raises ``KeyboardInterrupt`` itself can land in a finalizer (a weakref callback, a
    ``__del__``), where Python prints "Exception ignored" and goes on; the request makes the stop hold anyway.
    """
    _STOP.set()


def clear_stop() -> None:
    """Forget an earlier :func:`request_stop` (a new command in the same process)."""
    _STOP.clear()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared since)."""
    return _STOP.is_set()


def _stoppable(iterable: Iterable[T]) -> Iterator[T]:
    for item in iterable:
        if _STOP.is_set():
            raise KeyboardInterrupt
        yield item


class PlainProgress(Iterable[T]):
    """Iterates ``iterable``, printing ``desc: N steps, S s[, postfix]`` periodically and at the end."""

    def __init__(self, iterable: Iterable[T], desc: str, total: int | None, stream: IO[str]) -> None:
        self.iterable, self.desc, self.total, self.stream = iterable, desc, total, stream
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        """Shown at the end of the next line (same call as tqdm's)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, n: int, seconds: float) -> None:
        steps = f"{n}/{self.total}" if self.total is not None else str(n)
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {steps} steps, {seconds:.1f} s{extra}", file=self.stream, flush=True)

    def __iter__(self) -> Iterator[T]:
        start = last = monotonic()
        n = 0
        for item in self.iterable:
            yield item
            n += 1
            now = monotonic()
            if now - last >= LINE_SECONDS:
                self._line(n, now - start)
                last = now
        self._line(n, monotonic() - start)


def progress(
    iterable: Iterable[T], desc: str, enabled: bool, total: int | None = None, stream: IO[str] | None = None
) -> Iterable[T]:
    """``iterable`` with progress output: none when not ``enabled``, a bar on a terminal, else plain lines.

    The result has ``set_postfix(**values)`` in every case; each step raises ``KeyboardInterrupt`` once
    :func:`request_stop` was called.
    """
    stream = sys.stderr if stream is None else stream
    iterable = _stoppable(iterable)
    if not enabled or stream.isatty():
        return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, file=stream)
    return PlainProgress(iterable, desc, total, stream)


def run_kind(key: str) -> str:
    """The kind of the run in folder ``key``: its first two parts (``search/METHOD``, ``arms/ARM``, ...)."""
    return "/".join(key.split("/")[:2])


def _family(kind: str) -> str:
    return "search" if kind.startswith("search/") else "retrain"


def run_estimates(finished: Mapping[str, Sequence[float]], pending: Sequence[str]) -> list[float] | None:
    """The estimated seconds of each run of kind ``pending[i]`` (see the module docstring); None while a pending
    run's family has no finished run (nothing like it to estimate from)."""
    families: dict[str, list[float]] = {}
    for kind, durations in finished.items():
        families.setdefault(_family(kind), []).extend(durations)
    out = []
    for kind in pending:
        same = finished.get(kind) or families.get(_family(kind))
        if not same:
            return None
        out.append(fmean(same))
    return out


def remaining_seconds(finished: Mapping[str, Sequence[float]], pending: Sequence[str], workers: int) -> float | None:
    """Wall seconds the runs of kinds ``pending`` still need on ``workers`` parallel workers: the sum of their
    estimates (:func:`run_estimates`) / ``workers``, and at least the longest one (a run is not split across
    workers). 0 when nothing is pending; None when nothing has finished yet.

    Args:
        finished: kind -> the durations (s) of that kind's runs finished in this session.
        pending: the kind of each run still to do (running ones included).
        workers: runs at once.
    """
    if not pending:
        return 0.0
    estimates = run_estimates(finished, pending)
    if estimates is None:
        return None
    return max(sum(estimates) / workers, max(estimates))


def estimate_line(
    done: int, total: int, left: float | None, workers: int, elapsed: float | None = None, what: str = "runs"
) -> str:
    """``study: 7 of 30 runs done in 2.2 min; about 6.0 min left (an estimate from ..., 2 at once)``."""
    took = "" if elapsed is None else f" in {duration(elapsed)}"
    head = f"study: {done} of {total} {what} done{took}"
    if done >= total:
        return head
    if left is None:
        return (
            f"{head}; no estimate of the time left yet (a kind of run still to do has not been timed in this session)"
        )
    at_once = f", {workers} at once" if workers > 1 else ", one at a time"
    return f"{head}; about {duration(left)} left (an estimate from the finished runs' times{at_once})"


class TimeLeft:
    """The time-left estimate of the runs one study session does, updated as they finish.

    Args:
        workers: runs at once.
        partial: whether the run in folder ``key`` continues an interrupted one (its time is not a whole run's).
    """

    def __init__(self, workers: int, partial: Callable[[str], bool] = lambda key: False) -> None:
        self.workers, self.partial = workers, partial
        self.pending: dict[str, bool] = {}  # key -> partial, in plan order
        self.durations: dict[str, list[float]] = {}
        self.done = 0
        self.start = monotonic()

    def plan(self, keys: Iterable[str]) -> None:
        """The runs still to do, replacing the previous plan (e.g. once searches found their graphs)."""
        self.pending = {key: self.pending[key] if key in self.pending else self.partial(key) for key in keys}

    def expect(self, keys: Iterable[str]) -> None:
        """Add the runs of ``keys`` to the plan (those already in it stay as they are)."""
        self.plan([*self.pending, *(k for k in keys if k not in self.pending)])

    def drop(self, key: str) -> None:
        """Take the run of ``key`` out of the plan (not needed after all, or read back)."""
        self.pending.pop(key, None)

    @property
    def total(self) -> int:
        """The runs of this session: done and still to do."""
        return self.done + len(self.pending)

    def finished(self, key: str, seconds: float) -> str:
        """Record that the run in ``key`` took ``seconds``; returns the progress line (:func:`estimate_line`)."""
        if not self.pending.pop(key, False):
            self.durations.setdefault(run_kind(key), []).append(seconds)
        self.done += 1
        left = remaining_seconds(self.durations, [run_kind(k) for k in self.pending], self.workers)
        total = self.done + len(self.pending)
        return estimate_line(self.done, total, left, self.workers, monotonic() - self.start)


__all__ = [
    "LINE_SECONDS",
    "PlainProgress",
    "TimeLeft",
    "estimate_line",
    "progress",
    "remaining_seconds",
    "run_estimates",
    "run_kind",
]
