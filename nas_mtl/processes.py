"""Worker processes of parallel searches and studies: one way to start them, end them and read how they ended.

Two kinds of workers, one module:

* command lines (``nas-mtl worker``, ``nas-mtl study --worker``) run as child processes by
  :class:`WorkerProcesses`, a context manager that terminates them when its block raises, waits for each (with
  an optional timeout, then kills it) and reports every process's :class:`ProcessOutcome`; the caller words
  the warning or error, since only it knows what a dead worker costs;
* a :mod:`multiprocessing` pool of spawned Python processes (:func:`spawn_pool`), each ignoring Ctrl-C (the
  parent's to handle), ending with its parent (:func:`exit_with_parent`) and running its own number of torch
  threads.

Torch is imported where a thread count is set, so that the command-line parser stays light.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INTERRUPTED = 130
"""The exit code of a process stopped by Ctrl-C or SIGTERM (``nas-mtl`` exits with it on KeyboardInterrupt)."""


def exit_with_parent() -> None:
    """Start a daemon thread that ends this process when its parent dies (orphaned worker of a killed run)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def cores_per_worker(n: int) -> int:
    """The torch threads each of ``n`` processes sharing this machine gets: its CPU cores split ``n`` ways (at
    least 1)."""
    return max(1, (os.cpu_count() or 1) // n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: the current count); the count before is restored after."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ProcessOutcome:
    """How one worker process ended.

    Args:
        pid: its process id.
        returncode: its exit code, or minus the signal that killed it (:attr:`subprocess.Popen.returncode`).
        timed_out: it had not ended within :attr:`WorkerProcesses.timeout` and was killed here.
        log: the file its output went to, if any.
    """

    pid: int
    returncode: int
    timed_out: bool = False
    log: Path | None = None

    @property
    def kind(self) -> str:
        """``"ok"`` (exit 0), ``"timeout"`` (killed here after the wait's timeout), ``"signal"`` (killed by
        signal :attr:`signal`), ``"interrupted"`` (exit :data:`INTERRUPTED`: Ctrl-C or SIGTERM) or ``"error"``
        (any other exit code)."""
        if self.timed_out:
            return "timeout"
        if self.returncode == 0:
            return "ok"
        if self.returncode < 0:
            return "signal"
        return "interrupted" if self.returncode == INTERRUPTED else "error"

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, or None when it exited."""
        return -self.returncode if self.returncode < 0 else None


class WorkerProcesses:
    """Context manager over child processes started from command lines (:meth:`start`).

    Leaving the block waits for every process (:meth:`wait`); leaving it by an exception first terminates those
    still running (SIGTERM). Outcomes are reported, never raised: :meth:`wait` (the outcome of each process, in
    start order; call it again after the block, it returns at once) and :meth:`poll` (those ended so far).

    Args:
        timeout: seconds to wait for each process before killing it (SIGKILL; its outcome is ``"timeout"``);
            None waits as long as it runs.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}  # pid -> the file its output goes to
        self.stopped: set[int] = set()  # pids killed here after the timeout

    def start(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        new_session: bool = False,
    ) -> subprocess.Popen:
        """Start ``cmd``.

        Args:
            env: its whole environment (None: this process's).
            log: a file (truncated) that receives its stdout and stderr; None: it writes to this process's.
            new_session: run it in a session of its own, with no standard input: a terminal's Ctrl-C reaches this
                process only, which ends it (terminated when the block raises).
        """
        options: dict[str, Any] = {"env": env}
        if new_session:
            options.update(stdin=subprocess.DEVNULL, start_new_session=True)
        if log is None:
            proc = subprocess.Popen(cmd, **options)
        else:
            with log.open("w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, **options)
            self.logs[proc.pid] = log
        self.procs.append(proc)
        return proc

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self.terminate()
        self.wait()

    def terminate(self) -> None:
        """Send SIGTERM to every process still running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()

    def wait(self) -> list[ProcessOutcome]:
        """Wait for each process in turn (:attr:`timeout`, then kill it); the outcome of every one."""
        for proc in self.procs:
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self.stopped.add(proc.pid)
                proc.kill()
                proc.wait()
        return [self._outcome(proc) for proc in self.procs]

    def poll(self) -> list[ProcessOutcome]:
        """The outcomes of the processes that have ended so far (without waiting)."""
        return [self._outcome(proc) for proc in self.procs if proc.poll() is not None]

    def _outcome(self, proc: subprocess.Popen) -> ProcessOutcome:
        return ProcessOutcome(proc.pid, proc.returncode, proc.pid in self.stopped, self.logs.get(proc.pid))


def spawn_pool(
    n: int,
    initializer: Callable[..., object] | None = None,
    initargs: Sequence[Any] = (),
    threads: int | None = None,
) -> multiprocessing.pool.Pool:
    """A pool of ``n`` spawned worker processes (``multiprocessing.get_context("spawn").Pool``).

    Each worker first ignores SIGINT (Ctrl-C is the parent's to handle: it terminates the pool), ends when its
    parent dies (:func:`exit_with_parent`), sets ``threads`` torch threads (None: torch's default), then runs
    ``initializer(*initargs)``; both must be picklable (a module-level function and its arguments).
    """
    context = multiprocessing.get_context("spawn")
    return context.Pool(n, initializer=_init_pool_worker, initargs=(threads, initializer, tuple(initargs)))


def _init_pool_worker(threads: int | None, initializer: Callable[..., object] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()  # a killed parent leaves no worker running on behind it
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if initializer is not None:
        initializer(*initargs)


__all__ = [
    "INTERRUPTED",
    "ProcessOutcome",
    "WorkerProcesses",
    "cores_per_worker",
    "exit_with_parent",
    "spawn_pool",
    "torch_threads",
]
