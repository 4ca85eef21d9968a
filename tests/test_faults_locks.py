"""Run-folder locks (D4, D6): a distributed study holds its folder (shared) for its whole run, a local one holds it
alone; a lock file that is a link, a hard link or someone else's file is refused and never truncated."""

from __future__ import annotations

import os

import pytest
from test_faults import STUDY, _error

import nas_mtl.study.distributed as study_module
from nas_mtl.cli import main
from nas_mtl.runs import LOCK, run_lock
from nas_mtl.storage import sqlite_url
from nas_mtl.study import load_study, run_distributed_study

TRAIN = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu", "--space", "resnet_small"]
TRAIN += ["--data", "multidigits", "--data-arg", "n_train=32", "--data-arg", "n_val=16", "--data-arg", "n_test=16"]


@pytest.mark.parametrize("how", ["symlink", "hardlink", "foreign"])
def test_a_lock_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, capsys, how):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    if how == "symlink":
        os.symlink(victim, run / LOCK)
    elif how == "hardlink":
        os.link(victim, run / LOCK)
    else:
        (run / LOCK).write_text("precious\n")
    err = _error(["train", "--out", str(run), *TRAIN], capsys)
    assert f"{run / LOCK}: " in err and ("is a link" in err or "not a nas_mtl lock file" in err)
    assert "precious" not in err  # the content is not printed either
    assert victim.read_text() == "precious\n" and (run / LOCK).read_text() == "precious\n"
    assert not (run / "checkpoint.pt").exists()


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    launcher, worker = run_lock(tmp_path, shared=True), run_lock(tmp_path, shared=True)
    busy = pytest.raises(ValueError, match="in use by another process .*distributed study")
    with launcher, worker, busy, run_lock(tmp_path):
        pass
    with run_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(ValueError, match=f"in use by pid {os.getpid()} on "), run_lock(tmp_path, shared=True):
            pass
    assert (tmp_path / LOCK).read_text() == ""


def test_a_plain_study_is_refused_while_a_distributed_study_works_in_the_folder(tmp_path, capsys, monkeypatch):
    """The launcher keeps the folder's lock after setup, while it works on jobs (probe: it dropped it, and a plain
    `nas-mtl study` trained the same arm folders at the same time)."""
    (tmp_path / "study.toml").write_text(STUDY.split("[search.affinity]")[0])
    spec, run = load_study(tmp_path / "study.toml"), tmp_path / "run"
    seen = []

    def work(*args, **kwargs):  # instead of the jobs: what a plain study on the folder gets meanwhile
        seen.append(main(["study", str(tmp_path / "study.toml"), "--out", str(run), "--no-progress"]))
        seen.append(capsys.readouterr().err)
        return 0

    monkeypatch.setattr(study_module, "work", work)
    run_distributed_study(spec, run, sqlite_url(tmp_path / "jobs.db"), outcome=False)
    assert seen[0] == 2 and f"{run}: in use by another process" in seen[1], seen
    assert not (run / "arms").exists()
