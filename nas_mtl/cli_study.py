"""The study commands of ``nas-mtl``: ``study`` (a study file run here, with ``--jobs N`` processes, or as jobs in
a storage with ``--storage``, ``--worker`` and ``--workers N``) and ``status`` (the jobs of a distributed study)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from .cli_options import UserError, add_config_arguments, config_from_args, one_device, show_storage
from .config import to_options
from .processes import WorkerProcesses
from .progress import clear_stop, request_stop, stop_requested
from .runs import TEXT, or_null, read_record
from .storage import GRACE_S, HEARTBEAT_S
from .tracking import TrackingConfig

STOP_S = 60
"""Seconds a worker started by ``--workers`` gets to end after the study has, before it is killed."""


def add_study_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl study FILE``."""
    p = sub.add_parser("study", help="run (or resume) a study file: searches + baselines x balancers x seeds")
    p.add_argument("file", help="study TOML, e.g. studies/quickstart.toml")
    p.add_argument("--out", help="run folder (default runs/NAME; resumed if it exists)")
    p.add_argument(
        "--device",
        help="override the device of every run and search: auto, cpu, cuda or cuda:N (this process sees GPU N only)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--storage",
        help="run the study as jobs in this Optuna storage (sqlite:///PATH on one machine, postgresql://... across "
        "machines, or env:VAR / file:PATH holding the URL): records and enqueues the jobs, then works on them",
    )
    p.add_argument(
        "--worker",
        action="store_true",
        help="with --storage: only work on the jobs of a study already started there (start any number, anywhere "
        "that sees the storage and the run folder)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="with --storage: N worker processes on this machine, this one and N - 1 it starts (they end with it; "
        "each job gets cores / N torch threads unless --threads is given; default 1)",
    )
    p.add_argument("--launched", type=int, metavar="PID", help=argparse.SUPPRESS)  # started by PID's --workers
    p.add_argument("--launch", metavar="TOKEN", help=argparse.SUPPRESS)  # join what that launch publishes
    p.add_argument(
        "--wait-s",
        type=float,
        default=600.0,
        help="with --worker: how long to wait for the study to be published in the storage (default 600)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=int,
        help=f"with --storage: seconds between a job's heartbeats (default: NAS_MTL_HEARTBEAT_S or {HEARTBEAT_S})",
    )
    p.add_argument(
        "--grace-s",
        type=int,
        help="with --storage: seconds without a heartbeat after which a job's worker counts as dead and the job "
        f"returns to the queue (default: NAS_MTL_GRACE_S or {GRACE_S})",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process with threads/jobs torch threads (at least 1); "
        "the numbers depend on the threads per run (recorded in each row's env), so --jobs 2 on "
        "2 threads reproduces --threads 1 bitwise",
    )
    add_config_arguments(p, TrackingConfig, "tracking (overrides the study file's [tracking])")
    p.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> None:
    import time

    from .study import load_study, run_distributed_study, run_study, with_device

    if args.worker and not args.storage:
        raise UserError("--worker: needs --storage (the storage the study's jobs are in)")
    if args.workers < 1:
        raise UserError(
            f"--workers: expected a positive integer (worker processes on this machine), got {args.workers}"
        )
    if args.workers > 1 and not args.storage:
        raise UserError("--workers: needs --storage (the workers share its job queue); without one, --jobs N")
    if args.storage and args.jobs != 1:
        raise UserError("--jobs: not with --storage; start one worker per device instead (--worker or --workers N)")
    spec = load_study(args.file)
    if args.device is not None:
        spec = with_device(spec, one_device(args.device))
    spec = dataclasses.replace(spec, tracking=config_from_args(TrackingConfig, args, to_options(spec.tracking)))
    out = Path(args.out) if args.out else Path("runs") / spec.name
    t0 = time.perf_counter()
    if not args.storage:
        rows = run_study(spec, out, progress=not args.no_progress, jobs=args.jobs)
        _print_study(spec.name, out, rows, t0, spec.tracking.mlflow)
        return
    if not args.launched:  # a launched worker's launcher said it
        show_storage(args.storage)
    if args.launched:  # one of another process's --workers: it ends with that process
        from .processes import exit_with_parent

        exit_with_parent()
        if os.getppid() != args.launched:  # it died while this one started
            raise UserError("--workers: the process that started this worker has ended")
        signal.signal(signal.SIGTERM, _interrupt)
    clear_stop()
    with _LocalWorkers(args, out) as workers:
        rows = run_distributed_study(
            spec,
            out,
            args.storage,
            worker_only=args.worker,
            progress=not args.no_progress,
            threads=args.torch_threads,
            local_workers=args.workers,
            heartbeat_s=args.heartbeat_s,
            grace_s=args.grace_s,
            wait_s=math.inf if args.launched else args.wait_s,  # its launcher publishes the study, or ends it
            outcome=not args.launched,
            launch=args.launch or workers.launch,  # a worker joins what its launcher publishes, not an older record
        )
        if stop_requested():  # the signal's own KeyboardInterrupt was swallowed by a finalizer it landed in
            raise KeyboardInterrupt
        if not args.launched:  # the launcher reports, once
            _print_study(spec.name, out, rows, t0, spec.tracking.mlflow)
            workers.join()


def _print_study(name: str, out: Path, rows: list[dict[str, Any]], t0: float, mlflow: str | None = None) -> None:
    """Write the report of run folder ``out`` and print its summary table and verdict; with ``mlflow`` (a tracking
    URI), finish the study's MLflow run with the report (:func:`nas_mtl.tracking.log_study`)."""
    import time

    from .layout import load_rows
    from .report import format_table, runs_table, summary_table, verdict, write_report
    from .report.verdict import export_commands

    files = write_report(out)
    if mlflow is not None:
        from .tracking import log_study

        log_study(out, name, mlflow, files["report.md"].parent)
    rows = load_rows(out)  # what the report shows, with each run's folder
    runs = runs_table(rows)
    print(format_table(summary_table(runs)).to_string(index=False))
    found = verdict(runs, rows)
    print("\nVerdict: " + " ".join(found.conclusion))
    commands = export_commands(found.run, out)
    if commands:
        print(f"Run to use: {found.run.replace(';', ', ')}; export it with:\n" + "\n".join(f"  {c}" for c in commands))
    print("\n".join(f"- {line}" for line in (*found.warnings, *found.lines)))
    print(f"\nstudy {name!r}: {time.perf_counter() - t0:.0f}s this session; report: {files['report.md']}")


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: the running job returns to the queue at once and launched workers are stopped.

    The stop is also requested (:func:`~nas_mtl.progress.request_stop`): raised inside a finalizer, the
    ``KeyboardInterrupt`` would be printed as "Exception ignored" and lost, and the study would run on to its end.
    """
    request_stop()
    raise KeyboardInterrupt


class _LocalWorkers(WorkerProcesses):
    """``nas-mtl study --workers N``: N - 1 ``--worker`` processes of the same study started beside this one.

    They get this process's study file, run folder and options, the storage URL through the environment
    (:data:`~nas_mtl.storage.CHILD_ENV`, never on a command line) and the worker count, so every job splits the
    cores N ways from the first; they leave the outcome (failed jobs, MLflow, the report) to this process. They
    start at once, beside this process (their imports overlap its own), but join the study only once this process
    has published it with their launch token (:data:`~nas_mtl.study.jobs.LAUNCH_ATTR`), never the record a previous run
    left. They run in their own session (a terminal's Ctrl-C reaches this process only) and end with it: Ctrl-C
    or SIGTERM here terminates them (their running jobs return to the queue at once), and they exit when this
    process dies; a worker killed by itself leaves its job to the heartbeat recovery (:mod:`nas_mtl.study.jobs`): the
    others take it over after the grace period.
    """

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        super().__init__(timeout=STOP_S)
        self.args, self.out = args, out
        self.previous: Any = None
        self.launch: str | None = None

    def __enter__(self) -> _LocalWorkers:
        args = self.args
        if args.workers == 1 or args.launched:
            return self
        from .storage import CHILD_ENV, resolve

        env = {**os.environ, CHILD_ENV: resolve(args.storage)}  # a bad env:/file: spec fails here, first
        cmd = [sys.executable, "-m", "nas_mtl.cli"]
        cmd += ["--threads", str(args.torch_threads)] if args.torch_threads else []
        cmd += ["study", args.file, "--out", str(self.out), "--storage", f"env:{CHILD_ENV}", "--worker"]
        cmd += ["--launched", str(os.getpid()), "--workers", str(args.workers)]
        if not args.worker:  # this process publishes: they wait for this launch (a joining one: they join as it does)
            self.launch = uuid.uuid4().hex
            cmd += ["--launch", self.launch]
        cmd += ["--no-progress"] if args.no_progress else []
        for flag, value in (
            ("--device", args.device),
            ("--heartbeat-s", args.heartbeat_s),
            ("--grace-s", args.grace_s),
        ):
            cmd += [flag, str(value)] if value is not None else []
        self.previous = signal.signal(signal.SIGTERM, _interrupt)
        for _ in range(args.workers - 1):
            self.start(cmd, env=env, new_session=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        super().__exit__(kind, *exc)

    def join(self) -> None:
        """Wait for the workers (they end once no job is left). One killed by a signal or stopped (exit 130) is a
        warning: its job was returned or taken over; one that exited with an error a :class:`UserError` naming
        it."""
        outcomes = self.wait()
        for proc in outcomes:
            if proc.kind == "timeout":
                print(
                    f"nas-mtl: warning: --workers: worker process {proc.pid} did not end within {STOP_S} s of the "
                    "study's end and was killed",
                    file=sys.stderr,
                )
            elif proc.kind in ("signal", "interrupted"):
                how = f"killed (signal {proc.signal})" if proc.kind == "signal" else "interrupted"
                print(
                    f"nas-mtl: warning: --workers: worker process {proc.pid} was {how}; the others took its job over",
                    file=sys.stderr,
                )
        failed = [p for p in outcomes if p.kind == "error"]
        if failed:
            codes = ", ".join(f"{p.pid} exited with code {p.returncode}" for p in failed)
            raise UserError(f"--workers: worker process {codes} (its error is above); the others finished the study")


def add_status_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl status RUN_DIR``."""
    p = sub.add_parser("status", help="the jobs of a distributed study: done, running (where, since when), waiting")
    p.add_argument("run_dir", help="the study's run folder")
    p.add_argument("--storage", help="the storage, when its URL holds a password (not recorded in the run folder)")
    p.add_argument("--all", action="store_true", help="list finished jobs too")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> None:
    from .storage import check_exists
    from .study import QUEUE_RECORD
    from .study.jobs import JobQueue, count_states

    record = Path(args.run_dir) / QUEUE_RECORD
    if not record.is_file():
        _local_status(Path(args.run_dir), args.all)
        return
    schema = {"storage": or_null(TEXT), "study": TEXT}
    saved = read_record(record, "distributed study record", schema, "rerun nas-mtl study --storage")
    storage = args.storage or saved.get("storage")
    if not storage:
        raise UserError(f"{record}: the storage URL holds a password and is not recorded; give --storage URL")
    check_exists(storage)  # a read-only command: a storage named by the record is opened, never made
    queue = JobQueue(storage, saved["study"])
    lines = queue.table()
    counts = count_states(lines)
    print(f"study {saved['study']!r} in {queue.shown}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    shown = [line for line in lines if args.all or line["state"] != "done"]
    if shown:
        import pandas as pd

        table = pd.DataFrame(shown).fillna("")
        table["seconds"] = table["seconds"].map(lambda v: f"{v:.0f}" if v != "" else "")
        print(table.to_string(index=False))


def _local_status(run_dir: Path, show_all: bool) -> None:
    """A study run without ``--storage``: its finished searches and runs, and the runs started but not finished
    (a checkpoint, no result: interrupted, or running now), read from the folder."""
    from .layout import CHECKPOINT, ROW, SEARCH_DONE, STUDY_COPY

    if not (run_dir / STUDY_COPY).is_file():
        raise UserError(f"{run_dir}: not a study folder (no {STUDY_COPY}); give the --out of nas-mtl study")
    searches = sorted(p.parent for p in run_dir.glob(f"search/*/*/{SEARCH_DONE}"))
    done = sorted(p.parent for p in run_dir.glob(f"arms/**/{ROW}"))
    started = sorted(p.parent for p in run_dir.glob(f"arms/**/{CHECKPOINT}") if not (p.parent / ROW).is_file())
    started = [p for p in started if p.parent.name != "networks"]  # a selection's networks: part of its run
    print(
        f"study folder {run_dir} (local): {len(searches)} searches done, {len(done)} runs done, "
        f"{len(started)} started and not finished"
    )
    for label, folders in (("started", started), *((("done", done), ("search done", searches)) if show_all else ())):
        for folder in folders:
            print(f"  {folder.relative_to(run_dir)}  {label}")


__all__ = ["add_status_command", "add_study_command", "cmd_status", "cmd_study"]
