"""A study's runs as jobs in an Optuna storage, claimed one at a time by any number of workers.

Each job (a search at one seed, or one arm run: arm x balancer x seed) is one trial of the Optuna study
``nas_mtl.study:NAME``, enqueued WAITING (:meth:`optuna.Study.enqueue_trial`) with user attributes: its
``job`` key (its folder under the run folder), what it ``needs`` finished first (a searched arm needs its
search) and its ``args``. Every mechanism is Optuna's own:

* **claim**: a worker moves a WAITING trial to RUNNING with ``storage.set_trial_state_values`` -- the step
  :meth:`optuna.Study.ask` takes to pop an enqueued trial; the RDB storage does it under a row lock and
  answers False to every process but one, so no job runs twice;
* **heartbeats**: the claimant records one every ``heartbeat_s`` while the job runs
  (``storage.record_heartbeat``), the first right after the claim;
* **failed-worker recovery**: each worker, before it claims, calls :func:`optuna.storages.fail_stale_trials`:
  a trial whose heartbeat is older than ``grace_s`` (its worker was killed, or its machine lost) is
  failed and Optuna's retry callback (:func:`~nas_mtl.storage.retry_stale_trials`) enqueues it again (up to
  :data:`MAX_RETRY` times). The next claimant resumes it from its checkpoint in the run folder, which every
  worker shares.

A job that fails by itself (an error, NaN losses) is told FAIL with the error in its ``error`` attribute and is
not retried: rerunning ``nas-mtl study FILE --storage URL`` enqueues the failed jobs again. A finished job is
told COMPLETE with its wall seconds as the value. Only RDB storages (SQLite on one machine, PostgreSQL across
machines) have heartbeats; a journal file is refused.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ..runs import check_settings
from ..storage import fail_stale, heartbeat_settings, open_storage, redact, resolve, retry_stale_trials

PREFIX = "nas_mtl.study:"
"""The Optuna study of a nas_mtl study named NAME is ``PREFIX + NAME``."""
SETTINGS_ATTR = "settings"
"""Study user attribute: what the study's results depend on (a joining worker's study file must agree)."""
LAUNCH_ATTR = "launch"
"""Study user attribute: the token of the ``--workers`` launch that published the study last (its workers start
before it publishes and join only once this names their launch, not the record a previous run left)."""
WORKER_ATTR_PREFIX = "worker:"
"""Study user attributes ``worker:HOST:PID`` -> the time that worker last looked for a job."""
MAX_RETRY = 3
"""How often a job whose worker died is enqueued again."""
STATES = ("done", "running", "waiting", "blocked", "failed")
"""What :meth:`JobQueue.table` calls a job's state (blocked: waiting for a job that failed)."""


@dataclass(frozen=True)
class Job:
    """One unit of a study: ``key`` (its folder under the run folder), ``args`` (JSON) and the keys it needs."""

    key: str
    args: Mapping[str, Any]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: its trial's id and number in the storage."""

    job: Job
    trial_id: int
    number: int
    retries: int = 0


def worker_id() -> str:
    """``HOST:PID``: who ran a job (recorded on its trial)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class JobQueue:
    """The jobs of study ``name`` in the storage ``spec`` (a URL, ``env:VAR`` or ``file:PATH``).

    Args:
        create: make the Optuna study when it does not exist (the process that publishes the jobs); else a
            missing study is a one-line error.
        heartbeat_s, grace_s: see the module doc (default: :func:`~nas_mtl.storage.heartbeat_settings`; every
            worker of one study should use the same).
    """

    spec: str
    name: str
    create: bool = False
    heartbeat_s: int | None = None
    grace_s: int | None = None
    study: optuna.Study = field(init=False)
    shown: str = field(init=False)
    _seen_at: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.shown = redact(resolve(self.spec))
        self.heartbeat_s, self.grace_s = heartbeat_settings(self.heartbeat_s, self.grace_s)
        storage = open_storage(self.spec, self.heartbeat_s, self.grace_s, retry_stale_trials(MAX_RETRY))
        if not isinstance(storage, RDBStorage):
            raise ValueError(
                f"storage: {self.shown!r}: a journal file has no heartbeats, so a killed worker's job would never "
                "return to the queue; use sqlite:///PATH (one machine) or postgresql://... (several)"
            )
        self.storage = storage
        name = PREFIX + self.name
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.create:
            self.study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
        else:
            try:
                self.study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                raise ValueError(
                    f"storage {self.shown!r}: no study {self.name!r}; start it with `nas-mtl study FILE --storage URL` "
                    "(without --worker) first"
                ) from None
        self.study_id = storage.get_study_id_from_name(name)

    @classmethod
    def join(
        cls,
        spec: str,
        name: str,
        settings: Mapping[str, Any],
        wait_s: float = 0.0,
        launch: str | None = None,
        **kwargs: Any,
    ) -> JobQueue:
        """The queue of a study another process publishes, once its settings are recorded (waiting up to
        ``wait_s`` for both: a worker may start first), checked against ``settings`` (:meth:`agree`). With
        ``launch``, only once the publisher recorded that launch token (:data:`LAUNCH_ATTR`): a worker started by
        a launcher never joins the record a previous run left."""
        deadline = time.monotonic() + wait_s
        queue = None
        while True:
            try:
                queue = queue or cls(spec, name, **kwargs)  # connects once the study exists, then only re-reads
                attrs = queue.study.user_attrs
                if SETTINGS_ATTR in attrs and (launch is None or attrs.get(LAUNCH_ATTR) == launch):
                    queue.agree(settings)
                    return queue
                missing = ValueError(
                    f"storage {queue.shown!r}: study {name!r} records no settings; restart it"
                    if launch is None
                    else f"storage {queue.shown!r}: study {name!r} was not published by this launch (yet)"
                )
            except ValueError as err:
                if "no study" not in str(err):
                    raise
                missing = err
            if time.monotonic() >= deadline:
                raise missing
            time.sleep(1.0 if queue is None else 0.25)  # a study not created yet: each try opens the storage anew

    # ------------------------------------------------------------------ publishing
    def agree(self, settings: Mapping[str, Any]) -> None:
        """Record ``settings`` (JSON) in a new study, or check them against the recorded ones: a one-line
        error naming the storage and each differing key."""
        saved = self.study.user_attrs.get(SETTINGS_ATTR)
        if saved is None:
            if not self.create:
                raise ValueError(f"storage {self.shown!r}: study {self.name!r} records no settings; restart it")
            self.study.set_user_attr(SETTINGS_ATTR, dict(settings))
            return
        check_settings(saved, settings, f"storage {self.shown} (study {self.name!r})", "study")

    def publish(self, jobs: Sequence[Job]) -> int:
        """Enqueue every job not already done, waiting or running (so a failed job is enqueued again); returns
        how many were enqueued."""
        live = {
            t.user_attrs.get("job")
            for t in self.study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
        }
        added = 0
        for job in jobs:
            if job.key not in live:
                self.study.enqueue_trial(
                    {}, user_attrs={"job": job.key, "args": dict(job.args), "needs": list(job.needs)}
                )
                added += 1
        return added

    # ------------------------------------------------------------------ working
    def claim(self, worker: str) -> Claim | None:
        """Fail stale trials (their jobs go back to the queue), then take the first waiting job whose needs
        are done; None when there is none to take now."""
        self._seen(worker)
        fail_stale(self.study)
        trials = self.study.get_trials(deepcopy=False)
        done = {t.user_attrs.get("job") for t in trials if t.state == TrialState.COMPLETE}
        for t in sorted(trials, key=lambda t: t.number):
            if t.state != TrialState.WAITING or not set(t.user_attrs.get("needs", ())) <= done:
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
            try:
                claimed = self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            except optuna.exceptions.UpdateFinishedTrialError:
                claimed = False
            if not claimed:  # another worker was first
                continue
            self.storage.record_heartbeat(trial_id)  # from now on, a silent worker's job is recovered
            self.storage.set_trial_user_attr(trial_id, "worker", worker)
            job = Job(t.user_attrs["job"], t.user_attrs.get("args", {}), tuple(t.user_attrs.get("needs", ())))
            return Claim(job, trial_id, t.number, len(t.system_attrs.get("retry_history", ())))
        return None

    @contextlib.contextmanager
    def heartbeat(self, claim: Claim, worker: str) -> Iterator[None]:
        """Record ``claim``'s heartbeat every ``heartbeat_s`` in a thread while the block runs (and that
        ``worker`` is alive, for :meth:`local_workers`)."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(Exception):  # a lost connection shows as a stale trial, not a crash here
                    self.storage.record_heartbeat(claim.trial_id)
                    self._seen(worker)

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish(self, claim: Claim, seconds: float, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(claim.trial_id, key, value)
        self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, [float(seconds)])

    def fail(self, claim: Claim, error: str, retry: bool = False) -> None:
        """Tell ``claim``'s job FAIL with ``error``; ``retry``: enqueue it again at once (an interrupted
        worker, not a failing job), as a dead worker's job is."""
        self.storage.set_trial_user_attr(claim.trial_id, "error", error)
        self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)
        if retry:
            retry_stale_trials(MAX_RETRY)(self.study, self.storage.get_trial(claim.trial_id))

    def local_workers(self, worker: str) -> int:
        """Workers on this machine (``worker``'s host) seen within the grace period, ``worker`` included."""
        return self.workers(worker, worker.rsplit(":", 1)[0])

    def workers(self, worker: str, host: str | None = None) -> int:
        """Workers (on ``host``, or anywhere) seen within the grace period, ``worker`` included."""
        now = time.time()
        seen = [
            k
            for k, t in self.study.user_attrs.items()
            if k.startswith(WORKER_ATTR_PREFIX)
            and (host is None or k.removeprefix(WORKER_ATTR_PREFIX).rsplit(":", 1)[0] == host)
            and now - float(t) < self.grace_s
        ]
        return max(1, len(set(seen) | {WORKER_ATTR_PREFIX + worker}))

    def _seen(self, worker: str) -> None:
        """Record that ``worker`` is alive: at most every half heartbeat period (the window :meth:`workers` counts
        in is the grace period, longer than a heartbeat period), so idle workers polling do not write each time."""
        now = time.time()
        if now - self._seen_at.get(worker, 0.0) >= self.heartbeat_s / 2:
            self.study.set_user_attr(WORKER_ATTR_PREFIX + worker, now)
            self._seen_at[worker] = now

    def leave(self, worker: str) -> None:
        """Stop counting ``worker`` among this machine's workers (it found nothing left to do)."""
        self.study.set_user_attr(WORKER_ATTR_PREFIX + worker, 0.0)
        self._seen_at.pop(worker, None)

    # ------------------------------------------------------------------ progress
    def table(self) -> list[dict[str, Any]]:
        """One line per job (its latest trial): key, state (:data:`STATES`), worker, since (start time of
        a running or finished job), tries, seconds, resumed (the checkpoint epoch a retried run continued from)
        and error."""
        latest: dict[str, FrozenTrial] = {}
        tries: dict[str, int] = {}
        for t in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number):
            key = t.user_attrs.get("job")
            if key is None:
                continue
            tries[key] = tries.get(key, 0) + (t.state != TrialState.WAITING)
            if key not in latest or latest[key].state != TrialState.COMPLETE:
                latest[key] = t
        states = {k: _state(t) for k, t in latest.items()}
        failed = {k for k, s in states.items() if s == "failed"}
        lines = []
        for key, t in latest.items():
            state = states[key]
            if state == "waiting" and _blocked(key, latest, failed):
                state = "blocked"
            lines.append(
                {
                    "job": key,
                    "state": state,
                    "worker": t.user_attrs.get("worker", "") if state != "waiting" else "",
                    "since": _iso(t.datetime_start) if state in ("running", "done", "failed") else "",
                    "tries": tries[key],
                    "seconds": float(t.values[0]) if t.state == TrialState.COMPLETE and t.values else None,
                    "resumed": t.user_attrs.get("resumed_from_epoch"),
                    "error": t.user_attrs.get("error", ""),
                }
            )
        return lines

    def counts(self) -> dict[str, int]:
        """How many jobs are in each of :data:`STATES`."""
        return count_states(self.table())


def count_states(lines: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many lines of a :meth:`JobQueue.table` are in each of :data:`STATES`."""
    out = dict.fromkeys(STATES, 0)
    for line in lines:
        out[line["state"]] += 1
    return out


def _state(t: FrozenTrial) -> str:
    return {
        TrialState.COMPLETE: "done",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }.get(t.state, "failed")


def _blocked(key: str, latest: Mapping[str, FrozenTrial], failed: set[str]) -> bool:
    """Whether ``key`` waits, directly or through other waiting jobs, for a job that failed."""
    todo, seen = list(latest[key].user_attrs.get("needs", ())), set()
    while todo:
        need = todo.pop()
        if need in failed:
            return True
        if need not in seen and need in latest:
            seen.add(need)
            todo += latest[need].user_attrs.get("needs", ())
    return False


def _iso(when: datetime.datetime | None) -> str:
    return "" if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["LAUNCH_ATTR", "MAX_RETRY", "PREFIX", "STATES", "Claim", "Job", "JobQueue", "count_states", "worker_id"]
