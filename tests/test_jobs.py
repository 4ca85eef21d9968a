"""Study jobs in an Optuna storage (nas_mtl.study.jobs), on SQLite and on a real PostgreSQL server: each job is claimed
by one process only, a job waits for what it needs, a dead worker's job returns to the queue, errors name keys."""

import multiprocessing
import os
import signal
import time

import pytest

from nas_mtl.study.jobs import Job, JobQueue

KEYS = [f"arms/a{i}/equal/seed0" for i in range(40)]


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


def _name(request) -> str:
    """A study name of its own per test (the PostgreSQL server is shared by the session)."""
    return request.node.name.replace("[", "-").replace("]", "")


def _claim_all(storage, name, out):
    """A worker process: claim and finish jobs until none is left; report what it claimed."""
    queue = JobQueue(storage, name)
    mine = []
    while (claim := queue.claim(f"test:{os.getpid()}")) is not None:
        mine.append(claim.job.key)
        queue.finish(claim, 0.0)
    out.put(mine)


def _in_processes(target, args, out, n=4, timeout=300):
    """Run ``target(*args, out)`` in ``n`` spawned processes; each puts one result on ``out``: the results."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=(*args, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def test_each_job_is_claimed_by_exactly_one_of_four_processes(storage, request):
    name = _name(request)
    queue = JobQueue(storage, name, create=True)
    assert queue.publish([Job(k, {"i": i}) for i, k in enumerate(KEYS)]) == len(KEYS)
    assert queue.publish([Job(k, {"i": i}) for i, k in enumerate(KEYS)]) == 0  # published once
    claimed = _in_processes(_claim_all, (storage, name), multiprocessing.get_context("spawn").Queue())
    every = [k for mine in claimed for k in mine]
    assert sorted(every) == sorted(KEYS)  # every job once: none lost, none twice
    table = queue.table()
    assert {line["state"] for line in table} == {"done"} and {line["tries"] for line in table} == {1}


def test_a_job_waits_for_the_jobs_it_needs(tmp_path):
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}", "needs", create=True)
    queue.publish([Job("search/s/seed0", {}), Job("arms/s/equal/seed0", {}, ("search/s/seed0",)), Job("b", {})])
    first = queue.claim("w:1")
    assert first.job.key == "search/s/seed0"
    second = queue.claim("w:1")
    assert second.job.key == "b"  # the searched arm is held back while its search runs
    assert queue.claim("w:1") is None
    queue.finish(first, 1.0)
    third = queue.claim("w:1")
    assert third.job.key == "arms/s/equal/seed0" and third.job.needs == ("search/s/seed0",)


def test_a_failed_job_is_not_retried_blocks_what_needs_it_and_is_enqueued_again_on_publish(tmp_path):
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}", "fail", create=True)
    jobs = [Job("search/s/seed0", {}), Job("arms/s/equal/seed0", {}, ("search/s/seed0",))]
    queue.publish(jobs)
    claim = queue.claim("w:1")
    queue.fail(claim, "ValueError: NaN loss")
    assert queue.claim("w:1") is None
    assert queue.counts() == {"done": 0, "running": 0, "waiting": 0, "blocked": 1, "failed": 1}
    assert [line["error"] for line in queue.table() if line["state"] == "failed"] == ["ValueError: NaN loss"]
    assert queue.publish(jobs) == 1  # a rerun of the study enqueues the failed job again
    again = queue.claim("w:1")
    assert again.job.key == "search/s/seed0"
    assert {line["job"]: line["tries"] for line in queue.table()}["search/s/seed0"] == 2


def _claim_and_die(storage, name, ready):
    queue = JobQueue(storage, name, heartbeat_s=1, grace_s=3)
    claim = queue.claim(f"test:{os.getpid()}")
    ready.put(claim.job.key)
    time.sleep(1.5)  # a heartbeat or two, then killed mid-job
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_workers_job_returns_to_the_queue_after_the_grace_period(storage, request):
    name = _name(request)
    queue = JobQueue(storage, name, create=True, heartbeat_s=1, grace_s=3)
    queue.publish([Job("arms/hard/equal/seed0", {"seed": 0})])
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    proc = context.Process(target=_claim_and_die, args=(storage, name, ready))
    proc.start()
    assert ready.get(timeout=120) == "arms/hard/equal/seed0"
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    assert queue.claim("survivor:1") is None  # its heartbeat is younger than the grace period: still its job
    assert queue.counts()["running"] == 1
    deadline = time.monotonic() + 30
    claim = None
    while claim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        claim = queue.claim("survivor:1")
    assert claim is not None, "the dead worker's job never came back"
    assert claim.job.key == "arms/hard/equal/seed0" and claim.job.args == {"seed": 0} and claim.retries == 1
    queue.finish(claim, 2.0)
    (line,) = queue.table()
    assert line["state"] == "done" and line["tries"] == 2 and line["worker"] == "survivor:1"


def test_a_worker_with_other_settings_is_refused_naming_the_keys_and_not_the_password(storage, request):
    name = _name(request)
    JobQueue(storage, name, create=True).agree({"seeds": [0, 1], "train": {"epochs": 6, "lr": 0.002}})
    with pytest.raises(ValueError) as err:
        JobQueue(storage, name).agree({"seeds": [0, 1], "train": {"epochs": 8, "lr": 0.002}})
    message = str(err.value)
    assert "train.epochs (6 -> 8)" in message and "seeds" not in message and "\n" not in message
    if storage.startswith("postgresql"):
        password = storage.split(":")[2].split("@")[0]
        assert password not in message and "***" in message


def test_a_worker_for_a_study_never_started_and_a_journal_file_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no study 'nowhere'; start it with `nas-mtl study FILE --storage URL`"):
        JobQueue(f"sqlite:///{tmp_path / 'q.db'}", "nowhere")
    with pytest.raises(ValueError, match="a journal file has no heartbeats"):
        JobQueue(f"journal:{tmp_path / 'q.journal'}", "x", create=True)


def test_workers_on_one_machine_share_its_cores(tmp_path):
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}", "cores", create=True, heartbeat_s=1, grace_s=2)
    queue.publish([Job("long", {})])
    assert queue.local_workers("hostA:1") == 1
    claim = queue.claim("hostA:1")
    queue.claim("hostA:2")
    queue.claim("hostB:3")  # another machine
    assert queue.local_workers("hostA:1") == 2 and queue.local_workers("hostB:3") == 1
    queue.leave("hostA:2")
    assert queue.local_workers("hostA:1") == 1
    assert queue.workers("hostA:1") == 2  # anywhere: hostA:1 and hostB:3
    with queue.heartbeat(claim, "hostA:1"):  # a job longer than the grace period: its worker still counts
        time.sleep(3)
        assert queue.local_workers("hostB:9") == 1 and queue.local_workers("hostA:9") == 2


def test_an_idle_worker_polling_records_itself_once_per_half_heartbeat(tmp_path, monkeypatch):
    """Idle workers look for a job every fraction of a second; each look used to write the worker's record."""
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}", "idle", create=True, heartbeat_s=60, grace_s=120)
    queue.publish([Job("later", {}, ("never",))])  # waits for a job that never comes
    writes = []
    record = queue.study.set_user_attr
    monkeypatch.setattr(queue.study, "set_user_attr", lambda k, v: (writes.append(k), record(k, v)))
    for _ in range(5):
        assert queue.claim("hostA:1") is None
    assert writes == ["worker:hostA:1"]
    assert queue.local_workers("hostA:1") == 1 and queue.workers("hostB:2") == 2
    queue.leave("hostA:1")
    assert queue.claim("hostA:1") is None and writes == ["worker:hostA:1"] * 3  # left, then seen again


def test_a_worker_started_first_waits_for_the_study_to_be_published(tmp_path):
    import threading

    url = f"sqlite:///{tmp_path / 'q.db'}"
    threading.Timer(1.5, lambda: JobQueue(url, "late", create=True).agree({"seeds": [0]})).start()
    queue = JobQueue.join(url, "late", {"seeds": [0]}, wait_s=60)
    assert queue.study.user_attrs["settings"] == {"seeds": [0]}
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="no study 'never'"):
        JobQueue.join(url, "never", {}, wait_s=1.5)
    assert time.monotonic() - t0 >= 1.5


def _open_at_once(url, barrier, out):
    barrier.wait(timeout=120)
    try:
        JobQueue(url, "race", create=True)
        out.put("ok")
    except Exception as err:  # reported to the test
        out.put(f"{type(err).__name__}: {err}")


def test_processes_opening_a_new_storage_at_once_all_succeed(tmp_path):
    """Workers started together on a new SQLite file raced to create Optuna's tables: one failed with `UNIQUE
    constraint failed: alembic_version.version_num` (seen in benchmarks/distributed.py)."""
    context = multiprocessing.get_context("spawn")
    url = f"sqlite:///{tmp_path / 'new.db'}"
    results = _in_processes(_open_at_once, (url, context.Barrier(4)), context.Queue(), timeout=180)
    assert results == ["ok"] * 4, results
