"""The local executor: a study's plan run in this process, or in a pool of worker processes on this machine.

A unit is handed out once the units it needs are done, in plan order; one whose folder already holds its result
is read back in this process (a finished study starts no worker). A failed unit, or Ctrl-C, terminates the pool
(runs write checkpoints and results atomically, so finished epochs and runs are kept) and its error is raised
here with its own type.
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import MultiTaskData
from ..layout import CHECKPOINT, ROW, SEARCH_DONE, RunRow
from ..processes import spawn_pool
from ..progress import TimeLeft
from ..runs import run_lock
from ..search import SearchResult, load_search_methods
from ..space import SearchSpace
from ..tracking import mirror_study, require_mlflow
from .plan import ArmRun, GridPick, SearchRun, Unit, plan
from .record import prepare
from .spec import StudySpec
from .units import Context, execute, finished, resolve, track_finished


def run_study(
    spec: StudySpec,
    run_dir: str | Path,
    progress: bool = False,
    jobs: int = 1,
    data: MultiTaskData | None = None,
    space: SearchSpace | None = None,
) -> list[RunRow]:
    """Run (or resume) every search and arm of ``spec``; returns the result rows (seed by seed).

    Finished searches and arm runs are read back here; only the others run, in this process or in ``jobs``
    worker processes.

    Args:
        progress: print progress (bars on a terminal, plain lines otherwise) and one line per finished run.
        jobs: runs (searches, then arm trainings) at once, each in its own process with
            ``torch.get_num_threads() // jobs`` threads (at least 1). The numbers depend on the threads per
            run: ``jobs=2`` on 2 threads gives bitwise the rows of ``jobs=1`` on 1 thread. A failed run stops
            the others (finished runs and epochs stay on disk) and its error is raised here. Workers are
            spawned: a script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard.
        data, space: the study's data and search space when already built (default: built from ``spec``);
            with them, runs stay in this process (``jobs`` must be 1).

    With ``spec.tracking.mlflow`` set, every finished arm run and search is then mirrored to MLflow
    (:func:`nas_mtl.tracking.mirror_study`: idempotent; an MLflow failure is a warning, the results stay here).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    if (data is None) != (space is None) or (data is not None and jobs > 1):
        raise ValueError("run_study: give data and space together, and only with jobs=1 (workers build their own)")
    if spec.tracking.mlflow is not None:
        require_mlflow()  # before hours of training, not after
    run_dir = Path(run_dir)
    if data is None:  # before the lock makes the run folder: data that cannot be read leaves none behind
        data, space = spec.build()
    assert space is not None
    with run_lock(run_dir):
        prepare(spec, data, space, run_dir)
        ctx = Context(spec, run_dir, data, space)
        with LocalExecutor(ctx, jobs, progress) as executor:
            rows = executor.run(plan(spec, data, space))
        if spec.tracking.mlflow is not None:
            mirror_study(run_dir, spec.name, spec.tracking.mlflow, progress)
        return rows


class LocalExecutor:
    """Runs a plan's units here (``jobs=1``) or in a pool of ``jobs`` worker processes that build the study's
    data and search space once each. With ``progress``, each finished run prints the time the study's runs still
    need (:class:`~nas_mtl.progress.TimeLeft`; a run resumed from a checkpoint is not timed as a whole run)."""

    def __init__(self, ctx: Context, jobs: int, progress: bool) -> None:
        self.ctx, self.jobs, self.progress = ctx, jobs, progress
        self.show = progress and jobs == 1  # bars and search logs of parallel runs would interleave
        self.pool: Any = None  # started by the first unit that needs it (a finished study starts no worker)
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.clock = TimeLeft(jobs, partial=lambda key: (ctx.run_dir / key / CHECKPOINT).is_file())
        self.t0 = time.perf_counter()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def run(self, units: Sequence[Unit]) -> list[RunRow]:
        """Do every unit, each once its needs are done; returns the rows of the study's arm runs in plan order."""
        pending = list(units)
        outcome: dict[str, Any] = {}  # key -> row, search result, or None (skipped, the grid choice)
        running: dict[str, Unit] = {}
        self.clock.plan([u.key for u in units if not self._done_before(u)])
        while pending or running:
            ready = next((u for u in pending if all(k in outcome for k in u.needs)), None)
            if ready is not None:
                pending.remove(ready)
                self._start(ready, outcome, running)
                continue
            if not running:
                raise RuntimeError(f"study plan: {[u.key for u in pending]} wait for units not in the plan")
            key, result, seconds, error = _get(self.finished)
            if error is not None:
                raise error  # __exit__ terminates the other runs
            unit = running.pop(key)
            outcome[key] = result
            self._report(unit, seconds)
        rows = []
        for u in units:
            if isinstance(u, ArmRun) and not u.grid_point and isinstance(outcome.get(u.key), RunRow):
                rows.append(outcome[u.key])
        return rows

    def _done_before(self, unit: Unit) -> bool:
        """Whether ``unit``'s folder holds a finished record (a quick look, for the time-left plan)."""
        if isinstance(unit, GridPick):
            return True  # not a run: it reads the grid's rows
        marker = SEARCH_DONE if isinstance(unit, SearchRun) else ROW
        return (self.ctx.run_dir / unit.key / marker).is_file()

    def _start(self, unit: Unit, outcome: dict[str, Any], running: dict[str, Unit]) -> None:
        ready = resolve(self.ctx, unit)
        if isinstance(ready, str):  # not needed
            outcome[unit.key] = None
            self.clock.drop(unit.key)
            return
        if ready.key != unit.key:  # the grid's best weights: planned under a name, run in their own folder
            self.clock.drop(unit.key)
        done = finished(self.ctx, ready)
        if done is not None:
            outcome[unit.key] = done
            self.clock.drop(ready.key)
            return
        if ready.key != unit.key:
            self.clock.expect([ready.key])
        if isinstance(ready, GridPick):  # reads rows: done here, untimed
            outcome[unit.key] = execute(self.ctx, ready, self.show)
            self.clock.drop(unit.key)
            return
        if self.jobs == 1:
            result, seconds = _timed(self.ctx, ready, self.show)
            outcome[unit.key] = result
            self._report(ready, seconds)
            return
        if self.pool is None:
            threads = max(1, torch.get_num_threads() // self.jobs)
            self.pool = spawn_pool(self.jobs, _init_worker, (self.ctx.spec, self.ctx.run_dir), threads=threads)
        running[unit.key] = ready
        self.pool.apply_async(
            _in_worker,
            (ready,),
            callback=lambda res, k=unit.key: self.finished.put((k, res[0], res[1], None)),
            error_callback=lambda error, k=unit.key: self.finished.put((k, None, 0.0, error)),
        )

    def _report(self, unit: Unit, seconds: float) -> None:
        track_finished(self.ctx, unit.key)
        line = self.clock.finished(unit.key, seconds)
        if self.progress:
            took = time.perf_counter() - self.t0
            print(
                f"[{self.clock.done}/{self.clock.total}] {unit.label} done ({took:.0f} s)", file=sys.stderr, flush=True
            )
            print(line, file=sys.stderr, flush=True)


def _get(finished: queue.SimpleQueue) -> Any:
    """The next item, waiting in short slices: a wait without a timeout does not see Ctrl-C."""
    while True:
        try:
            return finished.get(timeout=0.2)
        except queue.Empty:
            continue


_WORKER: dict[str, Context] = {}
"""In a study's worker process only: its context (data and search space built once by :func:`_init_worker`)."""


def _init_worker(spec: StudySpec, run_dir: Path) -> None:
    load_search_methods()  # a spawned process starts with only the registrations its imports make
    data, space = spec.build()
    _WORKER["ctx"] = Context(spec, run_dir, data, space)


def _in_worker(unit: Unit) -> tuple[RunRow | SearchResult | None, float]:
    return _timed(_WORKER["ctx"], unit, False)


def _timed(ctx: Context, unit: Unit, progress: bool) -> tuple[RunRow | SearchResult | None, float]:
    """``unit`` done and the wall seconds it took."""
    t0 = time.perf_counter()
    return execute(ctx, unit, progress), time.perf_counter() - t0


__all__ = ["LocalExecutor", "run_study"]
