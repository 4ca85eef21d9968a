"""The distributed executor: a study's plan as jobs in an Optuna storage (:mod:`.jobs`), claimed by workers on any
machine that sees the storage and the run folder."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..layout import QUEUE_RECORD, RunRow, load_rows
from ..processes import cores_per_worker, torch_threads
from ..progress import estimate_line, remaining_seconds, run_kind, stop_requested
from ..runs import run_lock, write_json_atomic
from ..storage import redact
from ..tracking import mirror_study, require_mlflow
from .jobs import LAUNCH_ATTR, SETTINGS_ATTR, Job, JobQueue, count_states, worker_id
from .plan import Unit, plan, unit_args
from .record import prepare, queue_settings
from .spec import StudySpec
from .units import Context, run_attrs, track_finished

MAX_POLL_S = 10.0
"""The longest an idle worker waits before it looks for a job again: it waits ``poll_s`` x (workers seen / 4), at
least ``poll_s``, so the storage answers about 8 idle looks a second however many workers wait."""


def run_distributed_study(
    spec: StudySpec,
    run_dir: str | Path,
    storage: str,
    *,
    worker_only: bool = False,
    progress: bool = False,
    threads: int | None = None,
    local_workers: int = 1,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    poll_s: float = 0.5,
    wait_s: float = 0.0,
    outcome: bool = True,
    launch: str | None = None,
) -> list[RunRow]:
    """Run ``spec``'s jobs from the queue in ``storage`` (:mod:`nas_mtl.study.jobs`) until none is left; returns
    the result rows (none with ``outcome=False``).

    Without ``worker_only`` this process publishes the study: it checks the search options, records the
    settings in the run folder (as :func:`~nas_mtl.study.run_study` does) and in the storage, enqueues every
    unit of the plan not done (failed ones again), then works like any worker. Workers (``worker_only``, on any
    machine that sees the storage and the run folder) check that their study file agrees with the record in the
    storage and claim jobs one at a time; each job resumes from what the run folder holds. A worker stays until
    no job is waiting or running (a running job may still be returned to the queue by a dead worker).

    Args:
        threads: torch threads per job (recorded as the job's ``threads`` attribute); default: this machine's
            cores / the workers of this study on it: ``local_workers`` or, if more, those seen in the storage.
        local_workers: how many workers of this study this machine runs, when known from the start (``nas-mtl
            study --workers N`` starts them together): the first jobs already split the cores N ways.
        wait_s: a worker waits this long for the study to be published (it may start first).
        outcome: end by raising on failed jobs and mirroring to MLflow (``spec.tracking``); False in the workers
            a launcher started (``--workers``): the launcher does both, once.
        launch: the token of a ``--workers`` launch: the publisher records it once the jobs and settings are in
            the storage, and a worker given it joins only then (it starts beside its launcher, before that), never
            the record a previous run left.
        heartbeat_s, grace_s: heartbeat period and the silence after which a worker counts as dead (default:
            :func:`~nas_mtl.storage.heartbeat_settings`; every worker of a study should use the same).

    Raises:
        ValueError: a bad or unreachable storage, a study file that differs from the record (naming the keys),
            or jobs that failed (naming them) once nothing else can run.
    """
    if isinstance(local_workers, bool) or not isinstance(local_workers, int) or local_workers < 1:
        raise ValueError(f"local_workers: expected a positive integer, got {local_workers!r}")
    if outcome and spec.tracking.mlflow is not None:
        require_mlflow()
    run_dir = Path(run_dir)
    data, space = spec.build()
    settings = queue_settings(spec, space)
    beats = {"heartbeat_s": heartbeat_s, "grace_s": grace_s}
    if worker_only:
        queue = JobQueue.join(storage, spec.name, settings, wait_s, launch, **beats)  # once it is published
    else:
        queue = JobQueue(storage, spec.name, create=True, **beats)
        with run_lock(run_dir):  # alone while the folder's record is checked and written
            prepare(spec, data, space, run_dir)
    # the publisher and every worker then share the run folder's lock for their whole run: a plain `nas-mtl study`
    # on the same folder (exclusive) is refused while any of them runs, and they are refused while it runs
    with run_lock(run_dir, shared=True):
        units = plan(spec, data, space)
        if not worker_only:
            publish(queue, spec, run_dir, storage, settings, launch, progress, units)
        with torch_threads(None):  # set per job by work; a Python caller keeps its own
            work(Context(spec, run_dir, data, space), queue, units, progress, threads, local_workers, poll_s)
        return _outcome(spec, run_dir, queue, progress) if outcome else []


def jobs_of(units: Sequence[Unit]) -> list[Job]:
    """The plan's units as queued jobs, keyed by their keys, in plan order."""
    return [Job(u.key, unit_args(u), tuple(u.needs)) for u in units]


def publish(
    queue: JobQueue,
    spec: StudySpec,
    run_dir: Path,
    storage: str,
    settings: Mapping[str, Any],
    launch: str | None,
    progress: bool,
    units: Sequence[Unit],
) -> None:
    """Enqueue every job not done and record the study's settings in the storage (workers join then)."""
    added = queue.publish(jobs_of(units))
    # workers join once the settings are recorded (the run folder's record accepted them): after the jobs,
    # so that none joins a queue still empty and leaves at once
    queue.study.set_user_attr(SETTINGS_ATTR, dict(settings))
    if launch is not None:
        queue.study.set_user_attr(LAUNCH_ATTR, launch)
    shown = storage if storage.startswith(("env:", "file:")) or redact(storage) == storage else None
    write_json_atomic({"storage": shown, "study": spec.name}, run_dir / QUEUE_RECORD)
    if progress:
        print(f"study {spec.name!r}: {added} job(s) enqueued in {queue.shown}", file=sys.stderr, flush=True)


def _outcome(spec: StudySpec, run_dir: Path, queue: JobQueue, progress: bool) -> list[RunRow]:
    """Raise on failed jobs; else mirror to MLflow (``spec.tracking``) and return the rows."""
    lines = queue.table()
    counts = count_states(lines)
    if counts["failed"] or counts["blocked"]:
        failed = [
            f"{line['job']} ({line['error'] or 'worker died ' + str(line['tries']) + ' times'})"
            for line in lines
            if line["state"] == "failed"
        ]
        raise ValueError(
            f"storage {queue.shown}: {counts['failed']} job(s) failed: {'; '.join(failed)}; "
            f"{counts['blocked']} wait for them; fix the cause and rerun `nas-mtl study FILE --storage URL`"
        )
    if spec.tracking.mlflow is not None:
        mirror_study(run_dir, spec.name, spec.tracking.mlflow, progress)
    return load_rows(run_dir)


def work(
    ctx: Context,
    queue: JobQueue,
    units: Sequence[Unit],
    progress: bool,
    threads: int | None,
    local_workers: int,
    poll_s: float,
) -> int:
    """Claim and run jobs until none is waiting or running; returns how many this process ran. With ``progress``,
    each finished job prints the time the study's jobs still need, estimated from this worker's whole runs."""
    worker, ran = worker_id(), 0
    timed: dict[str, list[float]] = {}  # kind -> seconds of this worker's whole runs (not read back or resumed)
    planned = {u.key: u for u in units}
    plain = {job.key: _plain(job) for job in jobs_of(units)}
    while True:
        if stop_requested():  # a stop that a finalizer swallowed: claim nothing more
            raise KeyboardInterrupt
        claim = queue.claim(worker)
        if claim is not None and plain.get(claim.job.key) != _plain(claim.job):
            # a storage record is data: a job runs only as this worker's own study file plans it (a record that
            # names another balancer, e.g. code, is refused)
            source = ctx.spec.source
            why = f"job {claim.job.key!r} in storage {queue.shown} is not one of {source} as this worker plans it"
            queue.fail(claim, why)
            raise ValueError(f"{why}; refused (was the storage changed by hand?)")
        if claim is None:
            counts = queue.counts()
            if not counts["waiting"] and not counts["running"]:
                break
            # every idle worker reads the whole queue each time: the more workers, the less often each looks
            time.sleep(min(MAX_POLL_S, poll_s * max(1.0, queue.workers(worker) / 4)))
            continue
        workers = max(local_workers, queue.local_workers(worker))
        torch.set_num_threads(threads or cores_per_worker(workers))
        t0 = time.perf_counter()
        try:
            with queue.heartbeat(claim, worker):
                attrs = run_attrs(ctx, planned[claim.job.key])
        except BaseException as err:
            queue.fail(claim, f"{type(err).__name__}: {err}".splitlines()[0], retry=isinstance(err, KeyboardInterrupt))
            raise
        seconds = time.perf_counter() - t0
        queue.finish(claim, seconds, threads=torch.get_num_threads(), **attrs)
        ran += 1
        if not attrs.keys() & {"skipped", "read_back", "chosen"}:  # trained here: in MLflow now, not at the end
            track_finished(ctx, claim.job.key)
        if progress:
            again = f", try {claim.retries + 1}" if claim.retries else ""
            print(f"[{worker}] {claim.job.key} done ({seconds:.0f} s{again})", file=sys.stderr, flush=True)
            if not attrs:  # skipped, read back or resumed: not a whole run's time
                timed.setdefault(run_kind(claim.job.key), []).append(seconds)
            print(_queue_estimate(queue, timed, worker), file=sys.stderr, flush=True)
    queue.leave(worker)
    return ran


def _queue_estimate(queue: JobQueue, timed: Mapping[str, Sequence[float]], worker: str) -> str:
    """The time-left line of a distributed study: its jobs as the queue holds them (those of every worker and
    session), the durations from ``timed``, on the workers seen now."""
    lines = queue.table()
    pending = [run_kind(line["job"]) for line in lines if line["state"] in ("waiting", "running")]
    done, workers = sum(line["state"] == "done" for line in lines), queue.workers(worker)
    left = remaining_seconds(timed, pending, workers)
    return estimate_line(done, done + len(pending), left, workers, what="jobs")


def _plain(job: Job) -> dict[str, Any]:
    """A job as JSON holds it (tuples as lists): how a claimed job is compared with the planned one."""
    return json.loads(json.dumps({"key": job.key, "args": dict(job.args), "needs": list(job.needs)}))


__all__ = ["MAX_POLL_S", "jobs_of", "publish", "run_distributed_study", "work"]
