"""Run folders that never lie: changed settings, a second process, odd paths and damaged files each give a
one-line error naming the file (exit code 2) before any training, and lose no finished work."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nas_mtl.cli import main
from nas_mtl.runs import LOCK, run_lock

STUDY_TABLES = {
    "": {"format": "nas_mtl.study/1", "name": "faults", "seeds": [0], "balancers": ["equal"]},
    "data": {"name": "multidigits", "n_train": 64, "n_val": 32, "n_test": 32, "size": 16},
    "space": {"name": "resnet_small"},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    "arms": {"baselines": ["single", "hard"]},
    "search.affinity": {"measure": "gradcos", "epochs": 1, "batch_size": 32, "device": "cpu", "plots": False},
}
STUDY = "\n".join(
    line
    for table, values in STUDY_TABLES.items()
    for line in ([f"[{table}]"] if table else []) + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
)
"""The study file (JSON values are TOML values here): edited as text by the tests below."""


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas-mtl: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the run folder should have been refused first")

    monkeypatch.setattr("nas_mtl.study.units.train_graph", refuse)
    monkeypatch.setattr("nas_mtl.search.affinity.train_graph", refuse)


def test_a_study_resumed_with_other_settings_is_refused_naming_each_key(study, capsys, monkeypatch):
    path, run = study
    _no_training(monkeypatch)
    path.write_text(
        STUDY.replace("n_train = 64", "n_train = 32").replace(
            "epochs = 1\nbatch_size = 32\ndevice", "epochs = 2\nbatch_size = 32\ndevice", 1
        )
    )
    err = _error(["study", str(path), "--out", str(run)], capsys)
    assert f"{run / 'study.json'}: this study was made with other settings: data.n_train (64 -> 32)" in err
    assert "train.epochs (1 -> 2)" in err and "use a new run folder or the same settings" in err
    assert "n_train = 64" in (run / "study.toml").read_text()  # the folder still describes its results
    path.write_text(STUDY.replace('measure = "gradcos"', 'measure = "lookahead"'))
    assert "search.affinity.measure (['gradcos'] -> ['lookahead'])" in _error(
        ["study", str(path), "--out", str(run)], capsys
    )


def test_added_seeds_and_a_device_change_are_a_resume(study, capsys):
    path, run = study
    path.write_text(STUDY.replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["study", str(path), "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert (run / "arms" / "hard" / "equal" / "seed1" / "row.json").is_file()


def _train_argv(out) -> list[str]:
    common = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu"]
    return ["train", "--data", "multidigits", "--space", "resnet_small", "--out", str(out), *common]


def test_training_resumed_on_other_data_is_refused(tmp_path, capsys):
    argv = [*_train_argv(tmp_path), "--data-arg", "n_train=64", "--data-arg", "n_val=32", "--data-arg", "size=16"]
    assert main([*argv, "--data-arg", "n_test=32"]) == 0
    err = _error([*argv, "--data-arg", "n_test=48"], capsys)
    changed = "this checkpoint was made with other settings: data.origin.kwargs.n_test (32 -> 48)"
    assert f"{tmp_path / 'checkpoint.pt'}: {changed}" in err


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(study, capsys):
    path, run = study
    with run_lock(run):
        err = _error(["study", str(path), "--out", str(run)], capsys)
        assert f"{run}: in use by pid " in err and "one process per run folder" in err
    code = textwrap.dedent(f"""
        from nas_mtl.runs import run_lock
        import os
        with run_lock({str(run)!r}):
            os._exit(9)  # killed: the lock dies with the process, its note stays
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert "pid" in (run / LOCK).read_text()
    assert main(["study", str(path), "--out", str(run), "--no-progress"]) == 0
    assert "taking over the lock of pid" in capsys.readouterr().err and (run / LOCK).read_text() == ""


def test_paths_with_url_characters_stay_paths(tmp_path):
    from nas_mtl.search.branching import open_storage, sqlite_url

    for name in ("we?ird", "we?other", "per%41cent"):
        folder = tmp_path / name
        folder.mkdir()
        open_storage(sqlite_url(folder / "study.db"))
        assert (folder / "study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per%41cent", "we?ird", "we?other"]


def corrupt(path, how: str) -> None:
    """Fault injection: ``truncate`` (half the bytes), ``empty``, ``garbage`` (not the format at all)."""
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"\x00\xffnot a file"}[how])


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage"])
@pytest.mark.parametrize(
    ("relative", "what", "action"),
    [
        ("arms/hard/equal/seed0/row.json", "damaged result row", "to retrain that run"),
        ("search/affinity/search.json", "damaged search result", "to rerun that search"),
        ("search/affinity/affinity/gradcos.json", "damaged cached affinity", "delete it to measure again"),
        ("study.json", "damaged study record", "delete it only if"),
    ],
)
def test_a_damaged_file_names_itself_and_the_repair_before_any_training(
    study, capsys, monkeypatch, relative, what, action, how
):
    path, run = study
    target = run / relative
    if not target.is_file():  # search folders carry the search seed
        target = next(run.glob(relative.replace("search/affinity/", "search/affinity/*/")))
    corrupt(target, how)
    _no_training(monkeypatch)
    if relative.endswith("gradcos.json"):  # the cache is read when the search reruns
        (target.parent.parent / "search.json").unlink()
    err = _error(["study", str(path), "--out", str(run)], capsys)
    assert f"{target}: {what}" in err and action in err


def test_a_row_of_the_wrong_shape_is_refused_before_any_training_and_by_report(study, capsys, monkeypatch):
    path, run = study
    row = run / "arms" / "hard" / "equal" / "seed0" / "row.json"
    row.write_text(json.dumps({k: v for k, v in json.loads(row.read_text()).items() if k != "primary"}))
    _no_training(monkeypatch)
    assert f"{row}: damaged result row (no primary)" in _error(["study", str(path), "--out", str(run)], capsys)
    assert f"{row}: damaged result row (no primary)" in _error(["report", str(run)], capsys)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_a_damaged_checkpoint_is_one_line_for_train_and_export(tmp_path, capsys, how):
    argv = _train_argv(tmp_path / "r") + [f"--data-arg={k}=32" for k in ("n_val", "n_test")]
    argv += ["--data-arg", "n_train=64", "--data-arg", "size=16"]
    assert main(argv) == 0
    corrupt(tmp_path / "r" / "checkpoint.pt", how)
    for command in (argv, ["export", str(tmp_path / "r"), "--out", str(tmp_path / "e")]):
        err = _error(command, capsys)
        assert f"{tmp_path / 'r' / 'checkpoint.pt'}: damaged checkpoint" in err and "delete it" in err


@pytest.mark.parametrize("name", ["../../etc/evil", "/abs", "a/b", ""])
def test_a_study_name_is_a_name_not_a_path(tmp_path, capsys, name):
    (tmp_path / "s.toml").write_text(STUDY.replace('name = "faults"', f"name = {json.dumps(name)}"))
    assert "name: expected a name" in _error(["study", str(tmp_path / "s.toml")], capsys)


def test_bad_places_and_sizes_are_one_line_errors(tmp_path, capsys, monkeypatch):
    file = tmp_path / "a-file"
    file.write_text("x")
    argv = ["--data-arg", "n_train=64", "--data-arg", "n_val=32", "--data-arg", "n_test=32", "--data-arg", "size=16"]
    for out in (file, file / "below"):  # --out is a file, or lies under one
        assert str(file) in _error([*_train_argv(out), *argv], capsys)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["worker", "--storage", url, "--study", "nope", "--out", str(tmp_path / "w")]) == 2
    shown, err = capsys.readouterr().err.strip().splitlines()  # the storage the command opened, then the error
    assert shown == f"nas-mtl: storage: {url}" and err.startswith("nas-mtl: error: study 'nope' not found in")

    def huge(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("nas_mtl.cli.create_dataset", huge)
    assert "out of host memory" in _error([*_train_argv(tmp_path / "m"), *argv], capsys)

    def gpu(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("nas_mtl.cli.create_dataset", gpu)  # a RuntimeError, not a MemoryError
    assert "out of GPU memory" in _error([*_train_argv(tmp_path / "g"), *argv], capsys)


def test_a_resumed_search_reports_the_cost_of_all_its_sessions(study, capsys):
    """Affinity: a rerun that reads its measurement from the cache costs what the measurement cost."""
    path, run = study
    done = next(run.glob("search/affinity/*/search.json"))
    first = json.loads(done.read_text())["seconds"]
    measured = json.loads((done.parent / "affinity" / "gradcos.json").read_text())["seconds"]
    done.unlink()
    assert main(["study", str(path), "--out", str(run), "--no-progress"]) == 0
    again = json.loads(done.read_text())
    assert again["seconds"] >= measured > again["info"]["session_seconds"] and first >= measured


def test_a_resumed_tree_search_adds_its_sessions(tmp_path):
    from nas_mtl.data import create_dataset
    from nas_mtl.search.branching import BranchSearchConfig, branch_search
    from nas_mtl.search.proxy import Score
    from nas_mtl.space import load_search_space

    class Slow:
        def score(self, graph, report=None):
            import time

            time.sleep(0.3)
            return Score(0.0, (0.0,), {}, {}, 1, 1, 0.3)

    data = create_dataset("multidigits", n_train=32, n_val=16, n_test=16, size=16)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    config = BranchSearchConfig(n_trials=2, sampler="bruteforce")
    first = branch_search(data, space, config, tmp_path, scorer=Slow())
    second = branch_search(data, space, BranchSearchConfig(n_trials=3, sampler="bruteforce"), tmp_path, scorer=Slow())
    assert first.seconds >= 0.6 and second.seconds >= first.seconds + 0.3


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[search.adashare]\ntask_weights = {nope = 2.0}\n", "search.adashare: adashare config: task_weights names"),
        ("[search.branch]\nsubset = 0.1\nbatch_size = 32\n", "search.branch: proxy config: subset 0.1 keeps 6 of 64"),
        (
            "[search.exhaustive]\nlimit = 2\nbatch_size = 32\nsubset = 1.0\n",
            "search.exhaustive: exhaustive search: space 'resnet_small' has 7 trees",
        ),
    ],
)
def test_every_search_is_checked_against_the_data_before_any_training(tmp_path, capsys, monkeypatch, table, message):
    """Options that only fail on this data (an unknown task, too small a subset, too large a space) stop the study
    before the baselines and the earlier searches train, not hours later."""
    (tmp_path / "s.toml").write_text(STUDY + "\n" + table)
    _no_training(monkeypatch)
    assert message in _error(["study", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run")], capsys)
    (tmp_path / "s.toml").write_text(STUDY.replace('"gradcos"', '"gradcos"\nbranch_at = "stem"'))
    assert "search.affinity: branch_at: layer 'stem' is not branchable" in _error(
        ["study", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run2")], capsys
    )


def test_a_study_stopped_by_a_mistake_in_its_file_accepts_the_corrected_file(tmp_path, capsys):
    """Nothing finished yet: the record is replaced, not enforced (a typo must not lock the folder)."""
    bad = STUDY.replace("n_train = 64", "n_train = 16")  # fewer samples than a batch: the baselines fail
    (tmp_path / "s.toml").write_text(bad)
    assert "batch_size" in _error(["study", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run")], capsys)
    (tmp_path / "s.toml").write_text(STUDY)
    assert main(["study", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "run" / "study.json").read_text())["settings"]["data"]["n_train"] == 64


@pytest.mark.parametrize("how", ["truncate", "empty", "garbage"])
def test_a_damaged_score_table_names_itself_and_damaged_entries_are_scored_again(tmp_path, how):
    from nas_mtl.search.exhaustive import ScoreTable
    from nas_mtl.search.proxy import Score

    path = tmp_path / "scores.jsonl"
    table = ScoreTable(path, {"kind": "trees"})
    table.add("0.0", Score(1.0, (1.0,), {}, {}, 1, 1, 0.1))
    table.add("0.1", Score(2.0, (2.0,), {}, {}, 1, 1, 0.1))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"key": "0.0", "score": 3}', lines[2]]) + "\n")  # a bad entry
    assert set(ScoreTable(path, {"kind": "trees"}).scores) == {"0.1"}  # the other is scored again
    if how == "truncate":  # inside the header line
        path.write_text(lines[0][: len(lines[0]) // 2])
    else:
        corrupt(path, how)
    with pytest.raises(ValueError, match=rf"{path}: damaged score table \(no header line\); delete it"):
        ScoreTable(path, {"kind": "trees"})


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so an unwritable (read-only, immutable) folder is simulated by the error the
    operating system gives there."""
    from pathlib import Path

    real = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    argv = ["--data-arg", "n_train=64", "--data-arg", "n_val=32", "--data-arg", "n_test=32", "--data-arg", "size=16"]
    err = _error([*_train_argv(tmp_path / "locked"), *argv], capsys)
    assert "Permission denied" in err and str(tmp_path / "locked") in err


def test_a_damaged_model_manifest_is_one_line_for_export(tmp_path, capsys):
    argv = _train_argv(tmp_path / "r") + [f"--data-arg={k}=32" for k in ("n_val", "n_test")]
    argv += ["--data-arg", "n_train=64", "--data-arg", "size=16"]
    assert main(argv) == 0
    manifest = tmp_path / "r" / "model.json"
    corrupt(manifest, "truncate")
    err = _error(["export", str(tmp_path / "r"), "--out", str(tmp_path / "e")], capsys)
    assert f"{manifest}: damaged model manifest (not JSON" in err and "retrain the run" in err


def test_a_tree_search_in_a_folder_with_url_characters_keeps_its_study_there(tmp_path, capsys):
    out = tmp_path / "we?ird %41"
    argv = ["search", "branch", "--data", "multidigits", "--space", "resnet_small", "--out", str(out)]
    argv += ["--data-arg", "n_train=64", "--data-arg", "n_val=32", "--data-arg", "n_test=32", "--data-arg", "size=16"]
    argv += ["--n-trials", "1", "--warmstart-epochs", "1", "--proxy-epochs", "1", "--batch-size", "32", "--inherit"]
    argv += ["--subset", "1"]
    assert main([*argv, "--reference", "hard", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert (out / "study.db").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_the_epochs_message_says_what_is_allowed():
    from nas_mtl.train import TrainConfig

    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0 \(0: evaluate only\), got -1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        TrainConfig(batch_size=0)


def test_a_resumed_exhaustive_search_reports_the_cost_of_what_it_read_back(tmp_path):
    import dataclasses

    from nas_mtl.data import create_dataset
    from nas_mtl.search.exhaustive import ExhaustiveConfig, exhaustive_search
    from nas_mtl.search.proxy import ProxyConfig
    from nas_mtl.space import load_search_space
    from nas_mtl.train import TrainConfig

    data = create_dataset("multidigits", n_train=64, n_val=32, n_test=32, size=16)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    tiny = TrainConfig(epochs=1, batch_size=32, device="cpu")
    proxy = ProxyConfig(warmstart=tiny, finetune=tiny, reference="hard", inherit=True, subset=1.0)
    config = ExhaustiveConfig(proxy=proxy)
    first = exhaustive_search(data, space, config, tmp_path)
    again = exhaustive_search(data, space, dataclasses.replace(config), tmp_path)  # everything read back
    assert again.seconds == first.seconds > again.info["session_seconds"]
