"""Worker processes: command lines started, ended and reported by WorkerProcesses; the spawned pool's workers."""

import os
import signal
import sys

import pytest
import torch

from nas_mtl.processes import ProcessOutcome, WorkerProcesses, spawn_pool, torch_threads


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_each_processes_outcome_is_reported_in_start_order_with_its_log(tmp_path):
    with WorkerProcesses() as procs:
        procs.start(_python("print('hello')"), log=tmp_path / "ok.log")
        procs.start(_python("import sys; sys.exit(3)"))
        procs.start(_python("import sys; sys.exit(130)"))
        procs.start(_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    outcomes = procs.wait()
    assert [o.kind for o in outcomes] == ["ok", "error", "interrupted", "signal"]
    assert [o.returncode for o in outcomes] == [0, 3, 130, -signal.SIGKILL]
    assert outcomes[3].signal == signal.SIGKILL and outcomes[1].signal is None
    assert outcomes[0].log == tmp_path / "ok.log" and (tmp_path / "ok.log").read_text() == "hello\n"
    assert outcomes[1].log is None
    assert procs.poll() == outcomes  # all ended: the same outcomes, at once


def test_a_process_still_running_after_the_timeout_is_killed_and_reported_as_such():
    procs = WorkerProcesses(timeout=0.5)
    proc = procs.start(_python("import time; time.sleep(60)"), new_session=True)
    assert procs.poll() == []  # still running
    [outcome] = procs.wait()
    assert outcome == ProcessOutcome(proc.pid, -signal.SIGKILL, timed_out=True)
    assert outcome.kind == "timeout"


def test_an_exception_in_the_block_terminates_the_processes_and_is_raised():
    with pytest.raises(RuntimeError, match="boom"), WorkerProcesses() as procs:
        procs.start(_python("import time; time.sleep(60)"))
        raise RuntimeError("boom")
    [outcome] = procs.wait()
    assert outcome.kind == "signal" and outcome.signal == signal.SIGTERM


def test_torch_threads_are_restored_after_the_block():
    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.slow
def test_a_spawned_pools_workers_ignore_ctrl_c_set_their_threads_and_run_the_initializer(tmp_path):
    pool = spawn_pool(1, os.chdir, (str(tmp_path),), threads=2)
    try:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
        assert pool.apply(torch.get_num_threads) == 2
        assert pool.apply(os.getcwd) == str(tmp_path)
    finally:
        pool.terminate()
        pool.join()
