"""Storages: URLs through the environment or a file, passwords never shown, and the branch search on a real
PostgreSQL server (started by the ``postgres_url`` fixture on 127.0.0.1)."""

import json
import subprocess
import sys

import optuna
import pytest
from test_branching import DATA, SPACE, _finished_correctly

from nas_mtl.storage import open_storage, redact, resolve


def test_redact_hides_only_the_password():
    assert redact("postgresql://nas:s3cr%40t@db.example:5432/studies") == "postgresql://nas:***@db.example:5432/studies"
    assert redact("postgresql+psycopg2://nas@db/studies") == "postgresql+psycopg2://nas@db/studies"
    assert redact("sqlite:////tmp/x/study.db") == "sqlite:////tmp/x/study.db"
    for spec in ("env:NAS_DB", "file:~/.nas_db", "journal:/tmp/s.journal"):
        assert redact(spec) == spec


def test_the_url_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    url = "postgresql://nas:pw@127.0.0.1:5432/x"
    monkeypatch.setenv("NAS_DB", url)
    assert resolve("env:NAS_DB") == url
    (tmp_path / "db").write_text(url + "\n# a comment line\n")
    assert resolve(f"file:{tmp_path / 'db'}") == url
    assert resolve(url) == url
    with pytest.raises(ValueError, match=r"'env:MISSING': environment variable 'MISSING' is not set"):
        resolve("env:MISSING")
    with pytest.raises(ValueError, match=r"cannot read .*nope"):
        resolve(f"file:{tmp_path / 'nope'}")


def test_an_unreachable_server_is_one_line_naming_the_url_without_its_password():
    with pytest.raises(ValueError) as err:
        open_storage("postgresql://nas:hunter2@127.0.0.1:9/studies")
    message = str(err.value)
    assert "hunter2" not in message and "postgresql://nas:***@127.0.0.1:9/studies" in message
    assert "\n" not in message


def test_branch_search_with_workers_on_postgresql_keeps_the_password_out_of_files_and_command_lines(
    postgres_url, tmp_path, monkeypatch
):
    """`nas-mtl search branch --workers 2` on the server: the budget is claimed exactly once and a worker that
    joins later finds nothing left; the URL reaches the spawned worker through the environment, never its
    command line; search.json and the logs show it redacted."""
    from nas_mtl.cli import main

    password = postgres_url.split(":")[2].split("@")[0]
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    monkeypatch.setenv("NAS_DB", postgres_url)
    launched = []
    real_popen = subprocess.Popen

    def spy(cmd, *args, **kwargs):
        launched.append(list(cmd))
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    argv = ["search", "branch", "--data", "shapes", "--space", str(space), "--out", str(tmp_path / "run")]
    argv += ["--workers", "2", "--sampler", "random", "--warmstart-epochs", "1", "--proxy-epochs", "2", "--inherit"]
    argv += ["--subset", "1"]
    argv += ["--batch-size", "32", "--reference", "hard", "--device", "cpu", "--n-trials", "8"]
    argv += ["--storage", "env:NAS_DB", "--study", "pg-branch", *[f"--data-arg={k}={v}" for k, v in DATA.items()]]
    assert main(argv) == 0
    assert launched and all(password not in " ".join(cmd) for cmd in launched)
    study = optuna.load_study(study_name="pg-branch", storage=open_storage(postgres_url))
    _finished_correctly(study, 8)  # the budget claimed exactly once, by this process and (if it was in time) the worker
    log = (tmp_path / "run" / "workers" / "worker-1.log").read_text()
    assert "study 'pg-branch' in env:NAS_MTL_STORAGE_URL" in log  # it connected through the environment
    joined = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "worker", "--storage", "env:NAS_DB", "--study", "pg-branch",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    assert "0 trial(s) run" in joined.stdout
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log", ".txt", ".jsonl"):
            assert password not in path.read_text(errors="replace"), path
    info = json.loads((tmp_path / "run" / "search.json").read_text())
    assert info["info"]["storage"] == "postgresql://nas:***@" + postgres_url.split("@")[1]
