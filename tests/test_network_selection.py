"""Network selection as a search: singles and pairs trained with the trainer, a selection under a budget, retrained
as a set of networks and served as one graph; in a study, with its budget curve in the report."""

import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from tiny_study import STUDY, write_study

from nas_mtl import TrainConfig, create_dataset, load_search_space
from nas_mtl.baselines import assemble_selection, network_folder, selection_networks, train_graph, train_selection
from nas_mtl.graph import SharingGraph
from nas_mtl.search.network_selection import (
    AFFINITY_FILE,
    SelectionConfig,
    measured_groups,
    selection_search,
)
from nas_mtl.selection import NetworkTable, best_total, select

TASKS = "size,hue,chroma"
TRAIN = TrainConfig(epochs=1, batch_size=16, lr=1e-2, progress=False, device="cpu")
SPACE = """format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4, 8]
depths = [1, 1]
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.toml"
    path.write_text(SPACE)
    data = create_dataset("shapes", n_train=64, n_val=32, n_test=32, size=16, tasks=TASKS)
    return data, load_search_space(path, input_shape=data.input_shape)


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory):
    data, space = tiny
    run = tmp_path_factory.mktemp("selection")
    config = SelectionConfig(train=TRAIN, budget=2, random_draws=300)
    return selection_search(data, space, config, run), run, config


def test_network_folders_never_collide(tmp_path):
    assert network_folder(tmp_path, ["a", "b"]).name == "a+b"
    assert network_folder(tmp_path, ["a+b"]).name != network_folder(tmp_path, ["a", "b"]).name
    long = [f"task{i:02d}" for i in range(20)]
    assert network_folder(tmp_path, long).name.startswith("group-")
    assert network_folder(tmp_path, long).parent == tmp_path / "networks"


def test_the_groups_measured_are_singles_pairs_and_all_tasks():
    assert measured_groups(["a", "b", "c", "d"], "pairs") == [
        ("a",),
        ("b",),
        ("c",),
        ("d",),
        *combinations("abcd", 2),
        ("a", "b", "c", "d"),
    ]
    assert len(measured_groups(list("abcd"), "all")) == 15
    assert measured_groups(["a", "b"], "pairs") == [("a",), ("b",), ("a", "b")]


def test_selection_search_measures_selects_and_serves_one_graph(tiny, searched):
    data, space = tiny
    result, run, config = searched
    info = result.info
    tasks = list(data.task_names)
    val = [n for n in info["tables"]["val"]]
    assert [tuple(n["tasks"]) for n in val] == measured_groups(tasks, "pairs")  # 3 singles, 3 pairs, all 3
    for entry in val:  # a network's score: Δm's relative change of the primary metric vs the single-task net
        if len(entry["tasks"]) == 1:
            assert entry["scores"] == {entry["tasks"][0]: 0.0}
    # the selection is the branch and bound's on HOA's table from the measured validation table
    networks = result.graph.meta["networks"]
    assert sorted(t for n in networks for t in n["serves"]) == sorted(tasks)
    assert selection_networks(result.graph) == [(tuple(n["tasks"]), tuple(n["serves"])) for n in networks]
    served = [tuple(n["serves"]) for n in networks]
    assert result.graph == SharingGraph.from_groups(tasks, space.layers, served, 0, space.skippable)
    assert math.fsum(1.0 for _ in info["networks"]) <= config.budget
    # the all-task network recorded TAG's affinity while it trained
    affinity = json.loads((network_folder(run, tasks) / AFFINITY_FILE).read_text())
    assert affinity["tasks"] == tasks and len(affinity["lookahead"]) == 3


def test_the_budget_curve_is_each_selection_scored_on_the_measured_test_table(tiny, searched):
    """optimal at every budget is the best set of measured networks by enumeration (scored on test with each task
    served by the best selected network there, as Standley's curves are)."""
    data, _ = tiny
    result, _, _ = searched
    curve = result.info["curve"]
    tasks = tuple(data.task_names)

    def table(name):
        nets = [(tuple(n["tasks"]), n["scores"]) for n in result.info["tables"][name]]
        from nas_mtl.selection import Network

        return NetworkTable(tasks, tuple(Network(t, 1.0, s) for t, s in nets), dict.fromkeys(tasks, True))

    val, test = table("val"), table("test")
    assert curve["budgets"] == [1.0, 2.0, 3.0]
    for b, got in zip(curve["budgets"], curve["optimal"]):
        best = None
        for k in range(1, int(b) + 1):
            for chosen in combinations(val.networks, k):
                if all(any(t in n.tasks for n in chosen) for t in tasks):
                    total = math.fsum(max(n.scores[t] for n in chosen if t in n.tasks) for t in tasks)
                    if best is None or total > best[0] + 1e-12:
                        best = (total, chosen)
        on_test = {n.tasks: n for n in test.networks}
        assert got == pytest.approx(best_total(test, [on_test[n.tasks] for n in best[1]]) / 3, abs=1e-9)
        assert select(val, b).total == pytest.approx(best[0], abs=1e-9)
    assert curve["independent"] == [0.0, 0.0, 0.0]
    everything = next(n for n in test.networks if len(n.tasks) == 3)
    assert curve["all-in-one"] == pytest.approx([math.fsum(everything.scores.values()) / 3] * 3)
    assert curve["optimal"][0] == curve["all-in-one"][0]  # budget 1: only the all-task network covers every task


def test_a_finished_search_is_read_back_and_a_lost_affinity_is_measured_again(tiny, searched):
    data, space = tiny
    result, run, config = searched
    again = selection_search(data, space, config, run)  # every network's run folder is finished: read back
    assert again.graph == result.graph and again.info["tables"] == result.info["tables"]
    folder = network_folder(run, data.task_names)
    (folder / AFFINITY_FILE).unlink()  # killed between training and writing the affinity
    third = selection_search(data, space, config, run)
    assert (folder / AFFINITY_FILE).is_file() and np.allclose(
        third.info["affinity"], result.info["affinity"], rtol=1e-5, atol=1e-7
    )


def test_the_assembled_network_gives_each_served_task_its_own_networks_outputs(tiny, tmp_path):
    data, space = tiny
    tasks = list(data.task_names)
    networks = [
        {"tasks": ["size", "hue"], "serves": ["size"]},
        {"tasks": ["hue", "chroma"], "serves": ["hue", "chroma"]},
    ]
    graph = SharingGraph.from_groups(tasks, space.layers, [("size",), ("hue", "chroma")], 0).with_meta(
        networks=networks
    )
    members = []
    for entry in networks:
        member = SharingGraph.hard_sharing(entry["tasks"], space.layers)
        net, _ = train_graph(member, data, space, TRAIN)
        members.append((net.eval(), entry["serves"]))
    assembled = assemble_selection(graph, members, space, data.tasks).eval()
    x = torch.randn(4, *data.input_shape)
    with torch.no_grad():
        out = assembled(x)
        for net, serves in members:
            mine = net(x)
            for t in serves:
                assert torch.equal(out[t], mine[t])
    # trained and evaluated as a study arm: the networks' folders, then the served network, exportable
    net, result = train_selection(graph, data, space, TRAIN, "equal", tmp_path / "arm")
    assert sorted(p.name for p in (tmp_path / "arm" / "networks").iterdir()) == ["hue+chroma", "size+hue"]
    assert set(result.test) == set(tasks) and result.train_seconds > 0
    from nas_mtl.export import export_run

    report = export_run(tmp_path / "arm", tmp_path / "export", formats=["safetensors"])
    assert report["max_abs_diff"]["safetensors"] == 0.0 and report["tasks"] == tasks


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        ([{"tasks": ["size"], "serves": ["size"]}], "each task must be served by one network"),
        ([{"tasks": ["size", "../x"], "serves": ["size"]}], "expected tasks among"),
        ("import os", "expected a non-empty list"),
        ([{"tasks": ["size"], "serves": ["hue"]}], "expected tasks among"),
    ],
)
def test_a_selection_read_back_is_data_checked_before_training(tiny, networks, message):
    data, space = tiny
    tasks = list(data.task_names)
    graph = SharingGraph.from_groups(tasks, space.layers, [tuple(tasks)], 0).with_meta(networks=networks)
    with pytest.raises(ValueError, match=message):
        selection_networks(graph)


def test_more_tasks_than_an_exact_selection_takes_are_refused_before_training():
    from nas_mtl.search.network_selection import check_selection_search

    data = create_dataset(
        "shapes", n_train=64, n_val=32, n_test=32, size=16, tasks="quadrant,size,mask,distance,orientation,angle,hue"
    )
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    with pytest.raises(ValueError, match="selection: 7 tasks; .* exact up to 6 tasks"):
        check_selection_search(data, space, SelectionConfig(train=TRAIN))
    small = create_dataset("shapes", **{"n_train": 64, "n_val": 32, "n_test": 32, "size": 16, "tasks": TASKS})
    with pytest.raises(ValueError, match="every = 99 exceeds the 4 steps"):
        check_selection_search(small, space, SelectionConfig(train=TRAIN, every=99))


def test_bad_selection_options_are_one_line_errors():
    with pytest.raises(ValueError, match="budget must be a number >= 1"):
        SelectionConfig(budget=0.5)
    with pytest.raises(ValueError, match="set measure = 'all'"):
        SelectionConfig(predictor="exact")
    with pytest.raises(ValueError, match="random_draws must be an integer"):
        SelectionConfig(random_draws=0)


SELECTION_STUDY = (
    STUDY.replace('name = "tiny"', 'name = "select"')
    .replace("seeds = [0, 1]\n", "seeds = [0, 1]\nsearch_seeds = [0, 1]\n", 1)
    .replace('name = "multidigits"', 'name = "shapes"\ntasks = "size,hue,chroma"')
    + "[search.selection]\nepochs = 1\nbatch_size = 32\nbudget = 2\nrandom_draws = 200\n"
)
"""The tiny study on three shapes tasks, with the selection search at a budget of two networks."""


def test_a_study_with_the_selection_search_retrains_the_selection_and_reports_its_budget_curve(tmp_path, capsys):
    from nas_mtl.report import write_report
    from nas_mtl.study import load_study, run_study

    path = write_study(tmp_path, SELECTION_STUDY)
    rows = run_study(load_study(path), tmp_path / "run")
    chosen = [r for r in rows if r.arm == "selection"]
    assert len(chosen) == 2 and all(set(r.test) == {"size", "hue", "chroma"} for r in chosen)
    for r in chosen:
        found = json.loads(
            (tmp_path / "run" / "search" / "selection" / f"seed{r.search_seed}" / "search.json").read_text()
        )
        assert r.graph == SharingGraph.from_dict(found["graph"])
    files = write_report(tmp_path / "run")
    text = files["report.md"].read_text()
    assert "## Network selection: budget curve" in text and "selection_selection.png" in text
    assert (files["report.md"].parent / "figures" / "selection_selection.png").is_file()
    assert "all-in-one" in text and "independent" in text
    from nas_mtl.cli import main

    assert main(["status", str(tmp_path / "run")]) == 0  # a selection's finished networks are not "started"
    assert "0 started and not finished" in capsys.readouterr().out
