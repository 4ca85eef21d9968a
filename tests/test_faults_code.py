"""Data never names code (D1) and an export reads only its own files, as hashed (D12).

An export manifest, a run's ``model.json`` and an Optuna storage record are data: they name registered components
(or installed entry points) only. A ``module:function`` / ``file.py:function`` reference in them is refused before
anything is imported, unless the user typed it (``--trust``, ``trusted=``). Each test plants code that would leave a
marker file if it ran, and checks the marker is absent.
"""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
from test_branching import DATA, SPACE, StubScorer
from test_faults import STUDY, _error

from nas_mtl.cli import main
from nas_mtl.data import create_dataset
from nas_mtl.export import load_exported
from nas_mtl.search.branching import STUDY_ATTR, BranchSearchConfig, Setup, create_branch_study, run_worker
from nas_mtl.search.proxy import ProxyConfig
from nas_mtl.space import load_search_space
from nas_mtl.storage import sqlite_url
from nas_mtl.study import load_study, run_distributed_study
from nas_mtl.study.jobs import Job, JobQueue
from nas_mtl.train import TrainConfig

EVIL = """
from pathlib import Path

Path({marker!r}).write_text("code ran")


def make(**kwargs):
    Path({marker!r}).write_text("code ran")
    raise SystemExit(3)
"""


@pytest.fixture
def evil(tmp_path):
    """``evil.py:make``: a file whose import (or call) writes ``PWNED`` and exits; returns (reference, marker)."""
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return f"{tmp_path / 'evil.py'}:make", marker


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory):
    """A folder with a finished `nas-mtl train` run (``run``) and its export (``export``)."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(trained_run[0], root / "run")
    assert main(["export", str(root / "run"), "--out", str(root / "export"), "--formats", "safetensors"]) == 0
    return root


def _copy(trained, tmp_path, name):
    shutil.copytree(trained / name, tmp_path / name)
    return tmp_path / name


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["os:system", "evil"])
def test_a_run_manifest_naming_code_is_refused_by_export(trained, tmp_path, capsys, monkeypatch, evil, name):
    reference, marker = evil
    name = reference if name == "evil" else name
    run = _copy(trained, tmp_path, "run")
    _edit(run / "model.json", lambda m: m.update(backbone={"name": name, "config": {"command": f"touch {marker}"}}))
    monkeypatch.chdir(tmp_path)
    err = _error(["export", str(run), "--out", str(tmp_path / "out")], capsys)
    assert f"{run / 'model.json'}: backbone.name: backbone {name!r} is a reference to code" in err
    assert "--trust" in err and not marker.exists() and not (tmp_path / "out").exists()


def test_an_export_manifest_naming_code_is_refused_by_the_loader(trained, tmp_path, evil):
    reference, marker = evil
    export = _copy(trained, tmp_path, "export")
    _edit(export / "manifest.json", lambda m: m["backbone"].update(name=reference))
    with pytest.raises(ValueError, match="is a reference to code"):
        load_exported(export)
    assert not marker.exists()


def test_a_trusted_reference_runs_and_its_exit_is_a_one_line_error(trained, tmp_path, capsys, evil):
    """What the user typed (--trust) may run; a SystemExit from it is the user's code failing, not ours."""
    reference, marker = evil
    run = _copy(trained, tmp_path, "run")
    _edit(run / "model.json", lambda m: m["backbone"].update(name=reference))
    err = _error(["export", str(run), "--out", str(tmp_path / "out"), "--trust", reference], capsys)
    assert err.endswith(f"backbone {reference!r} failed: SystemExit: 3") and marker.exists()


@pytest.mark.parametrize(
    "files, message",
    [
        ({"weights": "../run/weights.safetensors"}, "files.weights: '../run/weights.safetensors' is not inside"),
        ({"weights": "/etc/passwd"}, "files.weights: '/etc/passwd' is not inside"),
        ({"weights": 5}, "files.weights: missing or not a file name"),
    ],
)
def test_an_export_reads_only_files_inside_it(trained, tmp_path, files, message):
    export = _copy(trained, tmp_path, "export")
    _edit(export / "manifest.json", lambda m: m["files"].update(files))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_exported(export)


def test_an_export_file_that_does_not_match_its_hash_is_refused(trained, tmp_path):
    export = _copy(trained, tmp_path, "export")
    manifest = json.loads((export / "manifest.json").read_text())
    weights = export / "weights.safetensors"
    assert set(manifest["sha256"]) == {"weights.safetensors", "graph.json"}
    assert load_exported(export) is not None  # as written, it loads
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"sha256\.weights\.safetensors: .* does not match its hash"):
        load_exported(export)
    _edit(export / "manifest.json", lambda m: m.pop("sha256"))
    with pytest.raises(ValueError, match=r"sha256\.weights\.safetensors: missing"):
        load_exported(export)


# ---------------------------------------------------------------------- storage records
@pytest.fixture
def branch_study(tmp_path):
    """A branch-search study in SQLite with a stub scorer (nothing trained), and its record."""
    path = tmp_path / "tiny.toml"
    path.write_text(SPACE)
    data = create_dataset("shapes", **DATA)
    space = load_search_space(path, input_shape=data.input_shape)
    tiny = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False)
    config = BranchSearchConfig(proxy=ProxyConfig(warmstart=tiny, finetune=tiny, inherit=True, subset=1.0), n_trials=2)
    study = create_branch_study(
        data, space, config, tmp_path / "run", setup=Setup("shapes", DATA, str(path)), scorer=StubScorer()
    )
    return sqlite_url(tmp_path / "run" / "study.db"), study


def _tamper(study: optuna.Study, change) -> None:
    record = dict(study.user_attrs[STUDY_ATTR])
    change(record)
    study.set_user_attr(STUDY_ATTR, record)


@pytest.mark.parametrize("where", ["dataset", "balancer", "space"])
def test_a_storage_record_naming_code_is_refused_by_a_joining_worker(branch_study, tmp_path, evil, where):
    url, study = branch_study
    reference, marker = evil
    if where == "dataset":
        _tamper(study, lambda r: r.update(setup={**r["setup"], "dataset": reference}))
    elif where == "balancer":
        _tamper(study, lambda r: r["config"]["proxy"].update(balancer=reference))
    else:  # a search-space file (anywhere on the worker's disk) whose backbone is code
        (tmp_path / "evil.toml").write_text(SPACE.replace('"resnet_small"', json.dumps(reference)))
        _tamper(study, lambda r: r.update(setup={**r["setup"], "space": str(tmp_path / "evil.toml")}))
    key = {"dataset": "setup.dataset", "balancer": "config.proxy.balancer", "space": "backbone.name"}[where]
    with pytest.raises(ValueError, match=rf"{key}: \w+ '.*evil.py:make' is a reference to code"):
        run_worker(url, "branch", tmp_path / "run")
    assert not marker.exists()


def test_a_search_passes_its_own_references_to_the_workers_it_starts(tmp_path):
    """What the user typed for the search (a dataset file, a backbone file in the space) is what its workers
    trust: nothing else. Checked by building the setup as a worker does, with and without the list."""
    (tmp_path / "mine.py").write_text(
        "from nas_mtl.data import create_dataset\n\ndef make(**kw):\n    return create_dataset('shapes', **kw)\n"
        "from nas_mtl.backbones import create_backbone\n\n"
        "def net(**kw):\n    return create_backbone('resnet_small', **kw)\n"
    )
    (tmp_path / "space.toml").write_text(SPACE.replace('"resnet_small"', '"mine.py:net"'))
    setup = Setup(f"{tmp_path / 'mine.py'}:make", DATA, str(tmp_path / "space.toml"))
    config = BranchSearchConfig(proxy=ProxyConfig(balancer="mgda"))
    trusted = setup.references(config)
    assert trusted == (f"{tmp_path / 'mine.py'}:make", f"{tmp_path / 'mine.py'}:net")
    data, space = setup.build(trusted)
    assert data.task_names == ("quadrant", "orientation", "hue") and space.branchable == ("s0.b0", "s0.b1", "s0.b2")
    with pytest.raises(ValueError, match="setup.dataset: dataset .* is a reference to code"):
        setup.build(trusted[1:])
    with pytest.raises(ValueError, match="backbone.name: backbone .* is a reference to code"):
        setup.build(trusted[:1])


def test_a_job_record_naming_other_code_is_refused_by_a_study_worker(tmp_path, evil):
    """A distributed study's worker runs a job only as its own study file plans it: a job whose balancer was
    changed in the storage to a code reference is failed and the worker stops, the code never imported."""
    reference, marker = evil
    (tmp_path / "study.toml").write_text(STUDY.split("[search.affinity]")[0])
    spec = load_study(tmp_path / "study.toml")
    url = sqlite_url(tmp_path / "jobs.db")
    args = {"kind": "arm", "arm": "hard", "task": None, "balancer": reference, "seed": 0}
    JobQueue(url, spec.name, create=True).publish([Job("arms/hard/equal/seed0", args)])
    with pytest.raises(ValueError, match=r"job 'arms/hard/equal/seed0' .* is not one of .*study\.toml as this worker"):
        run_distributed_study(spec, tmp_path / "run", url, threads=1)
    assert not marker.exists() and not (tmp_path / "run" / "arms").exists()
    failed = JobQueue(url, spec.name).table()[0]
    assert failed["state"] == "failed" and "is not one of" in failed["error"]


def test_a_relative_file_reference_is_trusted_as_typed(tmp_path, monkeypatch):
    """`search branch --data mine.py:make --workers 2`: the setup records the file absolutely, the workers are
    passed that name, and a relative name typed with --trust matches it (review finding on 86aa4db)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(
        "from nas_mtl.data import create_dataset\n\ndef make(**kw):\n    return create_dataset('shapes', **kw)\n"
    )
    (tmp_path / "tiny.toml").write_text(SPACE)
    data = create_dataset("mine.py:make", **DATA)
    setup = Setup.of(data, load_search_space(tmp_path / "tiny.toml", input_shape=data.input_shape))
    absolute = f"{tmp_path / 'mine.py'}:make"
    assert setup.dataset == absolute and setup.references(BranchSearchConfig()) == (absolute,)
    from nas_mtl.cli import _trusted
    from nas_mtl.data.base import DATASETS

    assert DATASETS.check_stored("mine.py:make", "record", _trusted(["mine.py:make"])) == "mine.py:make"
    assert DATASETS.check_stored(absolute, "record", _trusted(["mine.py:make"])) == absolute


def test_status_never_creates_the_storage_its_record_names(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    elsewhere = tmp_path / "elsewhere"
    for storage in (f"sqlite:///{elsewhere / 'made.db'}", f"journal:{elsewhere / 'x' / 'q.journal'}"):
        (tmp_path / "run" / "queue.json").write_text(json.dumps({"storage": storage, "study": "s"}))
        err = _error(["status", str(tmp_path / "run")], capsys)
        assert "no such file" in err and "nothing was created" in err
        assert not elsewhere.exists()


def test_an_at_sign_after_the_path_does_not_hide_a_cut(tmp_path):
    from nas_mtl.storage import check_url

    with pytest.raises(ValueError, match="a '\\?' in a URL's path"):
        check_url(f"sqlite:///{tmp_path}/q?x@y/jobs.db")
    check_url("postgresql://me:p%40ss@127.0.0.1:5432/db?sslmode=require")  # a password and a real query pass
