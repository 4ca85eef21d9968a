import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_study import STUDY
from tiny_study import write_study as _write

import nas_mtl.study as study_mod
from nas_mtl.balancing import create_balancer, list_balancers
from nas_mtl.config import to_options
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.report import write_report
from nas_mtl.runs import write_json_atomic
from nas_mtl.study import load_rows, load_study, run_study, with_device


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    spec = load_study(_write(d))
    rows = run_study(spec, d / "run", progress=False)
    return d, spec, rows


def test_study_rows_and_report_tables_hold_the_same_numbers(finished):
    d, _, rows = finished
    assert sorted((r.arm, r.task, r.seed) for r in rows) == [
        ("hard", None, 0),
        ("hard", None, 1),
        ("single-task", "left", 0),
        ("single-task", "left", 1),
        ("single-task", "right", 0),
        ("single-task", "right", 1),
    ]
    files = write_report(d / "run")
    runs = pd.read_csv(files["runs.csv"])
    summary = pd.read_csv(files["summary.csv"]).set_index(["arm", "balancer"])
    directions = {"left": {"accuracy": True}, "right": {"accuracy": True}}
    singles = [r for r in rows if r.arm == "single-task"]
    single = {  # the reference: single-task metrics averaged over seeds
        t: {"accuracy": sum(r.test[t]["accuracy"] for r in singles if r.task == t) / 2} for t in ("left", "right")
    }
    for seed in (0, 1):
        hard = next(r for r in rows if r.arm == "hard" and r.seed == seed)
        line = runs[(runs.arm == "hard") & (runs.seed == seed)].iloc[0]
        assert line["left.accuracy"] == pytest.approx(hard.test["left"]["accuracy"])
        assert line["delta_m"] == pytest.approx(delta_m(hard.test, single, directions))
        assert line["params"] == hard.params
    hard_dm = runs[runs.arm == "hard"]["delta_m"]
    assert summary.loc[("hard", "equal"), "delta_m"] == pytest.approx(hard_dm.mean())
    assert summary.loc[("hard", "equal"), "delta_m std"] == pytest.approx(hard_dm.std(ddof=1))
    single_params = sum(r.params for r in rows if r.arm == "single-task" and r.seed == 0)
    assert summary.loc[("single-task", "equal"), "params"] == single_params
    md = files["report.md"].read_text()
    assert f"{summary.loc[('hard', 'equal'), 'delta_m']:.2f} ±" in md
    assert (d / "run" / "report" / "figures" / "topology_hard.png").is_file()
    assert "<table" in files["report.html"].read_text()


def test_killed_study_resumes_without_retraining_finished_arms(finished, monkeypatch):
    d, spec, rows = finished
    victim = d / "run" / "arms" / "hard" / "equal" / "seed1"
    (victim / "row.json").unlink()  # as if killed before this arm finished
    calls = []
    from nas_mtl.study import units

    real = units.train_graph

    def counting(graph, *args, **kwargs):
        calls.append(graph.meta.get("name"))
        return real(graph, *args, **kwargs)

    monkeypatch.setattr("nas_mtl.study.units.train_graph", counting)
    again = run_study(spec, d / "run", progress=False)
    assert calls == ["hard"]
    assert (
        json.loads((victim / "row.json").read_text())["test"]
        == next(r for r in rows if r.arm == "hard" and r.seed == 1).test
    )  # resumed from its finished checkpoint: same numbers
    assert len(again) == len(rows)


def test_a_study_prints_the_time_left_as_runs_finish_counting_only_this_sessions_runs(tmp_path, capsys):
    spec = load_study(_write(tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]")))  # 3 runs, a few seconds
    run_study(spec, tmp_path / "run", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study: ")]
    number = r"\d+\.\d (s|min)"
    assert re.fullmatch(
        rf"study: 1 of 3 runs done in {number}; about {number} left "
        r"\(an estimate from the finished runs' times, one at a time\)",
        lines[0],
    ), lines
    assert len(lines) == 3 and lines[2].startswith("study: 3 of 3 runs done in ")
    (tmp_path / "run" / "arms" / "hard" / "equal" / "seed0" / "row.json").unlink()  # as if killed before its end
    from nas_mtl.cli import main

    assert main(["status", str(tmp_path / "run")]) == 0  # a local study: what the folder holds
    out = capsys.readouterr().out
    assert "(local): 0 searches done, 2 runs done, 1 started and not finished" in out
    assert "arms/hard/equal/seed0  started" in out
    run_study(spec, tmp_path / "run", progress=True)  # the 2 runs finished before are not runs of this session
    again = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study: ")]
    assert len(again) == 1 and re.fullmatch(rf"study: 1 of 1 runs done in {number}", again[0]), again


def test_a_distributed_worker_prints_the_time_left_of_the_queues_jobs(tmp_path, capsys):
    spec = load_study(_write(tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]")))
    study_mod.run_distributed_study(spec, tmp_path / "run", f"sqlite:///{tmp_path / 'jobs.db'}", progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("study: ")]
    assert re.fullmatch(
        r"study: 1 of 3 jobs done; about \d+\.\d (s|min) left \(an estimate from the finished runs' times, "
        r"one at a time\)",
        lines[0],
    ), lines
    assert lines[-1] == "study: 3 of 3 jobs done"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.replace("nas_mtl.study/1", "nas_mtl.study/0"), "format"),
        (lambda s: s + "\nbogus = 1\n", "bogus: unknown key"),
        (lambda s: s.replace('balancers = ["equal"]', 'balancers = ["magic"]'), "balancers: unknown balancer 'magic'"),
        (
            lambda s: s.replace("epochs = 1", "epochs = 1\nepoch = 2"),
            r"train\.epoch: unknown option; allowed: batch_size, channels_last, device, epochs",
        ),
        (lambda s: s.replace('baselines = ["single", "hard"]', 'baselines = ["soft"]'), "arms.baselines"),
        (lambda s: s.replace("seeds = [0, 1]", "seeds = []"), "seeds"),
        (lambda s: s.replace('balancers = ["equal"]', 'balancers = ["mgda:norm=l2"]'), "balancers: .*norm"),
        (lambda s: s + "\n[search.nope]\n", "search.nope: unknown search method"),
        (lambda s: s.replace('name = "multidigits"\n', ""), "data.name: required"),
        (lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1, 0]"), r"seeds: seed\(s\) \[0\] given twice"),
        (
            lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = [2, 2]"),
            r"search_seeds: seed\(s\) \[2\]",
        ),
        (
            lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = 3"),
            "search_seeds: expected a non-empty",
        ),
        (
            lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = [-1]"),
            "search_seeds: expected a non-empty list of integers >= 0",
        ),
        (
            lambda s: (
                s.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = [0, 1]")
                + '[search.branch]\nstorage = "sqlite:///x.db"\n'
            ),
            "search.branch.storage: one per search: not with several search_seeds",
        ),
        (
            lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = [0]") + "[search.branch]\nseed = 3\n",
            "search.branch.seed: set by search_seeds as well",
        ),
        (lambda s: s.replace('["equal"]', '["equal", "equal"]'), "balancers: 'equal' is the same balancer as 'equal'"),
        (lambda s: s.replace('["equal"]', '["mgda", "mgda:"]'), "balancers: 'mgda:' is the same balancer as 'mgda'"),
        (lambda s: s.replace('["equal"]', '["mgda", " mgda : normalization=none"]'), "balancers: .*same balancer"),
        (lambda s: s.replace('["equal"]', '["pcgrad:seed=1", "pcgrad:seed=1,"]'), "balancers: .*same balancer"),
        (
            lambda s: s.replace("n_train", "n_trian"),
            "data.n_trian: unknown key for dataset 'multidigits'; accepted: name, n_train, n_val, n_test, size, seed",
        ),
        (lambda s: s.replace('"multidigits"', '"multidigit"'), "data.name: unknown dataset 'multidigit'; known: "),
        (
            lambda s: s.replace('"multidigits"\nn_train = 64\nn_val = 32\nn_test = 32\nsize = 16', '"nyuv2"'),
            r"data: .*'root'",
        ),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path, edit, match):
    path = _write(tmp_path, edit(STUDY))
    with pytest.raises(ValueError, match=match) as err:
        load_study(path)
    assert str(path) in str(err.value)


def test_balancers_with_distinct_options_are_accepted(tmp_path):
    balancers = ["mgda", "mgda:normalization=l2", "mgda-ub", "pcgrad", "pcgrad:seed=1", "pcgrad:seed=2"]
    spec = load_study(_write(tmp_path, STUDY.replace('["equal"]', json.dumps(balancers))))
    assert spec.balancers == tuple(balancers)


def test_data_keys_are_checked_without_building_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr("nas_mtl.study.spec.create_dataset", lambda *a, **k: pytest.fail("dataset built at parse time"))
    spec = load_study(_write(tmp_path, STUDY.replace('"multidigits"', '"shapes"\ntasks = ["size"]')))
    assert spec.data.to_dict() == {
        "name": "shapes",
        "tasks": ["size"],
        "n_train": 64,
        "n_val": 32,
        "n_test": 32,
        "size": 16,
    }


@pytest.mark.parametrize("path", sorted(Path("studies").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_study_files_are_valid(path):
    spec = load_study(path)
    assert "single" in spec.baselines
    assert len(spec.seeds) >= 3  # a verdict needs 3 seeds (and search seeds)
    if spec.name == "soft_sharing":  # the sharing baselines, every one
        assert not spec.search and set(spec.baselines) == {"single", "hard", "independent", "soft-l2", "cross-stitch"}
        return
    if spec.name in ("balancers", "balancing_paper"):  # hard sharing retrained with many balancers
        assert not spec.search and "hard" in spec.baselines
        if spec.name == "balancers":  # every one (static weights: see [grid])
            assert set(spec.balancers) == set(list_balancers()) - {"static"}
        else:  # Sener & Koltun's comparison
            assert set(spec.balancers) == {"equal", "gradnorm", "mgda", "mgda-ub", "pcgrad"} and spec.grid is not None
        return
    if spec.name == "selection":  # Standley's network selection beside TAG's partition
        assert set(spec.search) == {"selection", "affinity"} and spec.search["selection"].budget == 2
        assert {"hard", "independent"} <= set(spec.baselines) and len(spec.search_seeds or ()) >= 3
        return
    assert set(spec.search) == {"adashare", "branch", "affinity"}
    assert len(spec.search_seeds or ()) >= 3
    # the quickstart compares structures within 5 minutes (equal weights); the fuller studies add the balancers
    assert set(spec.balancers) >= ({"equal"} if spec.name == "quickstart" else {"equal", "mgda", "pcgrad"})


def test_each_arm_is_retrained_only_with_the_balancers_that_change_its_training():
    """Shared-only methods (MGDA, PCGrad, ...) change nothing without shared parameters; on a one-task net DWA,
    RLW and FAMO weigh its loss by 1 too; uncertainty weighting's learned weight scales even a lone task."""
    from nas_mtl.study import Arm
    from nas_mtl.study import balancers_for as _balancers_for

    tasks, layers = ["a", "b"], ["l0", "l1"]
    every = ("equal", "mgda", "pcgrad", "nash-mtl", "uncertainty", "dwa", "rlw", "famo")
    assert _balancers_for([Arm("hard", SharingGraph.hard_sharing(tasks, layers))], every) == every
    independent = Arm("independent", SharingGraph.independent(tasks, layers))
    assert _balancers_for([independent], every) == ("equal", "uncertainty", "dwa", "rlw", "famo")
    single = Arm("single-task", SharingGraph.hard_sharing(["a"], layers), single_task="a")
    assert _balancers_for([single], every) == ("equal", "uncertainty")


def test_device_override_reaches_training_and_every_search():
    spec = with_device(load_study("studies/quickstart.toml"), "cpu")
    assert spec.train.device == "cpu"
    assert all(to_options(config)["device"] == "cpu" for config in spec.search.values())
    with pytest.raises(ValueError, match="device"):
        with_device(spec, "tpu")


def test_study_with_every_search_method_and_balancer(tmp_path, capfd):
    study = (
        STUDY.replace("seeds = [0, 1]", "seeds = [0]")
        .replace('baselines = ["single", "hard"]', 'baselines = ["single", "hard", "independent"]')
        .replace('balancers = ["equal"]', 'balancers = ["equal", "pcgrad", "mgda:normalization=loss"]')
    )
    study += """
[search.adashare]
epochs = 2
warmup_epochs = 1
batch_size = 32
num_samples = 2
[search.branch]
n_trials = 3
inherit = true
subset = 1.0
warmstart_epochs = 1
proxy_epochs = 1
batch_size = 32
reference = "hard"
[search.affinity]
measure = "gradcos"
epochs = 1
batch_size = 32
"""
    spec = load_study(_write(tmp_path, study))
    rows = run_study(spec, tmp_path / "run", progress=False)
    assert "it/s" not in capfd.readouterr().err  # no progress bars, searches included
    arms = {(r.arm, r.balancer) for r in rows if r.arm != "single-task"}
    balancers = ("equal", "pcgrad", "mgda:normalization=loss")
    graphs = {r.arm: r.graph.to_dict()["assignment"] for r in rows}
    shares = {
        a: any(len([c for c in row if c >= 0]) > len({c for c in row if c >= 0}) for row in g)
        for a, g in graphs.items()
    }
    assert shares["hard"] and not shares["independent"]
    # a graph sharing nothing trains identically with every balancer: trained once, with equal weights
    assert arms == {(a, b) for a in graphs if a != "single-task" for b in (balancers if shares[a] else ["equal"])}
    assert (tmp_path / "run" / "arms" / "hard" / "mgda_normalization_loss" / "seed0" / "row.json").is_file()
    for method in ("adashare", "branch", "affinity"):
        found = json.loads((tmp_path / "run" / "search" / method / "seed0" / "search.json").read_text())
        row = next(r for r in rows if r.arm == method)
        assert (
            row.graph.to_dict()["assignment"] == found["graph"]["assignment"]
        )  # the found graph is what was retrained
        assert row.search_seconds == pytest.approx(found["seconds"]) and row.search_seconds > 0
    files = write_report(tmp_path / "run")
    summary = pd.read_csv(files["summary.csv"]).set_index(["arm", "balancer"])
    assert summary.loc[("branch", "equal"), "search_seconds"] == pytest.approx(
        next(r for r in rows if r.arm == "branch").search_seconds
    )
    figures = {p.name for p in (tmp_path / "run" / "report" / "figures").iterdir()}
    assert "search_branch_history.png" in figures  # Optuna history
    assert any(f.startswith("search_adashare_policy") for f in figures)  # AdaShare policy heatmap
    assert any(f.startswith("search_affinity_") for f in figures)  # affinity heatmaps


def test_each_search_seed_is_searched_once_and_paired_with_a_training_seed(tmp_path, monkeypatch):
    """Training seed number i retrains the graph of search seed number i (cycling): 3 seeds, 2 search seeds."""
    study = STUDY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]\nsearch_seeds = [5, 7]").replace(
        'baselines = ["single", "hard"]', 'baselines = ["single"]'
    )
    study += '[search.affinity]\nmeasure = "gradcos"\nepochs = 1\nbatch_size = 32\n'
    searched = []
    from nas_mtl.study import units
    from nas_mtl.study.spec import search_config

    real = units.run_search

    def recording(ctx, unit, progress):
        searched.append((unit.method, to_options(search_config(ctx.spec, unit.method, unit.seed, progress))["seed"]))
        return real(ctx, unit, progress)

    monkeypatch.setattr(units, "run_search", recording)
    spec = load_study(_write(tmp_path, study))
    rows = run_study(spec, tmp_path / "run", progress=False)
    assert searched == [("affinity", 5), ("affinity", 7)]
    found = {
        s: json.loads((tmp_path / "run" / "search" / "affinity" / f"seed{s}" / "search.json").read_text())
        for s in (5, 7)
    }
    affinity = sorted((r.seed, r.search_seed) for r in rows if r.arm == "affinity")
    assert affinity == [(0, 5), (1, 7), (2, 5)]
    for r in rows:
        if r.arm == "affinity":
            assert r.graph.to_dict()["assignment"] == found[r.search_seed]["graph"]["assignment"]
            assert r.search_seconds == pytest.approx(found[r.search_seed]["seconds"])
        else:
            assert r.search_seed is None
    assert [r.seed for r in rows] == sorted(r.seed for r in rows)  # seed by seed: every arm at seed 0 first
    searched.clear()
    again = run_study(spec, tmp_path / "run", progress=False)
    assert again == rows and searched == []  # resumed: both searches and every arm run read back

    row_file = tmp_path / "run" / "arms" / "affinity" / "equal" / "seed0" / "row.json"
    row = json.loads(row_file.read_text())
    last = row["graph"]["assignment"][-1]
    row["graph"]["assignment"][-1] = [0, 1] if last == [0, 0] else [0, 0]  # as if made from another search's graph
    row_file.write_text(json.dumps(row))
    with pytest.raises(ValueError, match=r"row.json: this run trained another graph .*'affinity' \(search seed 5\)"):
        run_study(spec, tmp_path / "run", progress=False)


def test_rows_record_what_their_numbers_depend_on(finished):
    import platform

    import numpy as np
    import torch

    _, _, rows = finished
    for r in rows:
        assert r.env["torch"] == torch.__version__ and r.env["numpy"] == np.__version__
        assert r.env["threads"] == torch.get_num_threads() and r.env["device"] == "cpu"
        assert r.env["python"] == platform.python_version() and r.env["cpu"]
        assert r.seed in (0, 1)


def test_rerunning_a_study_on_the_same_machine_is_bitwise_identical(finished, tmp_path):
    """Same machine, versions and thread count: a fresh run folder gives exactly the same numbers and weights."""
    import torch

    d, spec, rows = finished
    again = run_study(spec, tmp_path / "again", progress=False)
    key = lambda r: (r.arm, r.task or "", r.balancer, r.seed)  # noqa: E731
    assert len(again) == len(rows)
    for a, b in zip(sorted(rows, key=key), sorted(again, key=key)):
        assert a.balancer == "equal"
        assert (a.test, a.val) == (b.test, b.val)  # exact float equality, no tolerance
        folder = Path("arms") / study_mod.slug(f"{a.arm}/{a.task}" if a.task else a.arm) / "equal"
        first = torch.load(d / "run" / folder / f"seed{a.seed}" / "checkpoint.pt", weights_only=True)["model"]
        second = torch.load(tmp_path / "again" / folder / f"seed{a.seed}" / "checkpoint.pt", weights_only=True)
        assert first.keys() == second["model"].keys()
        assert all(torch.equal(first[k], second["model"][k]) for k in first)


def test_parallel_jobs_give_bitwise_the_rows_of_one_thread_runs(tmp_path, monkeypatch):
    """jobs=2 on 2 threads runs each search and arm in a worker process on 1 thread: the numbers of a serial
    1-thread run (searches included: a spawned worker knows the built-in search methods)."""
    import torch

    study = STUDY.replace("seeds = [0, 1]", "seeds = [0, 1]\nsearch_seeds = [0, 1]")
    spec = load_study(_write(tmp_path, study + '[search.affinity]\nmeasure = "gradcos"\nepochs = 1\nbatch_size = 32\n'))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rows = run_study(spec, tmp_path / "serial", progress=False)
        torch.set_num_threads(2)
        parallel = run_study(spec, tmp_path / "parallel", progress=False, jobs=2)
    finally:
        torch.set_num_threads(before)
    key = lambda r: (r.arm, r.task or "", r.balancer, r.seed)  # noqa: E731
    assert [key(r) for r in parallel] == [key(r) for r in rows]  # same order: seed by seed
    for a, b in zip(rows, parallel):
        assert (a.test, a.val, a.graph.to_dict()) == (b.test, b.val, b.graph.to_dict())
        assert b.env["threads"] == 1
    with pytest.raises(ValueError, match="jobs: expected a positive integer"):
        run_study(spec, tmp_path / "bad", jobs=0)
    monkeypatch.setattr("nas_mtl.processes.multiprocessing.get_context", lambda *a: pytest.fail("workers for nothing"))
    assert run_study(spec, tmp_path / "parallel", jobs=2) == parallel  # finished: read back, no worker started


def test_a_failing_parallel_run_stops_the_study_with_its_own_error(tmp_path):
    """A run that fails in a worker (here: non-finite loss) raises its own error type here, and the pool is gone."""
    import multiprocessing

    spec = load_study(_write(tmp_path, STUDY.replace("epochs = 1", "epochs = 1\nlr = 1e30")))
    # it fails in the first epoch: no checkpoint exists, so none is claimed kept
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at epoch 1 step \d+$"):
        run_study(spec, tmp_path / "run", progress=False, jobs=2)
    assert multiprocessing.active_children() == []


def test_baselines_run_as_a_study_and_match_a_direct_training(tmp_path, capsys, monkeypatch):
    """``nas-mtl baselines`` is a study of baselines only: the study's folder layout and runner, read back on a
    rerun; its hard-sharing row is bitwise the metrics of training that graph directly."""
    from nas_mtl.baselines import train_graph
    from nas_mtl.cli import main
    from nas_mtl.data import create_dataset
    from nas_mtl.space import load_search_space
    from nas_mtl.train import TrainConfig

    out = tmp_path / "base"
    data_args = {"n_train": 64, "n_val": 32, "n_test": 32, "size": 16}
    argv = ["baselines", "--data", "multidigits", "--space", "resnet_small", "--out", str(out), "--epochs", "1"]
    argv += ["--batch-size", "32", "--no-progress", "--arms", "single,hard", "--device", "cpu", "--seed", "1"]
    argv += [f"--data-arg={k}={v}" for k, v in data_args.items()]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Δm %" in printed and "retrain (s)" in printed  # the table nas-mtl study prints, units in the header
    table = pd.read_csv(out / "baselines.csv", index_col="arm")
    assert list(table.index) == ["single-task", "hard"] and table.loc["single-task", "delta_m_%"] == 0
    hard = json.loads((out / "arms" / "hard" / "equal" / "seed1" / "row.json").read_text())
    data = create_dataset("multidigits", **data_args)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", seed=1)
    _, direct = train_graph(space.hard_sharing(data.task_names), data, space, config)
    assert hard["test"] == direct.test and table.loc["hard", "left.accuracy"] == direct.test["left"]["accuracy"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished baseline was retrained")

    monkeypatch.setattr("nas_mtl.study.units.train_graph", no_training)
    assert main(argv) == 0
    assert pd.read_csv(out / "baselines.csv", index_col="arm").equals(table)


def test_baselines_with_a_balancer_that_also_runs_unshared_graphs_count_each_arm_once(tmp_path, monkeypatch):
    """A balancer with shared_only = False also trains the single-task nets (beside "equal"): the table keeps
    its rows, one per arm, and the single-task cost is that of one network per task."""
    from nas_mtl.balancing import EqualWeights, create_balancer
    from nas_mtl.balancing.base import BALANCERS
    from nas_mtl.data import create_dataset
    from nas_mtl.space import load_search_space
    from nas_mtl.study import run_baselines
    from nas_mtl.train import TrainConfig

    class Everywhere(EqualWeights):
        name = "equal-everywhere-test"
        shared_only = False
        one_task_is_equal = False

    monkeypatch.setitem(BALANCERS._factories, "equal-everywhere-test", Everywhere)  # removed after the test

    data = create_dataset("multidigits", n_train=64, n_val=32, n_test=32, size=16)
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    config = TrainConfig(epochs=1, batch_size=32, device="cpu")
    table = run_baselines(data, space, config, tmp_path, ("single", "hard"), create_balancer("equal-everywhere-test"))
    assert list(table.index) == ["single-task", "hard"]
    rows = load_rows(tmp_path)
    one_net = next(r.params for r in rows if r.arm == "single-task")
    assert table.loc["single-task", "params"] == 2 * one_net  # two tasks, each counted once


# ---------------------------------------------------------------------- grid search over static weights
GRID_STUDY = STUDY + "[grid]\nstep = 0.25\n"


def test_grid_search_picks_the_vector_with_the_best_validation_delta_m(tmp_path, monkeypatch):
    """A toy whose answer is known: validation accuracy of each digit peaks at the weights (1.5, 0.5), test
    accuracies are the opposite (so a choice by test would differ); the grid (0.5, 1.5), (1, 1), (1.5, 0.5) is
    trained at the grid seed, the best by validation Δm is retrained over every seed, and grid.json records each
    point's Δm and the cost."""
    trained = []

    from nas_mtl.layout import RunRow
    from nas_mtl.study import units

    def fake_run_arm(ctx, arm, unit, progress):
        balancer, seed, out = unit.balancer, unit.seed, ctx.folder(unit)
        trained.append((arm.name, balancer, seed))
        w = create_balancer(balancer).options() if balancer.startswith("static") else {}
        wl, wr = w.get("left", 1.0), w.get("right", 1.0)
        val = 0.9 - 0.1 * ((wl - 1.5) ** 2 + (wr - 0.5) ** 2) if arm.single_task is None else 0.8
        test = 0.9 - 0.1 * ((wl - 0.5) ** 2 + (wr - 1.5) ** 2) if arm.single_task is None else 0.8
        tasks = [arm.single_task] if arm.single_task else ["left", "right"]
        row = {
            "arm": arm.name, "task": arm.single_task, "balancer": balancer, "seed": seed,
            "graph": arm.graph.to_dict(), "test": {t: {"accuracy": test} for t in tasks},
            "val": {t: {"accuracy": val} for t in tasks}, "params": 1, "macs": 1, "train_seconds": 2.0,
            "primary": {t: ["accuracy", True] for t in ("left", "right")},
        }  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(row, out / study_mod.ROW)
        return RunRow.from_dict(row)

    monkeypatch.setattr(units, "run_arm", fake_run_arm)
    spec = load_study(_write(tmp_path, GRID_STUDY))
    assert spec.grid == study_mod.GridSpec(step=0.25, arm="hard", seed=0)
    run_study(spec, tmp_path / "run")
    grid = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert [p["weights"] for p in grid["points"]] == [
        {"left": 0.5, "right": 1.5},
        {"left": 1.0, "right": 1.0},
        {"left": 1.5, "right": 0.5},
    ]
    assert grid["best"] == "static:left=1.5,right=0.5" and grid["runs"] == 3 and grid["train_seconds"] == 6.0
    both = ("left", "right")
    at = [0.9 - 0.1 * 2, 0.9 - 0.1 * 0.5, 0.9]  # the three points' validation accuracy

    def dm(v):
        return delta_m(
            {t: {"accuracy": v} for t in both},
            {t: {"accuracy": 0.8} for t in both},
            {t: {"accuracy": True} for t in both},
        )

    expected = [dm(v) for v in at]
    assert [p["val_delta_m"] for p in grid["points"]] == pytest.approx(expected)
    rows = load_rows(tmp_path / "run")
    hard = sorted((r.balancer, r.seed) for r in rows if r.arm == "hard")
    assert hard == [("equal", 0), ("equal", 1), ("static:left=1.5,right=0.5", 0), ("static:left=1.5,right=0.5", 1)]
    grid_runs = [t for t in trained if t[1].startswith("static") and t[2] == 0]
    assert len(grid_runs) == 4  # three grid points at seed 0, then the winner's own arm run
    trained.clear()
    run_study(spec, tmp_path / "run")  # resumed: nothing retrained, the same choice
    assert trained == [] and json.loads((tmp_path / "run" / "grid.json").read_text()) == grid


def test_grid_search_end_to_end_trains_and_reports_its_choice(tmp_path):
    spec = load_study(_write(tmp_path, GRID_STUDY))
    rows = run_study(spec, tmp_path / "run")
    grid = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert len(grid["points"]) == 3 and grid["train_seconds"] > 0
    best = max(grid["points"], key=lambda p: p["val_delta_m"])["balancer"]
    assert grid["best"] == best
    assert sorted(r.seed for r in rows if r.balancer == best) == [0, 1]
    assert all(
        (tmp_path / "run" / "grid" / study_mod.slug(p["balancer"]) / "seed0" / "row.json").is_file()
        for p in grid["points"]
    )


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ("step = 0.3", r"grid.step: expected 1/n"),
        ("step = 0.5\narm = 'independent'", r"grid.arm: expected 'hard'"),
        ("step = 0.5\nseed = 7", r"grid.seed: expected one of the study's seeds \[0, 1\]"),
        ("steps = 0.5", r"grid.steps: unknown key"),
        ("arm = 'hard'", r"grid.step: required"),
    ],
)
def test_bad_grid_tables_name_the_key(tmp_path, grid, match):
    with pytest.raises(ValueError, match=match):
        load_study(_write(tmp_path, STUDY + "[grid]\n" + grid + "\n"))


def test_static_weights_weigh_each_tasks_loss():
    from nas_mtl.balancing.weighting import StaticWeights, simplex_grid

    assert simplex_grid(["a", "b", "c"], 0.25) == [
        {"a": 0.75, "b": 0.75, "c": 1.5},
        {"a": 0.75, "b": 1.5, "c": 0.75},
        {"a": 1.5, "b": 0.75, "c": 0.75},
    ]
    balancer = StaticWeights(a=2.0)
    assert balancer.weights_for({"a": 1.0, "b": 1.0}, None) == {"a": 2.0, "b": 1.0}
    with pytest.raises(ValueError, match=r"static: no task\(s\) \['z'\]"):
        StaticWeights(z=1.0).prepare(type("Net", (), {"tasks": ("a", "b")})())


# ---------------------------------------------------------------------- soft-sharing baselines
SOFT_STUDY = STUDY.replace(
    'baselines = ["single", "hard"]', 'baselines = ["single", "hard", "soft-l2", "cross-stitch"]'
)
SOFT_STUDY = SOFT_STUDY.replace('balancers = ["equal"]', 'balancers = ["equal", "mgda"]').replace(
    "seeds = [0, 1]", "seeds = [0]"
)
SOFT_STUDY += "[arms.soft-l2]\nstrength = 0.5\n[arms.cross-stitch]\ninit = 0.8\n"


def test_soft_sharing_arms_train_report_and_refuse_changed_options(tmp_path):
    """soft-l2 trains with equal weights only (no parameter is shared), cross-stitch with every balancer (its
    mixing weights are); the rows carry the coupling and the costs count the mixing; the report lists both."""
    spec = load_study(_write(tmp_path, SOFT_STUDY))
    assert spec.couplings["soft-l2"].strength == 0.5 and spec.couplings["cross-stitch"].init == 0.8
    rows = run_study(spec, tmp_path / "run")
    arms = sorted({(r.arm, r.balancer) for r in rows if r.arm != "single-task"})
    assert arms == [
        ("cross-stitch", "equal"),
        ("cross-stitch", "mgda"),
        ("hard", "equal"),
        ("hard", "mgda"),
        ("soft-l2", "equal"),
    ]
    by_arm = {r.arm: r for r in rows if r.balancer == "equal"}
    assert by_arm["soft-l2"].coupling == {"kind": "l2", "strength": 0.5}
    assert by_arm["cross-stitch"].params > by_arm["soft-l2"].params > by_arm["hard"].params
    assert by_arm["cross-stitch"].macs > by_arm["soft-l2"].macs
    summary = pd.read_csv(write_report(tmp_path / "run")["summary.csv"])
    assert {"soft-l2", "cross-stitch"} <= set(summary["arm"])
    changed = _write(tmp_path, SOFT_STUDY.replace("strength = 0.5", "strength = 0.25"))
    with pytest.raises(ValueError, match=r"trained with coupling .*strength.*0\.5"):
        run_study(load_study(changed), tmp_path / "run")


def test_soft_arm_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"arms.soft-l2: .*init: unknown option for coupling 'l2'"):
        load_study(_write(tmp_path, SOFT_STUDY.replace("strength = 0.5", "init = 0.5")))
    no_arm = SOFT_STUDY.replace('"soft-l2", "cross-stitch"]', '"cross-stitch"]')
    with pytest.raises(ValueError, match=r"arms.soft-l2: options for an arm not in arms.baselines"):
        load_study(_write(tmp_path, no_arm))


# ------------------------------------------------------------------ distributed studies (nas-mtl study --storage)
DISTRIBUTED = (
    STUDY.replace("seeds = [0, 1]", "seeds = [0, 1, 2]\nsearch_seeds = [0, 1]")
    .replace("n_train = 64", "n_train = 768")
    .replace("epochs = 1", "epochs = 6")
    + """
[search.branch]
n_trials = 2
sampler = "random"
inherit = true
subset = 1.0
warmstart_epochs = 1
proxy_epochs = 1
batch_size = 32
"""
)
# 2 searches, then 3 seeds x (2 single-task nets, hard sharing, the searched arm): 14 jobs of about 1-3 s each on
# one thread, so a worker started after the first (its imports take ~5-15 s) still finds jobs to take


@pytest.fixture(params=["sqlite", "postgres"])
def study_storage(request, tmp_path, monkeypatch):
    """The storage of a distributed study, passed as env:NAS_DB (no password on command lines)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    monkeypatch.setenv("NAS_DB", url)
    monkeypatch.setenv("NAS_MTL_HEARTBEAT_S", "1")
    monkeypatch.setenv("NAS_MTL_GRACE_S", "4")
    return url


def _distributed(tmp_path, name, threads=("--threads", "1")):
    path = _write(tmp_path, DISTRIBUTED.replace('name = "tiny"', f'name = "{name}"'))
    cmd = [sys.executable, "-m", "nas_mtl.cli", *threads, "study", str(path), "--out", str(tmp_path / "run")]
    return [*cmd, "--storage", "env:NAS_DB", "--no-progress"]


def _start_worker(tmp_path, cmd, first):
    """A `--worker` started once the first process has published the study (its queue.json is written)."""
    deadline = time.monotonic() + 300
    while not (tmp_path / "run" / study_mod.QUEUE_RECORD).is_file():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    return subprocess.Popen([*cmd, "--worker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _jobs(url, name):
    from nas_mtl.study.jobs import JobQueue

    return JobQueue(url, name)


def test_a_grid_study_runs_distributed_and_matches_the_local_run(tmp_path, study_storage):
    """[grid] is a stage of the plan: its points, the choice of the best weights (a job needing the points and the
    single-task nets at the grid seed) and the winner's retraining run from the queue as from the local executor,
    with bitwise the same rows and grid record (the same threads per run)."""
    import torch

    spec = load_study(_write(tmp_path, GRID_STUDY))
    local = run_study(spec, tmp_path / "local")
    threads = torch.get_num_threads()
    rows = study_mod.run_distributed_study(spec, tmp_path / "run", study_storage, threads=threads)
    key = lambda r: (r.arm, r.task or "", r.balancer, r.seed)  # noqa: E731
    assert sorted(map(key, rows)) == sorted(map(key, local))
    for a, b in zip(sorted(rows, key=key), sorted(local, key=key)):
        assert (a.test, a.val, a.graph.to_dict()) == (b.test, b.val, b.graph.to_dict())
    untimed = lambda r: {**r, "train_seconds": 0, "points": [{**p, "train_seconds": 0} for p in r["points"]]}  # noqa: E731
    record = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert untimed(record) == untimed(json.loads((tmp_path / "local" / "grid.json").read_text()))
    assert sum(r.balancer == record["best"] for r in rows) == len(spec.seeds)  # the winner at every seed
    table = {line["job"]: line for line in _jobs(study_storage, spec.name).table()}
    assert table["grid/best"]["state"] == "done" and len(table) == 3 + 1 + 2 * 3 + 2  # points, pick, seeds, winner


@pytest.mark.slow
def test_two_workers_finish_a_study_without_running_any_job_twice(tmp_path, study_storage):
    name = f"two-{Path(tmp_path).name}"
    cmd = _distributed(tmp_path, name)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = _start_worker(tmp_path, cmd, first)
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    table = _jobs(study_storage, name).table()
    assert len(table) == 14 and {line["state"] for line in table} == {"done"}
    assert {line["tries"] for line in table} == {1}  # no job ran twice
    assert len({line["worker"] for line in table}) == 2  # both processes took part
    rows = load_rows(tmp_path / "run")
    keys = [(r.arm, r.task, r.balancer, r.seed) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    runs = pd.read_csv(tmp_path / "run" / "report" / "runs.csv")
    assert len(runs) == len(runs.drop_duplicates(["arm", "balancer", "seed"])) == 9  # single-task nets merged
    searched = {r.search_seed for r in rows if r.arm == "branch"}
    assert searched == {0, 1}  # training seed i retrained search seed i % 2's graph
    password = study_storage.split("@")[0].split(":")[-1] if "@" in study_storage else None
    if password:
        for path in (tmp_path / "run").rglob("*.json"):
            assert password not in path.read_text(), path


@pytest.mark.slow
@pytest.mark.parametrize(
    "study_storage, victim",
    [("sqlite", "worker"), ("postgres", "publisher")],  # each storage and each role once (45 s each)
    indirect=["study_storage"],
)
def test_a_process_killed_mid_job_loses_nothing_and_its_job_resumes_from_its_checkpoint(
    tmp_path, study_storage, victim
):
    """SIGKILL the joined worker (or the process that published the study) while it trains an arm past its first
    epoch: after the grace period (4 s here) the survivor fails that job, takes it again and continues from the
    checkpoint; the study completes."""
    import os
    import signal

    name = f"kill-{Path(tmp_path).name}"
    cmd = _distributed(tmp_path, name)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = _start_worker(tmp_path, cmd, first)
    queue = _jobs(study_storage, name)
    dying, surviving = (second, first) if victim == "worker" else (first, second)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and dying.poll() is None and time.monotonic() < deadline:
        for line in queue.table():
            ours = line["state"] == "running" and line["worker"].endswith(f":{dying.pid}")
            if (
                ours
                and line["job"].startswith("arms/")
                and (tmp_path / "run" / line["job"] / "checkpoint.pt").is_file()
            ):
                os.kill(dying.pid, signal.SIGKILL)
                killed = line["job"]
                break
        time.sleep(0.05)
    assert killed is not None, f"the {victim} never trained an arm past an epoch"
    dying.wait(timeout=60)
    out, err = surviving.communicate(timeout=600)
    assert surviving.returncode == 0, err
    lines = {line["job"]: line for line in queue.table()}
    assert {line["state"] for line in lines.values()} == {"done"}
    assert lines[killed]["tries"] == 2 and lines[killed]["worker"].endswith(f":{surviving.pid}")
    assert lines[killed]["resumed"] >= 1  # continued from the dead worker's checkpoint, not from scratch
    assert sum(line["tries"] for line in lines.values()) == len(lines) + 1  # only the killed job ran twice
    rows = load_rows(tmp_path / "run")
    assert len(rows) == len({(r.arm, r.task, r.balancer, r.seed) for r in rows}) == 12


@pytest.mark.slow
@pytest.mark.parametrize("study_storage", ["sqlite"], indirect=True)
def test_workers_n_split_the_cores_from_the_first_job_and_the_launcher_reports_once(tmp_path, study_storage):
    """`--workers 2`: the process started and the one it starts run every job with cores // 2 torch threads (before,
    the first job took all cores: the second worker was not yet seen), no job twice; one report, by the launcher."""
    name = f"launch-{Path(tmp_path).name}"
    launcher = subprocess.Popen(
        [*_distributed(tmp_path, name, threads=()), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err
    queue = _jobs(study_storage, name)
    table = queue.table()
    assert len(table) == 14 and {line["state"] for line in table} == {"done"}
    assert {line["tries"] for line in table} == {1}  # no job ran twice
    workers = {line["worker"].rsplit(":", 1)[1] for line in table}
    assert len(workers) == 2 and str(launcher.pid) in workers  # the launcher and the worker it started
    threads = [t.user_attrs["threads"] for t in queue.study.get_trials() if t.state.name == "COMPLETE"]
    assert threads == [max(1, (os.cpu_count() or 1) // 2)] * 14
    assert out.count("report: ") == 1  # the started worker wrote and printed no report
    assert (tmp_path / "run" / "report" / "report.md").is_file()
    assert len(load_rows(tmp_path / "run")) == 12


@pytest.mark.slow
@pytest.mark.parametrize("study_storage", ["sqlite"], indirect=True)
def test_a_started_worker_killed_mid_job_is_taken_over_and_holds_no_storage_url(tmp_path, study_storage):
    """SIGKILL the worker `--workers 2` started while it trains an arm: the launcher takes its job over after the
    grace period, finishes the study and exits 0 with a one-line warning; the storage URL reached the worker
    through the environment, not its command line."""
    import signal

    name = f"launch-kill-{Path(tmp_path).name}"
    launcher = subprocess.Popen(
        [*_distributed(tmp_path, name), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    queue, killed, deadline = None, None, time.monotonic() + 300
    while killed is None and launcher.poll() is None and time.monotonic() < deadline:
        if queue is None and (tmp_path / "run" / study_mod.QUEUE_RECORD).is_file():
            queue = _jobs(study_storage, name)
        for line in queue.table() if queue is not None else ():
            pid = int(line["worker"].rsplit(":", 1)[1]) if line["worker"] else launcher.pid
            if (
                line["state"] == "running"
                and pid != launcher.pid
                and line["job"].startswith("arms/")
                and (tmp_path / "run" / line["job"] / "checkpoint.pt").is_file()
            ):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                assert "env:NAS_MTL_STORAGE_URL" in cmdline and study_storage not in " ".join(cmdline)
                os.kill(pid, signal.SIGKILL)
                killed = line["job"]
                break
        time.sleep(0.05)
    assert killed is not None, "the started worker never trained an arm past an epoch"
    out, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err
    assert "worker process" in err and "was killed (signal 9)" in err
    lines = {line["job"]: line for line in queue.table()}
    assert {line["state"] for line in lines.values()} == {"done"}
    assert lines[killed]["tries"] == 2 and lines[killed]["worker"].endswith(f":{launcher.pid}")
    assert lines[killed]["resumed"] >= 1  # continued from the killed worker's checkpoint
    assert out.count("report: ") == 1


@pytest.mark.slow
@pytest.mark.parametrize("study_storage", ["sqlite"], indirect=True)
def test_sigterm_to_a_launcher_stops_its_workers_and_returns_their_jobs_to_the_queue(tmp_path, study_storage):
    import signal

    name = f"launch-term-{Path(tmp_path).name}"
    launcher = subprocess.Popen(
        [*_distributed(tmp_path, name), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    queue, running, deadline = None, set(), time.monotonic() + 300
    while len(running) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        if queue is None and (tmp_path / "run" / study_mod.QUEUE_RECORD).is_file():
            queue = _jobs(study_storage, name)
        # a job is RUNNING a moment before its worker is recorded: count the jobs whose worker is known
        table = queue.table() if queue else []
        running = {line["worker"] for line in table if line["state"] == "running" and line["worker"]}
        time.sleep(0.05)
    assert len(running) == 2, "the two workers never ran jobs at once"
    child = next(int(w.rsplit(":", 1)[1]) for w in running if not w.endswith(f":{launcher.pid}"))
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err
    assert not Path(f"/proc/{child}").exists()  # the worker it started ended with it (and was waited for)
    counts = queue.counts()
    assert counts["running"] == 0 and counts["failed"] == 0  # both running jobs went back to the queue at once
    assert "report: " not in out


def test_bad_workers_values_are_one_line_errors(tmp_path, capsys):
    from nas_mtl.cli import main

    path = _write(tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]"))
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    for argv, message in (
        (["--storage", url, "--workers", "0"], "--workers: expected a positive integer"),
        (["--storage", url, "--workers", "-2"], "--workers: expected a positive integer"),
        (["--workers", "2"], "--workers: needs --storage"),
    ):
        assert main(["study", str(path), "--out", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "jobs.db").exists()  # refused before any work
    with pytest.raises(ValueError, match="local_workers: expected a positive integer, got 0"):
        study_mod.run_distributed_study(load_study(path), tmp_path / "run", url, local_workers=0)


def test_distributed_study_errors_are_one_line_and_status_lists_the_jobs(tmp_path, monkeypatch, capsys):
    from nas_mtl.cli import main

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    path = _write(tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]"))
    run = tmp_path / "run"
    rows = study_mod.run_distributed_study(load_study(path), run, url)
    assert len(rows) == 3  # two single-task nets and hard sharing
    assert main(["status", str(run)]) == 0  # the URL holds no password: recorded in queue.json
    out = capsys.readouterr().out
    assert "study 'tiny' in sqlite:///" in out and "3 done, 0 running, 0 waiting, 0 blocked, 0 failed" in out
    assert main(["status", str(run), "--all"]) == 0
    assert "arms/hard/equal/seed0  done" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "grid").mkdir()
    other = _write(
        tmp_path / "other", STUDY.replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 1", "epochs = 2")
    )
    with pytest.raises(ValueError, match=r"storage sqlite:///.*\(study 'tiny'\): .*train.epochs \(1 -> 2\)"):
        study_mod.run_distributed_study(load_study(other), run, url, worker_only=True)
    assert main(["study", str(path), "--out", str(run), "--worker"]) == 2
    assert "--worker: needs --storage" in capsys.readouterr().err
    assert main(["study", str(path), "--out", str(run), "--storage", url, "--jobs", "2"]) == 2
    assert "--jobs: not with --storage" in capsys.readouterr().err


def test_launched_workers_join_only_what_their_launch_publishes(tmp_path, monkeypatch):
    """A rerun that adds a seed: a worker of the new launch (started beside its launcher, before it publishes)
    must not join the record the previous run left, whose settings differ or whose jobs are done (it would leave
    at once or fail); it joins once the launcher published with its token, and finds the new jobs."""
    from nas_mtl.study.jobs import JobQueue

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    run = tmp_path / "run"
    first = load_study(_write(tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]")))
    study_mod.run_distributed_study(first, run, url, launch="old")
    (tmp_path / "more").mkdir()
    spec = load_study(_write(tmp_path / "more", STUDY))
    from nas_mtl.study import distributed
    from nas_mtl.study.record import queue_settings

    data, space = spec.build()
    settings = queue_settings(spec, space)
    with pytest.raises(ValueError, match="was not published by this launch"):
        JobQueue.join(url, spec.name, settings, wait_s=0, launch="new")
    seen: dict[str, int] = {}
    original = distributed.work

    def work(*args, **kwargs):  # the launcher has published: what a worker of its launch finds
        seen.update(JobQueue.join(url, spec.name, settings, wait_s=0, launch="new").counts())
        return original(*args, **kwargs)

    monkeypatch.setattr(distributed, "work", work)
    rows = study_mod.run_distributed_study(spec, run, url, launch="new")
    assert seen["waiting"] == 3 and seen["done"] == 3 and len(rows) == 6


def test_a_started_worker_that_exits_with_an_error_is_one_line_and_a_killed_one_a_warning(tmp_path, capsys):
    import signal

    from nas_mtl.cli import UserError, build_parser
    from nas_mtl.cli_study import _LocalWorkers

    args = build_parser().parse_args(["study", "x.toml", "--storage", "sqlite:///x.db", "--workers", "3"])
    workers = _LocalWorkers(args, tmp_path)
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(2)"])
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    workers.procs = [failing, killed]
    killed.send_signal(signal.SIGKILL)
    with pytest.raises(UserError, match=rf"--workers: worker process {failing.pid} exited with code 2") as err:
        workers.join()
    assert "\n" not in str(err.value)
    warning = capsys.readouterr().err
    assert f"worker process {killed.pid} was killed (signal 9)" in warning and len(warning.splitlines()) == 1


def test_device_cuda_n_shows_the_process_that_gpu_only(monkeypatch):
    from nas_mtl.cli import UserError
    from nas_mtl.cli_options import one_device as _one_device

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _one_device("cpu") == "cpu" and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert _one_device("cuda:3") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(UserError, match="cuda:N"):
        _one_device("gpu")


@pytest.mark.slow
def test_a_studys_branch_search_runs_with_workers_and_a_worker_can_join_it(tmp_path):
    """`workers = 2` in a study's [search.branch] once passed validation and failed at run time ("workers > 1
    needs setup= ..."), and `nas-mtl worker` could not join a study's search: both work now."""
    import optuna

    from nas_mtl.storage import open_storage

    search = "[search.branch]\nn_trials = 6\nworkers = 2\nsampler = 'random'\nwarmstart_epochs = 1\n"
    search += "proxy_epochs = 1\nbatch_size = 32\ninherit = true\nsubset = 1.0\n"
    path = _write(
        tmp_path, STUDY.replace("seeds = [0, 1]", "seeds = [0]").replace("n_train = 64", "n_train = 256") + search
    )
    rows = run_study(load_study(path), tmp_path / "run")
    assert {r.arm for r in rows} == {"single-task", "hard", "branch"}
    folder = tmp_path / "run" / "search" / "branch" / "seed0"
    url = f"sqlite:///{folder / 'study.db'}"
    trials = optuna.load_study(study_name="branch", storage=open_storage(url)).get_trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 6
    assert (folder / "workers" / "worker-1.log").is_file()
    joined = subprocess.run(
        [sys.executable, "-m", "nas_mtl.cli", "worker", "--storage", url, "--study", "branch", "--out", str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr  # it rebuilt the study's data and space from the record
    assert "0 trial(s) run" in joined.stdout  # the budget is spent


def test_status_of_a_damaged_queue_record_is_one_line(tmp_path, capsys):
    from nas_mtl.cli import main

    (tmp_path / study_mod.QUEUE_RECORD).write_text("{")
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / study_mod.QUEUE_RECORD) in err and "\n" not in err.strip()
