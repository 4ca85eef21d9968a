import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import nas_mtl.study as study_mod
from nas_mtl.metrics import delta_m
from nas_mtl.report import write_report
from nas_mtl.study import load_rows, load_study, run_study, with_device

SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4, 8]
depths = [1, 1]
"""

STUDY = """
format = "nas_mtl.study/1"
name = "tiny"
seeds = [0, 1]
balancers = ["equal"]
[data]
name = "multidigits"
n_train = 64
n_val = 32
n_test = 32
size = 16
[space]
name = "space.toml"
[train]
epochs = 1
batch_size = 32
[arms]
baselines = ["single", "hard"]
"""


def _write(tmp_path, study=STUDY):
    (tmp_path / "space.toml").write_text(SPACE)
    (tmp_path / "study.toml").write_text(study)
    return tmp_path / "study.toml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    spec = load_study(_write(d))
    rows = run_study(spec, d / "run", progress=False)
    return d, spec, rows


def test_study_rows_and_report_tables_hold_the_same_numbers(finished):
    d, _, rows = finished
    assert sorted((r["arm"], r["task"], r["seed"]) for r in rows) == [
        ("hard", None, 0), ("hard", None, 1),
        ("single-task", "left", 0), ("single-task", "left", 1),
        ("single-task", "right", 0), ("single-task", "right", 1),
    ]  # fmt: skip
    files = write_report(d / "run")
    runs = pd.read_csv(files["runs.csv"])
    summary = pd.read_csv(files["summary.csv"]).set_index(["arm", "balancer"])
    directions = {"left": {"accuracy": True}, "right": {"accuracy": True}}
    for seed in (0, 1):
        hard = next(r for r in rows if r["arm"] == "hard" and r["seed"] == seed)
        single = {r["task"]: r["test"][r["task"]] for r in rows if r["arm"] == "single-task" and r["seed"] == seed}
        line = runs[(runs.arm == "hard") & (runs.seed == seed)].iloc[0]
        assert line["left.accuracy"] == pytest.approx(hard["test"]["left"]["accuracy"])
        assert line["delta_m"] == pytest.approx(delta_m(hard["test"], single, directions))
        assert line["params"] == hard["params"]
    hard_dm = runs[runs.arm == "hard"]["delta_m"]
    assert summary.loc[("hard", "equal"), "delta_m"] == pytest.approx(hard_dm.mean())
    assert summary.loc[("hard", "equal"), "delta_m std"] == pytest.approx(hard_dm.std(ddof=1))
    single_params = sum(r["params"] for r in rows if r["arm"] == "single-task" and r["seed"] == 0)
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
    real = study_mod.train_graph

    def counting(graph, *args, **kwargs):
        calls.append(graph.meta.get("name"))
        return real(graph, *args, **kwargs)

    monkeypatch.setattr(study_mod, "train_graph", counting)
    again = run_study(spec, d / "run", progress=False)
    assert calls == ["hard"]
    assert (
        json.loads((victim / "row.json").read_text())["test"]
        == next(r for r in rows if r["arm"] == "hard" and r["seed"] == 1)["test"]
    )  # resumed from its finished checkpoint: same numbers
    assert len(again) == len(rows)


def test_study_made_with_nested_arm_folders_resumes_without_retraining(finished, monkeypatch, tmp_path):
    """Studies from before slug folder names kept single-task nets in arms/single-task/<task>/<balancer>/."""
    d, spec, rows = finished
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    for task in ("left", "right"):
        (run / "arms" / "single-task").mkdir(exist_ok=True)
        (run / "arms" / f"single-task_{task}").rename(run / "arms" / "single-task" / task)
    monkeypatch.setattr(study_mod, "train_graph", lambda *a, **k: pytest.fail("a finished arm was retrained"))
    again = run_study(spec, run, progress=False)
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, rows))
    assert not (run / "arms" / "single-task").exists() and (run / "arms" / "single-task_left" / "equal").is_dir()
    assert len(load_rows(run)) == len(rows)  # no row counted twice


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.replace("nas_mtl.study/1", "nas_mtl.study/0"), "format"),
        (lambda s: s + "\nbogus = 1\n", "bogus: unknown key"),
        (lambda s: s.replace('balancers = ["equal"]', 'balancers = ["magic"]'), "balancers: unknown balancer 'magic'"),
        (lambda s: s.replace("epochs = 1", "epochs = 1\nepoch = 2"), r"train:.*unknown key\(s\) \['epoch'\]"),
        (lambda s: s.replace('baselines = ["single", "hard"]', 'baselines = ["soft"]'), "arms.baselines"),
        (lambda s: s.replace("seeds = [0, 1]", "seeds = []"), "seeds"),
        (lambda s: s.replace('balancers = ["equal"]', 'balancers = ["mgda:norm=l2"]'), "balancers: .*norm"),
        (lambda s: s + "\n[search.nope]\n", "search.nope: unknown search method"),
        (lambda s: s.replace('name = "multidigits"\n', ""), "data.name: required"),
        (lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1, 0]"), r"seeds: seed\(s\) \[0\] given twice"),
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
    monkeypatch.setattr(study_mod, "create_dataset", lambda *a, **k: pytest.fail("dataset built at parse time"))
    spec = load_study(_write(tmp_path, STUDY.replace('"multidigits"', '"shapes"\ntasks = ["size"]')))
    assert spec.data == {"name": "shapes", "tasks": ["size"], "n_train": 64, "n_val": 32, "n_test": 32, "size": 16}


@pytest.mark.parametrize("path", sorted(Path("studies").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_study_files_are_valid(path):
    spec = load_study(path)
    assert "single" in spec.baselines
    assert set(spec.search) == {"adashare", "branch", "affinity"}
    assert set(spec.balancers) >= {"equal", "mgda", "pcgrad"}


def test_device_override_reaches_training_and_every_search():
    spec = with_device(load_study("studies/quickstart.toml"), "cpu")
    assert spec.train.device == "cpu"
    assert all(study_mod._method_args(m, o, m).device == "cpu" for m, o in spec.search.items())
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
    arms = {(r["arm"], r["balancer"]) for r in rows if r["arm"] != "single-task"}
    balancers = ("equal", "pcgrad", "mgda:normalization=loss")
    graphs = {r["arm"]: r["graph"]["assignment"] for r in rows}
    shares = {a: any(len([c for c in row if c >= 0]) > len({c for c in row if c >= 0}) for row in g)
              for a, g in graphs.items()}  # fmt: skip
    assert shares["hard"] and not shares["independent"]
    # a graph sharing nothing trains identically with every balancer: trained once, with equal weights
    assert arms == {(a, b) for a in graphs if a != "single-task" for b in (balancers if shares[a] else ["equal"])}
    assert (tmp_path / "run" / "arms" / "hard" / "mgda_normalization_loss" / "seed0" / "row.json").is_file()
    for method in ("adashare", "branch", "affinity"):
        found = json.loads((tmp_path / "run" / "search" / method / "search.json").read_text())
        row = next(r for r in rows if r["arm"] == method)
        assert row["graph"]["assignment"] == found["graph"]["assignment"]  # the found graph is what was retrained
        assert row["search_seconds"] == pytest.approx(found["seconds"]) and row["search_seconds"] > 0
    files = write_report(tmp_path / "run")
    summary = pd.read_csv(files["summary.csv"]).set_index(["arm", "balancer"])
    assert summary.loc[("branch", "equal"), "search_seconds"] == pytest.approx(
        next(r for r in rows if r["arm"] == "branch")["search_seconds"]
    )
    figures = {p.name for p in (tmp_path / "run" / "report" / "figures").iterdir()}
    assert "search_branch_history.png" in figures  # Optuna history
    assert any(f.startswith("search_adashare_policy") for f in figures)  # AdaShare policy heatmap
    assert any(f.startswith("search_affinity_") for f in figures)  # affinity heatmaps
