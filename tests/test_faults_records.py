"""Damaged records in a run folder (a field of the wrong type, a missing key, a garbage file, a damaged storage)
and storage URLs typed by hand: each is one line naming the file and the key (exit code 2), before any training,
and nothing is created, overwritten or lost."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from conftest import SMALL_DATA
from test_faults import _error, _no_training, _train_argv

from nas_mtl.cli import main

SMALL = SMALL_DATA


@pytest.fixture
def trained(trained_run):
    return trained_run


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("test", "message"),
    [(5, "test: expected a table, got 5"), ({"left": {"accuracy": "high"}}, "test.left.accuracy: expected a number")],
)
def test_a_row_with_a_field_of_the_wrong_type_names_the_file_and_key(study, capsys, monkeypatch, test, message):
    path, run = study
    row = run / "arms" / "hard" / "equal" / "seed0" / "row.json"
    row.write_text(json.dumps({**json.loads(row.read_text()), "test": test}))
    before = _files(run)
    _no_training(monkeypatch)
    for argv in (["study", str(path), "--out", str(run)], ["report", str(run)]):
        err = _error(argv, capsys)
        assert f"{row}: damaged result row ({message}" in err and "to retrain that run" in err
    assert _files(run) == before  # nothing written (no report either), nothing lost


@pytest.mark.parametrize(
    ("change", "message"),
    [({"model": None}, "damaged checkpoint (no model)"), ({"epoch": "abc"}, "(epoch: expected an integer, got 'abc')")],
)
def test_a_checkpoint_without_a_key_or_of_a_wrong_type_is_one_line_for_train_and_export(
    trained, tmp_path, capsys, change, message
):
    source, argv = trained
    out = tmp_path / "r"
    shutil.copytree(source, out)
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state = {k: v for k, v in {**state, **change}.items() if v is not None}
    torch.save(state, ckpt)
    damaged = ckpt.read_bytes()
    commands = [[*_train_argv(out), *SMALL]]
    if "model" in change:  # export reads the weights only
        commands.append(["export", str(out), "--out", str(tmp_path / "e")])
    for command in commands:
        err = _error(command, capsys)
        assert f"{ckpt}: " in err and message in err and "delete it to restart that run" in err
    assert ckpt.read_bytes() == damaged and not (tmp_path / "e").exists()


def test_an_adashare_checkpoint_of_a_wrong_type_is_one_line(tmp_path, capsys):
    from nas_mtl.search.adashare import CHECKPOINT

    argv = ["search", "adashare", "--data", "multidigits", *SMALL, "--space", "resnet_small", "--out", str(tmp_path)]
    argv += ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "32", "--weight-steps", "1"]
    argv += ["--policy-steps", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    ckpt = tmp_path / CHECKPOINT
    torch.save({**torch.load(ckpt, weights_only=True), "elapsed": "long"}, ckpt)
    damaged = ckpt.read_bytes()
    err = _error(argv, capsys)
    assert f"{ckpt}: damaged AdaShare checkpoint (elapsed: expected a number, got 'long')" in err
    assert "delete it to restart the search" in err and ckpt.read_bytes() == damaged


def test_garbage_curves_are_one_line_for_report_and_kept(study, capsys):
    _, run = study
    curves = run / "arms" / "hard" / "equal" / "seed0" / "curves.csv"
    for garbage in (b"\x00\xffnot a file", b"epoch,task\n1,left\n", curves.read_bytes().replace(b"0.", b"x.", 1)):
        curves.write_bytes(garbage)
        before = _files(run)
        err = _error(["report", str(run)], capsys)
        assert f"{curves}: damaged training curves (" in err and "delete it to report that run without" in err
        assert _files(run) == before  # the curves kept, the earlier report not replaced


def test_a_queue_record_that_is_a_list_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "queue.json").write_text('["sqlite:///none.db", "faults"]')
    err = _error(["status", str(run)], capsys)
    assert f"{run / 'queue.json'}: damaged distributed study record (a list, not a table)" in err
    (run / "queue.json").write_text('{"storage": ["sqlite:///none.db"], "study": "faults"}')
    assert "(storage: expected a string or null, got ['sqlite:///none.db'])" in _error(["status", str(run)], capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["queue.json", "run"]


def test_a_search_record_with_text_seconds_is_refused_naming_the_key(study, capsys, monkeypatch):
    path, run = study
    done = next(run.glob("search/affinity/*/search.json"))
    done.write_text(json.dumps({**json.loads(done.read_text()), "seconds": "abc"}))
    before = _files(run)
    _no_training(monkeypatch)
    err = _error(["study", str(path), "--out", str(run)], capsys)
    assert f"{done}: damaged search result (seconds: expected a number, got 'abc')" in err
    assert "to rerun that search" in err and _files(run) == before


def _branch_argv(out) -> list[str]:
    argv = ["search", "branch", "--data", "multidigits", "--space", "resnet_small", "--out", str(out), *SMALL]
    argv += ["--inherit", "--subset", "1"]
    return [*argv, "--n-trials", "1", "--warmstart-epochs", "1", "--proxy-epochs", "1", "--batch-size", "32"]


def _storage_then_error(argv, capsys) -> tuple[str, str]:
    """The line saying which storage the command opened, and its one-line error (exit code 2)."""
    assert main(argv) == 2
    shown, err = capsys.readouterr().err.strip().splitlines()
    assert shown.startswith("nas-mtl: storage: ") and err.startswith("nas-mtl: error: ") and "Traceback" not in err
    return shown, err


@pytest.mark.parametrize("content", [b"", b"\x00\xffnot a database"])
def test_an_empty_or_foreign_study_db_is_refused_not_restarted(tmp_path, capsys, content):
    db = tmp_path / "run" / "study.db"
    db.parent.mkdir()
    db.write_bytes(content)
    old = time.time() - 3600  # not a database another process is creating this moment
    os.utime(db, (old, old))
    shown, err = _storage_then_error([*_branch_argv(tmp_path / "run"), "--device", "cpu"], capsys)
    assert shown == f"nas-mtl: storage: sqlite:///{db}"
    what = "empty" if not content else "not an SQLite database"
    assert f"{db}: the storage is {what}; restore it from a backup or delete it to start again" in err
    assert db.read_bytes() == content and sorted(p.name for p in db.parent.iterdir()) == [".lock", "study.db"]


def test_a_storage_url_cut_by_a_typed_character_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, char in (
        (f"sqlite:///{tmp_path}/q?d#b/jobs.db", "'#'"),
        (f"sqlite:///{tmp_path}/q?d/b/jobs.db", "'?'"),
        (f"sqlite:///{tmp_path}/q?d", "'?'"),
    ):
        _, err = _storage_then_error(["worker", "--storage", url, "--study", "x", "--out", str(tmp_path / "w")], capsys)
        assert err.startswith(f"nas-mtl: error: storage: {url!r}: a {char} in a URL's path")
        assert "percent-encode it" in err and "or choose another folder" in err
    assert list(tmp_path.iterdir()) == []  # no q, no database anywhere
    url = f"sqlite:///{tmp_path}/x.db?timeout=30"  # a real query still works
    shown, err = _storage_then_error(["worker", "--storage", url, "--study", "x", "--out", str(tmp_path / "w")], capsys)
    assert shown == f"nas-mtl: storage: {url}" and "study 'x' not found in" in err


def test_the_storage_a_command_opens_is_said_once_with_the_password_hidden(capsys, monkeypatch):
    monkeypatch.setenv("NAS_DB", "postgresql://me:secret@127.0.0.1:9/db")
    monkeypatch.setattr("nas_mtl.search.branching.run_worker", lambda *a, **k: 0)
    assert main(["worker", "--storage", "env:NAS_DB", "--study", "x", "--out", "w"]) == 0
    assert capsys.readouterr().err == "nas-mtl: storage: postgresql://me:***@127.0.0.1:9/db\n"
